"""One door from a model file to the backend that runs it: :func:`open_backend` (what ``Matcher`` builds
on). It sits above :mod:`loftr_kd.runtime` (the backends) and :mod:`loftr_kd.export` (whose cache turns a
checkpoint into the ONNX graph onnxruntime runs), so neither of those reaches up to the other."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from loftr_kd.errors import user_stacklevel
from loftr_kd.runtime.backend import ENGINE_SUFFIXES, Backend, MatcherError, check_backend


def check_device(device: str, backend: str) -> None:
    """``cpu``, ``cuda`` or ``cuda:N``; CUDA where the backend has it (onnxruntime without its CUDA provider
    runs on the CPU, as documented, and says so).

    Raises:
        ValueError: not a device name.
        MatcherError: ``cuda`` on the torch backend of a torch that sees no CUDA GPU.
    """
    if not re.fullmatch(r"cpu|cuda(:\d+)?", str(device)):
        raise ValueError(f"device={device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    if not str(device).startswith("cuda"):
        return
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            raise MatcherError(
                f"device={device!r}: this torch ({torch.__version__}) sees no CUDA GPU; use device='cpu' "
                f"or install a CUDA build of torch"
            )
    elif backend == "onnx":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            warnings.warn(
                f"device={device!r}: this onnxruntime has no CUDA provider (onnxruntime-gpu is not "
                f"installed); running on the CPU",
                stacklevel=user_stacklevel(),
            )


def open_backend(
    weights: str | os.PathLike,
    backend: str = "onnx",
    *,
    device: str = "cpu",
    threads: int | None = None,
    threshold: float | None = None,
    input_size: tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Backend:
    """The backend that runs ``weights``.

    Args:
        weights: ``.pt``/``.ckpt`` (student checkpoint), ``.onnx`` (exported student) or a TensorRT engine.
        backend: ``onnx`` (a checkpoint is exported once, with dynamic shapes, by
            :func:`loftr_kd.export.cache.cached_onnx_export`; its split export on first ``encode``),
            ``torch`` or ``trt``, in either spelling.
        device: ``cpu`` or ``cuda`` (torch and onnx).
        threads: intra-op CPU threads (``None``: the runtime's default).
        threshold: match threshold a checkpoint is rebuilt with (exported graphs keep theirs).
        input_size: ``(height, width)`` configured input of a checkpoint, or of an engine without metadata.
        cache_dir: preferred folder of the ONNX export cache.

    Raises:
        ValueError: unknown backend.
        MatcherError: the file does not fit the backend, or the backend cannot load it (TensorRT unavailable).
        CheckpointError: an unreadable or unsafe checkpoint.
    """
    backend = check_backend(backend)
    weights = Path(weights)
    suffix = weights.suffix.lower()
    if backend == "trt":
        return _tensorrt(weights, input_size)
    if suffix == ".onnx":
        if backend != "onnx":
            raise MatcherError(f"{weights} is an ONNX graph: use backend='onnx', not {backend!r}")
        if input_size is not None:
            raise MatcherError("input_size cannot be changed for an exported ONNX graph")
        from loftr_kd.runtime.onnx_backend import OnnxBackend

        return OnnxBackend(weights, threads=threads, device=device)
    if suffix in ENGINE_SUFFIXES:
        raise MatcherError(f"{weights} is a TensorRT engine: use backend='trt'")
    from loftr_kd.runtime.torch_backend import TorchBackend

    checkpoint = TorchBackend.from_checkpoint(
        weights, device=device, threads=threads, input_size=input_size, threshold=threshold
    )
    if backend == "torch":
        return checkpoint
    from loftr_kd.export.cache import cached_onnx_export, cached_split_export
    from loftr_kd.runtime.onnx_backend import OnnxBackend

    path = cached_onnx_export(weights, checkpoint.model, cache_dir)
    return OnnxBackend(
        path,
        threads=threads,
        device=device,
        write_split=lambda: cached_split_export(path, weights, checkpoint.model),
    )


def _tensorrt(weights: Path, input_size: tuple[int, int] | None) -> Backend:
    """A TensorRT engine's backend; a clear error where the file is no engine or TensorRT is unavailable."""
    from loftr_kd.runtime.tensorrt_backend import TensorRTBackend, TensorRTUnavailable

    if weights.suffix.lower() not in ENGINE_SUFFIXES:
        raise MatcherError(
            f"backend 'trt' needs a TensorRT engine (.engine/.trt/.plan built by loftr-kd-export), got {weights}"
        )
    try:
        return TensorRTBackend(weights, input_size=input_size)
    except TensorRTUnavailable as err:
        raise MatcherError(
            f"TensorRT is unavailable here ({err}); install `loftr-kd[trt]` on a machine with a CUDA "
            f"GPU, or use backend='onnx'"
        ) from err
