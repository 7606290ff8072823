"""TensorRT 10 engine build (Python API), its optimisation profiles and the equivalent ``trtexec`` line.

An engine is specific to the GPU model and the TensorRT version it was built with (Coarse_LoFTR_TRT
issue #4: prebuilt engines fail elsewhere), so every engine gets a sidecar ``<engine>.json`` recording
both. Running an engine is the runtime's (:mod:`loftr_kd.runtime.tensorrt_backend`: ``TensorRTRunner``,
which refuses, with a clear message, an engine built by another TensorRT); its names are re-exported here.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loftr_kd.export.checks import io_shapes, read_metadata
from loftr_kd.files import write_bytes, write_json
from loftr_kd.runtime.tensorrt_backend import (
    TensorRTRunner,
    TensorRTUnavailable,
    engine_metadata_path,
    require_tensorrt,
    tensorrt_available,
)

# re-exported: long-standing import paths (docs/deployment.md, tests)
__all__ = [
    "TensorRTRunner",
    "TensorRTUnavailable",
    "build_engine",
    "default_profiles",
    "engine_metadata_path",
    "require_tensorrt",
    "shape_profile",
    "tensorrt_available",
    "trtexec_command",
]

Shape = Sequence[int]
# A profile: input name -> (min, opt, max) shapes.
Profile = Mapping[str, tuple[Shape, Shape, Shape]]


def _shape_str(shape: Shape) -> str:
    return "x".join(str(int(d)) for d in shape)


def default_profiles(
    onnx_path: str | Path, *, max_batch: int = 8, settings: Mapping[str, Any] | None = None
) -> list[dict[str, tuple]] | None:
    """The optimisation profile of a graph: ``None`` for a static one; batch 1..``max_batch`` (opt 1) for
    a dynamic-batch one; for a dynamic-shape one, ``settings`` (:func:`shape_profile`'s arguments:
    ``min``/``opt``/``max`` ``(height, width)`` and optionally ``max_batch``), required there.

    Raises:
        ValueError: a dynamic-shape graph without ``settings``, or a profile it cannot take.
    """
    inputs = io_shapes(onnx_path)["inputs"]
    dynamic = {name: info["shape"] for name, info in inputs.items() if not _static(info["shape"])}
    if not dynamic:
        return None
    if any(not _static(dims[1:]) for dims in dynamic.values()):
        if not settings:
            raise ValueError(
                f"{onnx_path} has dynamic height and width: give the TensorRT optimisation profile "
                "(tensorrt.profile.min/opt/max as [height, width] in conf/export.yaml, or profiles=)"
            )
        settings = dict(settings)
        return [
            shape_profile(
                onnx_path,
                settings["min"],
                settings["opt"],
                settings["max"],
                max_batch=int(settings.get("max_batch", 1) or 1),
            )
        ]
    profile = {}
    for name, dims in dynamic.items():
        rest = [int(d) for d in dims[1:]]
        profile[name] = ((1, *rest), (1, *rest), (max_batch, *rest))
    return [profile]


def _static(dims: Sequence[Any]) -> bool:
    return all(isinstance(d, int) and d > 0 for d in dims)


def shape_profile(
    onnx_path: str | Path, min_size: Shape, opt_size: Shape, max_size: Shape, *, max_batch: int = 1
) -> dict[str, tuple]:
    """A TensorRT profile for a dynamic-shape student graph: both images from ``min_size`` to ``max_size``
    ``(height, width)``, tuned for ``opt_size``, batch 1..``max_batch`` (opt 1).

    Every size must be a multiple of the graph's coarse stride (its ``size_multiple`` metadata), within its
    ``max_height x max_width`` and ordered ``min <= opt <= max`` per axis; otherwise ``ValueError`` says which.
    The halves of a split export take feature maps: an input's ``input_strides`` entry (metadata; 1 for
    images) divides the image size into its rows and columns, its channels are the graph's.
    """
    meta = read_metadata(onnx_path)
    multiple = int(meta.get("size_multiple") or meta.get("coarse_stride") or 1)
    limit = (int(meta.get("max_height") or 1 << 30), int(meta.get("max_width") or 1 << 30))
    sizes = {
        "min": tuple(map(int, min_size)),
        "opt": tuple(map(int, opt_size)),
        "max": tuple(map(int, max_size)),
    }
    for key, (h, w) in sizes.items():
        if h % multiple or w % multiple or min(h, w) < 2 * multiple:
            raise ValueError(
                f"TensorRT profile {key} size {h}x{w} (height x width) must be multiples of the coarse stride "
                f"{multiple} and at least two cells ({2 * multiple} px) per side"
            )
        if h > limit[0] or w > limit[1]:
            raise ValueError(
                f"TensorRT profile {key} size {h}x{w} exceeds the graph's maximum {limit[0]}x{limit[1]} "
                f"(height x width; {onnx_path})"
            )
    if not all(sizes["min"][i] <= sizes["opt"][i] <= sizes["max"][i] for i in range(2)):
        raise ValueError(f"TensorRT profile sizes must satisfy min <= opt <= max per axis, got {sizes}")
    if max_batch < 1:
        raise ValueError(f"TensorRT profile max_batch must be >= 1, got {max_batch}")
    inputs = io_shapes(onnx_path)["inputs"]
    strides = json.loads(meta.get("input_strides") or "{}")

    def shape(name: str, batch: int, size: tuple[int, int]) -> tuple[int, ...]:
        stride = int(strides.get(name, 1))
        if len(inputs[name]["shape"]) == 2:  # one entry per cell (the matcher's corner queries)
            return (batch, (size[0] // stride) * (size[1] // stride))
        channels = inputs[name]["shape"][1]
        return (batch, channels if isinstance(channels, int) else 1, size[0] // stride, size[1] // stride)

    return {
        name: (
            shape(name, 1, sizes["min"]),
            shape(name, 1, sizes["opt"]),
            shape(name, max_batch, sizes["max"]),
        )
        for name in inputs
    }


def trtexec_command(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    fp16: bool,
    workspace_mb: int,
    profiles: Sequence[Profile] | None = None,
) -> str:
    """The ``trtexec`` command line equivalent to ``build_engine`` (TensorRT 10 flags)."""
    args = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        f"--memPoolSize=workspace:{int(workspace_mb)}M",
    ]
    if fp16:
        args.append("--fp16")
    if profiles:
        if len(profiles) > 1:
            args.append("# trtexec takes one profile per build; the first is shown")
        prof = profiles[0]
        for flag, idx in (("--minShapes", 0), ("--optShapes", 1), ("--maxShapes", 2)):
            args.append(flag + "=" + ",".join(f"{n}:{_shape_str(s[idx])}" for n, s in prof.items()))
    return " ".join(shlex.quote(a) if not a.startswith("#") else a for a in args)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    fp16: bool = True,
    workspace_mb: int = 1024,
    profiles: Sequence[Profile] | None = None,
    shape_profile: Mapping[str, Any] | None = None,
    verbose: bool = False,
) -> Path:
    """Build and save a TensorRT engine from an ONNX file, with a sidecar metadata JSON.

    Args:
        onnx_path: the exported graph.
        engine_path: destination (``.engine``); metadata goes to ``<engine_path>.json``.
        fp16: allow fp16 kernels (``BuilderFlag.FP16``); fp32 otherwise.
        workspace_mb: ``MemoryPoolType.WORKSPACE`` limit.
        profiles: optimisation profiles for dynamic inputs (input -> (min, opt, max)); default
            (:func:`default_profiles`): none for a static graph, batch 1..8 for a dynamic-batch one,
            ``shape_profile`` for a dynamic-shape one.
        shape_profile: ``{"min": [h, w], "opt": [h, w], "max": [h, w], "max_batch": n}`` for a
            dynamic-shape graph (``tensorrt.profile`` in conf/export.yaml).

    Returns:
        ``engine_path``. Prints the equivalent ``trtexec`` line.

    Raises:
        TensorRTUnavailable: no ``tensorrt`` or no CUDA GPU.
        RuntimeError: the parser or the builder failed (parser errors included).
        ValueError: the profile does not fit the graph (checked before TensorRT is needed).
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if profiles is None:
        profiles = default_profiles(onnx_path, settings=shape_profile)
    trt = require_tensorrt()
    import torch

    command = trtexec_command(onnx_path, engine_path, fp16=fp16, workspace_mb=workspace_mb, profiles=profiles)
    print(f"equivalent trtexec command: {command}")

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10: networks are always explicit-batch; the flag is deprecated, so pass none.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: " + " | ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            # TensorRT 11 removed weak typing (BuilderFlag.FP16): precision comes from the graph's types.
            raise RuntimeError(
                f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (removed in 11.x): build with fp16=False "
                "or install tensorrt>=10,<11"
            )
        # platform_has_fast_fp16 is deprecated since 10.5 (and gone in 11): only a hint here.
        if not getattr(builder, "platform_has_fast_fp16", True):
            print("warning: this GPU has no fast fp16; building with FP16 allowed anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    for prof in profiles or []:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in prof.items():
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    write_bytes(engine_path, bytes(serialized))

    io = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        io[t.name] = {"kind": "input", "shape": list(t.shape), "dtype": str(t.dtype)}
    for i in range(network.num_outputs):
        t = network.get_output(i)
        io[t.name] = {"kind": "output", "shape": list(t.shape), "dtype": str(t.dtype)}
    onnx_meta = read_metadata(onnx_path)
    metadata = {
        "tensorrt_version": trt.__version__,
        "gpu_name": torch.cuda.get_device_name(),
        "gpu_compute_capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "cuda_version": torch.version.cuda,
        "precision": "fp16" if fp16 else "fp32",
        "workspace_mb": int(workspace_mb),
        "onnx_path": str(onnx_path),
        "tensors": io,
        "profiles": [{n: [list(map(int, s)) for s in v] for n, v in p.items()} for p in (profiles or [])],
        "trtexec_command": command,
        # Self-describing engine: the Matcher rebuilds cell geometry from this even if the ONNX moves.
        "student_config": json.loads(onnx_meta["student_config"])
        if onnx_meta.get("student_config")
        else None,
        "onnx_metadata": onnx_meta,
        "note": "engines run only on the GPU model and TensorRT version they were built with",
    }
    write_json(engine_metadata_path(engine_path), metadata)
    return engine_path
