"""The TensorRT backend: an engine run through the TensorRT 10 Python API, torch CUDA tensors as buffers.

An engine is specific to the GPU model and the TensorRT version it was built with (Coarse_LoFTR_TRT
issue #4: prebuilt engines fail elsewhere), so every engine has a sidecar ``<engine>.json``
(:func:`engine_metadata_path`, written by :func:`loftr_kd.export.tensorrt.build_engine`) recording both,
and :class:`TensorRTRunner` refuses, with a clear message, an engine built by another TensorRT. Where
``tensorrt`` does not import or there is no CUDA GPU, :class:`TensorRTUnavailable` says which.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from loftr_kd.runtime.backend import (
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    SPLIT_PARTS,
    EncodedBatch,
    ModelGeometry,
    ModelOutputs,
    cell_centre_points,
    check_split_config,
    no_split_error,
    split_path,
)


class TensorRTUnavailable(RuntimeError):
    """``tensorrt`` cannot be imported or no CUDA GPU is present; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def require_tensorrt():
    """Import ``tensorrt`` and check for a CUDA GPU; raises ``TensorRTUnavailable`` otherwise."""
    try:
        import tensorrt as trt
    except Exception as e:  # ImportError, or a broken install failing to load libnvinfer
        raise TensorRTUnavailable(f"TensorRT is not available (import tensorrt failed: {e})") from e
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("TensorRT needs a CUDA GPU and torch.cuda.is_available() is False")
    return trt


def tensorrt_available() -> tuple[bool, str]:
    """``(True, version)`` or ``(False, reason)``."""
    try:
        trt = require_tensorrt()
    except TensorRTUnavailable as e:
        return False, e.reason
    return True, trt.__version__


def engine_metadata_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


class TensorRTRunner:
    """Run an engine with torch CUDA tensors as I/O buffers (no pycuda).

    Call it like the other backends: ``runner(image0, image1)`` with (B,1,H,W) float32 arrays or
    tensors (moved to the GPU) returns a dict of CUDA tensors keyed by output name (``match_ids`` as
    int64, the PyTorch contract); :meth:`run` takes inputs by name (the halves of a split export).
    """

    def __init__(self, engine_path: str | Path, device: int | str = 0) -> None:
        trt = require_tensorrt()
        import torch

        self.trt = trt
        self.engine_path = Path(engine_path)
        meta_path = engine_metadata_path(self.engine_path)
        self.metadata: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        built_with = self.metadata.get("tensorrt_version")
        if built_with and built_with != trt.__version__:
            raise RuntimeError(
                f"{self.engine_path} was built with TensorRT {built_with} on "
                f"{self.metadata.get('gpu_name')}; this is TensorRT {trt.__version__}: rebuild it here"
            )
        self.device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(
                f"TensorRT could not deserialize {self.engine_path}: engines only load on the GPU and "
                f"TensorRT version that built them (built on {self.metadata.get('gpu_name', '?')})"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream(device=self.device)

    def _torch_dtype(self, name: str):
        import torch

        trt = self.trt
        mapping = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.int32: torch.int32,
            trt.int8: torch.int8,
            trt.bool: torch.bool,
        }
        if hasattr(trt, "int64"):
            mapping[trt.int64] = torch.int64
        return mapping[self.engine.get_tensor_dtype(name)]

    def __call__(self, image0, image1) -> dict[str, Any]:
        return self.run(dict(zip(self.input_names, (image0, image1))))

    @property
    def max_batch(self) -> int | None:
        """The largest batch of the engine's optimisation profile (``None``: a static engine's own)."""
        profiles = self.metadata.get("profiles") or []
        batches = [int(shapes[2][0]) for profile in profiles for shapes in profile.values()]
        return min(batches) if batches else None

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run on inputs by name (arrays or tensors, moved to the GPU); returns the outputs by name as CUDA
        tensors (``match_ids`` as int64)."""
        import torch

        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"{self.engine_path} needs inputs {sorted(missing)}")
        feeds = {}
        for name in self.input_names:
            t = torch.as_tensor(inputs[name]).to(self.device, self._torch_dtype(name)).contiguous()
            feeds[name] = t
            if not self.context.set_input_shape(name, tuple(t.shape)):  # False: outside the profile
                raise ValueError(
                    f"{self.engine_path}: input {name} of shape {tuple(t.shape)} is outside the engine's "
                    f"optimisation profile {self.metadata.get('profiles') or '(static)'}; rebuild it with one "
                    "that holds this size"
                )
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=self._torch_dtype(name), device=self.device)
            outputs[name] = out
            self.context.set_tensor_address(name, out.data_ptr())
        # Inputs were produced on the current stream; run after them, then hand back in order.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        for t in (*feeds.values(), *outputs.values()):
            t.record_stream(self.stream)
        if "match_ids" in outputs:
            outputs["match_ids"] = outputs["match_ids"].long()
        return outputs


def _weights_of(metadata: dict[str, Any] | None) -> str | None:
    """The ``weights_sha256`` of the ONNX an engine was built from (its sidecar's ``onnx_metadata``)."""
    onnx_metadata = (metadata or {}).get("onnx_metadata") or {}
    return onnx_metadata.get("weights_sha256") if isinstance(onnx_metadata, dict) else None


class TensorRTBackend:
    """A TensorRT engine behind :class:`~loftr_kd.runtime.backend.Backend` (:class:`TensorRTRunner` inside).

    The engines of a split export beside it (``student.encoder.fp16.engine``, ``student.matcher.fp16.engine``
    for ``student.fp16.engine``: :func:`~loftr_kd.runtime.backend.split_path`) run :meth:`encode` and
    :meth:`match`; they are loaded on first use.

    Args:
        path: the engine (``.engine``/``.trt``/``.plan``), with its sidecar JSON or the ONNX it was built
            from beside it for the geometry.
        input_size: ``(height, width)`` of an engine without metadata.

    Raises:
        TensorRTUnavailable: no ``tensorrt`` or no CUDA GPU (``reason`` says which).
        MatcherError: the geometry cannot be told from the metadata.
    """

    name = "trt"
    device = "cuda"

    def __init__(self, path: str | os.PathLike, *, input_size: tuple[int, int] | None = None) -> None:
        self.path = Path(path)
        self.runner = TensorRTRunner(self.path)
        self.geometry = ModelGeometry.from_engine_metadata(self.runner.metadata, self.path, input_size)
        self.split_paths = tuple(split_path(self.path, part) for part in SPLIT_PARTS)
        self._split: tuple[TensorRTRunner, TensorRTRunner] | None = None

    @property
    def can_encode(self) -> bool:
        """The split export's engines lie beside this one."""
        return self._split is not None or all(p.is_file() for p in self.split_paths)

    @property
    def split_batch(self) -> int | None:
        """The largest batch both split engines' profiles take."""
        if not self.can_encode:
            return None
        batches = [b for b in (runner.max_batch for runner in self._split_runners()) if b is not None]
        return min(batches) if batches else None

    def _split_runners(self) -> tuple[TensorRTRunner, TensorRTRunner]:
        """The encoder and matcher engines, loaded (and checked against this engine) on first use."""
        if self._split is None:
            if not all(p.is_file() for p in self.split_paths):
                raise no_split_error(self.path, self.name)
            runners = tuple(TensorRTRunner(path) for path in self.split_paths)
            for path, runner in zip(self.split_paths, runners):
                part = ModelGeometry.from_engine_metadata(runner.metadata, path, None)
                check_split_config(
                    path,
                    part.config,
                    self.path,
                    self.geometry.config,
                    _weights_of(runner.metadata),
                    _weights_of(self.runner.metadata),
                )
            self._split = runners
        return self._split

    def encode(self, images: np.ndarray) -> EncodedBatch:
        """The encoder engine on ``(B, 1, H, W)`` float32 images (copied back to the host)."""
        import torch

        runner = self._split_runners()[0]
        out = runner.run({ENCODER_INPUT: torch.from_numpy(np.asarray(images, np.float32)).to(runner.device)})
        return EncodedBatch(
            *(
                (out[name].long() if name == "queries" else out[name].float()).cpu().numpy()
                for name in ENCODER_OUTPUTS
                if name in out
            )
        )

    def match(self, encoded0: EncodedBatch, encoded1: EncodedBatch) -> ModelOutputs:
        """The matcher engine on two encodings (copied back to the host)."""
        import torch

        runner = self._split_runners()[1]
        values = encoded0.matcher_feeds(encoded1)
        feeds = {name: torch.from_numpy(values[name]).to(runner.device) for name in runner.input_names}
        stride = self.geometry.stride
        shapes = [tuple(int(n) * stride for n in e.coarse.shape[-2:]) for e in (encoded0, encoded1)]
        return self._outputs(runner.run(feeds), *shapes)

    def feed(self, images0: np.ndarray, images1: np.ndarray) -> tuple[Any, Any]:
        """``(B, 1, H, W)`` float32 arrays -> CUDA tensors."""
        import torch

        return tuple(
            torch.from_numpy(np.asarray(x, np.float32)).to(self.runner.device) for x in (images0, images1)
        )

    def run(self, inputs: tuple[Any, Any]) -> ModelOutputs:
        """The engine on tensors from :meth:`feed` (copied back to the host, which waits for it)."""
        return self._outputs(self.runner(*inputs), inputs[0].shape[-2:], inputs[1].shape[-2:])

    def _outputs(self, out: dict[str, Any], shape0: tuple[int, int], shape1: tuple[int, int]) -> ModelOutputs:
        """An engine's outputs by name as :class:`ModelOutputs` (``shape0`` / ``shape1``: the inputs' ``(H, W)``)."""
        match_ids = out["match_ids"].long().cpu().numpy()
        if "points1" in out:
            points0, points1 = (out[key].float().cpu().numpy() for key in ("points0", "points1"))
        else:
            points0, points1 = cell_centre_points(match_ids, shape0, shape1, self.geometry.stride)
        uncertainty = out.get("match_uncertainty")
        return ModelOutputs(
            match_ids=match_ids,
            match_confidence=out["match_confidence"].float().cpu().numpy(),
            points0=points0,
            points1=points1,
            match_uncertainty=None if uncertainty is None else uncertainty.float().cpu().numpy(),
        )
