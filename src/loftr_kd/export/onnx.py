"""ONNX export of the student, and ``export_student`` run at the end of every training run.

Choices (see docs/deployment.md):
- Exporter: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``). In torch 2.13 it
  still writes opset 17 directly, which TensorRT 8.5+ (JetPack 5) and 10 parse. The torch.export
  ("dynamo") exporter only emits opset >= 18 (its down-conversion to 17 fails on Reduce* axes), so it
  is used only when asked for (``exporter="dynamo"``, opset raised to 18).
- ``match_ids`` is exported as **int32**: TensorRT computes indices (ArgMax/TopK) in INT32 and before
  version 10 has no INT64 I/O at all, so int32 avoids a cast and a parser warning on every version.
  Consumers cast it back to int64 (the PyTorch contract); -1 still means "no match".
- Shapes are static by default (what TensorRT on small devices wants). ``dynamic=True`` (or
  ``"shape"``) makes batch, height and width dynamic: the position encoding is precomputed for the
  model's maximum grid and sliced at run time, the grid arithmetic is traced from the input shapes, and the
  two images get their own height and width (``height0/width0``, ``height1/width1``), so one file serves
  every size that is a multiple of the coarse stride up to the model's ``max_height x max_width``; the
  per-cell outputs then have ``cells0 = height0/s * width0/s`` entries. ``dynamic="batch"`` makes only the
  batch dynamic (the earlier meaning of ``dynamic=True``). Every dynamic graph is run at sizes it was
  not traced with before it is written, so a size baked in during tracing fails the export.
- ``metadata_props`` carry ``student_config`` (JSON of ``StudentConfig``), ``loftr_kd_version``,
  the input size, stride and output dtypes, so a Matcher can rebuild cell geometry from the .onnx alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from loftr_kd._version import __version__
from loftr_kd.data.homography import real_image_pairs
from loftr_kd.export import checks
from loftr_kd.files import is_own_output, replacing, to_jsonable
from loftr_kd.models.fast_backbone import reparameterize_for_inference
from loftr_kd.models.matching import match_entries
from loftr_kd.runtime.sessions import session_threads

MATCH_IDS_DTYPE = "int32"
# ``dynamic`` values: which input dims a graph leaves free.
DYNAMIC_MODES = {False: (), "batch": ("batch",), "shape": ("batch", "height", "width")}


def dynamic_mode(dynamic: bool | str | None) -> str | bool:
    """Normalise ``dynamic`` (``False``/``None``, ``True`` = ``"shape"``, ``"batch"``, ``"shape"``)."""
    if dynamic is None or dynamic is False:
        return False
    if dynamic is True:
        return "shape"
    if isinstance(dynamic, str) and dynamic.lower() in ("true", "false"):
        return dynamic_mode(dynamic.lower() == "true")
    if dynamic not in DYNAMIC_MODES:
        raise ValueError(f"dynamic must be false, true (= 'shape') or 'batch', got {dynamic!r}")
    return dynamic


def dynamic_probe_sizes(height: int, width: int, stride: int, max_height: int, max_width: int):
    """Sizes ``(h, w)`` a dynamic-shape graph is checked at besides the traced one: portrait/landscape
    swapped and a wider aspect (3/4 of the height), clipped to the maximum and >= 5 cells a side."""

    def fit(h: int, w: int) -> tuple[int, int]:
        h = min(max(round(h / stride), 5) * stride, max_height)
        w = min(max(round(w / stride), 5) * stride, max_width)
        return int(h), int(w)

    sizes = [fit(width, height), fit(height * 3 / 4, width)]
    return [s for i, s in enumerate(sizes) if s != (height, width) and s not in sizes[:i]]


class ExportError(RuntimeError):
    """Export, or one of its checks, failed; the checkpoint is left untouched."""


# Outputs of every exported student, in order (``confidence`` is appended when asked for).
OUTPUT_NAMES = ("match_ids", "match_confidence", "points0", "points1", "match_uncertainty")


class ExportWrapper(nn.Module):
    """Tensors in, fixed-shape tensors out, one entry per image0 cell (:data:`OUTPUT_NAMES`):
    ``match_ids`` (int32, -1 = none), ``match_confidence``, ``points0`` / ``points1`` (xy pixels of the
    match in each image, refined where the model refines, -1 where none), ``match_uncertainty`` (px),
    [``confidence`` (B, L0, L1)]."""

    def __init__(self, model: nn.Module, with_confidence: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_confidence = with_confidence

    def forward(self, image0: torch.Tensor, image1: torch.Tensor):
        return graph_outputs(self.model(image0, image1), self.with_confidence)


def graph_outputs(out: Any, with_confidence: bool = False) -> tuple[torch.Tensor, ...]:
    """A model's ``CoarseMatchOutput`` as an exported graph's outputs (:data:`OUTPUT_NAMES` [+ confidence]).

    A student's are its :func:`~loftr_kd.models.matching.match_entries`: one entry per image0 cell, or with
    ``refine_points=k`` one per point, ``k * L0`` (entry ``e`` belongs to cell ``e % L0``)."""
    if getattr(out, "points1", None) is not None:  # every student; a bare coarse matcher has none
        entries = match_entries(out)
        outputs = (entries.match_ids.to(torch.int32), entries.match_confidence)  # (B, L), -1 = none
        outputs += (entries.points0, entries.points1, entries.match_uncertainty)
    else:
        outputs = (out.match_ids.to(torch.int32), out.match_confidence)  # (B, L0), -1 = none
    if with_confidence:
        return (*outputs, out.confidence)  # + (B, L0, L1)
    return outputs


def student_config_dict(model: nn.Module) -> dict[str, Any] | None:
    """``asdict`` of the model's ``StudentConfig`` (attribute ``config`` or ``cfg``), if it has one."""
    for name in ("config", "cfg", "student_config"):
        cfg = getattr(model, name, None)
        if cfg is not None and dataclasses.is_dataclass(cfg):
            return dataclasses.asdict(cfg)
        if isinstance(cfg, dict):
            return dict(cfg)
    return None


def _input_size(model: nn.Module, config: dict[str, Any] | None) -> tuple[int, int]:
    if config and config.get("input_height") and config.get("input_width"):
        return int(config["input_height"]), int(config["input_width"])
    raise ExportError(
        "cannot tell the export size: the model has no StudentConfig with input_height/input_width; "
        "pass height= and width= to export_onnx"
    )


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    batch: int = 1,
    dynamic: bool | str = False,
    opset: int = 17,
    with_confidence: bool = False,
    height: int | None = None,
    width: int | None = None,
    exporter: str = "torchscript",
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Export the student to ONNX, written atomically.

    Args:
        model: student (``forward(image0, image1) -> CoarseMatchOutput``); exported in eval mode on CPU.
        path: destination ``.onnx``.
        batch: batch size of the static graph (and of the example input when dynamic).
        dynamic: ``False`` (static), ``True``/``"shape"`` (batch, height and width dynamic) or ``"batch"``
            (batch only); see the module docstring.
        opset: ONNX opset (17 by default; the dynamo exporter needs >= 18).
        with_confidence: also output the (B, L0, L1) confidence matrix (debugging; large).
        height, width: input size; default from the model's ``StudentConfig``.
        exporter: ``"torchscript"`` (default) or ``"dynamo"``.
        extra_metadata: more ``metadata_props`` entries (values JSON-encoded unless str).

    Returns:
        The written path. Inputs ``image0``/``image1`` (B,1,H,W) float32; outputs ``match_ids`` (B,L0)
        int32 (-1 = none), ``match_confidence`` (B,L0) float32, optionally ``confidence`` (B,L0,L1).
    """
    path = Path(path)
    config = student_config_dict(model)
    if height is None or width is None:
        height, width = _input_size(model, config)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    if exporter == "dynamo" and opset < 18:
        raise ValueError("the dynamo exporter writes opset >= 18; use exporter='torchscript' for opset 17")

    dynamic = dynamic_mode(dynamic)
    stride = int((config or {}).get("coarse_stride", 1) or 1)
    points = int((config or {}).get("refine_points", 1) or 1)  # entries per image0 cell
    max_height = int((config or {}).get("max_height", height))
    max_width = int((config or {}).get("max_width", width))
    if dynamic == "shape" and (height % stride or width % stride):
        raise ValueError(f"export size {width}x{height} must be a multiple of the coarse stride {stride}")

    was_training = model.training
    model = model.eval()
    # RepVGG-style blocks (the `fast` backbone) are fused to plain convolutions on a copy; a no-op otherwise.
    prepare = getattr(model, "prepare_for_inference", None)  # a student prepares itself (on a copy)
    wrapper = ExportWrapper(
        prepare() if prepare else reparameterize_for_inference(model), with_confidence
    ).eval()
    # A dynamic dim traced at size 1 gets specialised by torch.export (0/1 specialisation): trace at >= 2.
    example_batch = max(batch, 2) if dynamic else batch
    size1 = (height, width)
    if dynamic == "shape":
        # image1 traced at another size: the pair takes the model's two-size paths, and any size taken
        # from one image where the other's belongs shows up in the checks below
        # (another number of cells too: the transformer stacks same-length pairs)
        size1 = (dynamic_probe_sizes(height, width, stride, max_height, max_width) or [(height, width)])[-1]
    example = (torch.rand(example_batch, 1, height, width), torch.rand(example_batch, 1, *size1))
    with torch.no_grad():
        probe = wrapper(*example)
    output_names = [*OUTPUT_NAMES[: len(probe) - int(with_confidence)]] + (
        ["confidence"] if with_confidence else []
    )
    try:
        with replacing(path, suffix=".tmp.onnx") as tmp:  # readers never see a half-written graph
            kwargs: dict[str, Any] = dict(
                input_names=["image0", "image1"], output_names=output_names, opset_version=opset
            )
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
                if exporter == "torchscript":
                    if dynamic:
                        kwargs["dynamic_axes"] = _dynamic_axes(dynamic, output_names, points)
                    torch.onnx.export(
                        wrapper, example, str(tmp), dynamo=False, do_constant_folding=True, **kwargs
                    )
                else:
                    if dynamic:
                        b = torch.export.Dim("batch", min=1, max=64)
                        shapes = {"image0": {0: b}, "image1": {0: b}}
                        if dynamic == "shape":
                            for i, name in enumerate(("image0", "image1")):
                                shapes[name][2] = stride * torch.export.Dim(
                                    f"rows{i}", min=2, max=max_height // stride
                                )
                                shapes[name][3] = stride * torch.export.Dim(
                                    f"cols{i}", min=2, max=max_width // stride
                                )
                        kwargs["dynamic_shapes"] = shapes
                    torch.onnx.export(wrapper, example, str(tmp), dynamo=True, external_data=False, **kwargs)
            proto = onnx.load(str(tmp))
            _declare_output_shapes(proto, probe, kwargs.get("dynamic_axes", {}) if dynamic else None)
            metadata = graph_metadata(
                config, height, width, batch, dynamic, output_names, _with_weights(model, extra_metadata)
            )
            write_metadata(proto, metadata)
            onnx.save(proto, str(tmp))
            if dynamic == "batch":
                _verify_dynamic_batch(tmp, example_batch + 1, height, width)
            elif dynamic == "shape":
                sizes = [(height, width), *dynamic_probe_sizes(height, width, stride, max_height, max_width)]
                _verify_dynamic_shape(tmp, example_batch + 1, sizes, stride, points)
    finally:
        model.train(was_training)
    return path


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and values, in name order).

    Stored as ``weights_sha256`` in every exported graph, so that the halves of a split export can be told
    apart from those of other weights with the same ``student_config`` (the next epoch's, say).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _with_weights(model: nn.Module, extra_metadata: dict[str, Any] | None) -> dict[str, Any]:
    """``extra_metadata`` with the model's :func:`weights_fingerprint` (an explicit entry wins)."""
    return {"weights_sha256": weights_fingerprint(model), **(extra_metadata or {})}


def graph_metadata(
    config: dict[str, Any] | None,
    height: int,
    width: int,
    batch: int,
    dynamic: str | bool,
    output_names: list[str],
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The ``metadata_props`` of an exported graph (what a runtime reads instead of guessing)."""
    stride = int((config or {}).get("coarse_stride", 1) or 1)
    metadata = {
        "producer": "loftr_kd.export.onnx",
        "loftr_kd_version": __version__,
        "student_config": json.dumps(config) if config is not None else "",
        "input_height": str(height),
        "input_width": str(width),
        "batch": "dynamic" if dynamic else str(batch),
        "dynamic_axes": ",".join(DYNAMIC_MODES[dynamic]),
        # a dynamic-shape graph takes any multiple of size_multiple up to max_height x max_width
        "size_multiple": str(stride) if dynamic == "shape" else "",
        "max_height": str(int((config or {}).get("max_height", height)) if dynamic == "shape" else height),
        "max_width": str(int((config or {}).get("max_width", width)) if dynamic == "shape" else width),
        "coarse_stride": str((config or {}).get("coarse_stride", "")),
        "refine": str((config or {}).get("refine", "none")),
        "refine_window": json.dumps(_window_metadata(config)),
        "match_ids_dtype": MATCH_IDS_DTYPE,
        "outputs": ",".join(output_names),
    }
    for key, value in (extra_metadata or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    return metadata


def write_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace a graph's ``metadata_props`` and name the producer."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "loftr_kd"
    proto.producer_version = __version__


def _dynamic_axes(dynamic: str, output_names: list[str], points: int = 1) -> dict[str, dict[int, str]]:
    """``dynamic_axes`` of the TorchScript exporter: batch, and per image its height and width; the match
    outputs' entries are ``cells0``, or ``entries0`` where there are ``points > 1`` per cell."""
    if dynamic == "batch":
        return {name: {0: "batch"} for name in ["image0", "image1", *output_names]}
    axes: dict[str, dict[int, str]] = {
        "image0": {0: "batch", 2: "height0", 3: "width0"},
        "image1": {0: "batch", 2: "height1", 3: "width1"},
    }
    for name in output_names:
        axes[name] = {0: "batch", 1: "cells0" if points == 1 else "entries0"}
    if "confidence" in output_names:
        axes["confidence"] = {0: "batch", 1: "cells0", 2: "cells1"}
    return axes


def _verify_dynamic_shape(
    path: Path, batch: int, sizes: list[tuple[int, int]], stride: int, points: int = 1
) -> None:
    """Run a dynamic-shape graph on pairs of sizes it was not traced with (image0 and image1 differing);
    a size baked in during tracing fails here, or gives outputs of the wrong number of cells."""
    session = checks.ort_session(path, threads=1)
    verify_runs(
        lambda image0, image1: session.run(None, {"image0": image0, "image1": image1}),
        "the dynamic-shape graph",
        "the dynamic-shape graph",
        batch,
        sizes,
        stride,
        points,
    )


def verify_runs(
    run: Callable[[np.ndarray, np.ndarray], list[np.ndarray]],
    graph: str,
    output_graph: str,
    batch: int,
    sizes: list[tuple[int, int]],
    stride: int,
    points: int = 1,
) -> None:
    """Call ``run(image0, image1)`` (zero images ``(batch, 1, h, w)``) on each size paired with the next one;
    raise :class:`ExportError` naming ``graph`` when it fails, or ``output_graph`` when an output's leading
    dims are not ``(batch, cells of image0)`` (the match outputs: ``points`` entries per cell; a
    ``confidence`` after them: one per cell). Shared by the whole graph's and the split export's checks."""
    for (h0, w0), (h1, w1) in zip(sizes, sizes[1:] + sizes[:1]):
        try:
            outputs = run(np.zeros((batch, 1, h0, w0), np.float32), np.zeros((batch, 1, h1, w1), np.float32))
        except Exception as e:
            raise ExportError(
                f"{graph} does not run on a {w0}x{h0} / {w1}x{h1} pair at batch {batch}: a size "
                f"was baked in during tracing. onnxruntime: {str(e).splitlines()[0][:300]}"
            ) from e
        cells = (h0 // stride) * (w0 // stride)
        expected = [(batch, cells * points if i < len(OUTPUT_NAMES) else cells) for i in range(len(outputs))]
        if [tuple(o.shape[:2]) for o in outputs] != expected:
            raise ExportError(
                f"{output_graph} returned {[o.shape for o in outputs]} for a {w0}x{h0} image0 at batch "
                f"{batch}; expected leading dims {expected}"
            )


def _declare_output_shapes(
    proto: onnx.ModelProto, outputs: tuple[torch.Tensor, ...], dynamic_axes: dict[str, dict[int, str]] | None
) -> None:
    """Write the output sizes into the graph's output types (``outputs``: the wrapper run on the example):
    the traced size of every fixed dim, the axis name of every dynamic one (``dynamic_axes``; ``None`` for a
    static graph).

    The tracer leaves symbolic dims on outputs computed through reshapes of runtime shapes (the
    refinement's gathers) and names others after the op that made them; TensorRT and users reading the
    graph should see which dims are fixed and what the free ones mean.
    """
    for value, tensor in zip(proto.graph.output, outputs):
        free = (dynamic_axes or {}).get(value.name, {})
        dims = value.type.tensor_type.shape.dim
        for axis, (dim, size) in enumerate(zip(dims, tensor.shape)):
            dim.Clear()
            if axis in free:
                dim.dim_param = free[axis]
            else:
                dim.dim_value = int(size)


def _window_metadata(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """Refinement window geometry for runtimes (fine stride, size, reach), ``None`` without refinement."""
    if not config or config.get("refine", "none") == "none":
        return None
    from loftr_kd.geometry import RefineWindow

    window = RefineWindow(config["coarse_stride"], config["refine_fine_stride"], config["refine_margin"])
    if config.get("refine_query", "centre") == "corner":  # an odd window centred on the query's position
        reach = window.query_half * window.fine_stride
        return {"fine_stride": window.fine_stride, "size": window.query_size, "reach_px": reach}
    return {"fine_stride": window.fine_stride, "size": window.size, "reach_px": window.reach}


def _verify_dynamic_batch(path: Path, batch: int, height: int, width: int) -> None:
    """Run the graph at a batch size it was not traced with; shapes baked in by tracing fail here."""
    session = checks.ort_session(path, threads=1)
    x = np.zeros((batch, 1, height, width), np.float32)
    try:
        outputs = session.run(None, {"image0": x, "image1": x})
    except Exception as e:
        raise ExportError(
            f"the dynamic-batch graph does not run at batch {batch}: a batch size was baked in during "
            f"tracing (e.g. `split(batch)` in the model; `chunk(2)` exports dynamically). "
            f"onnxruntime: {str(e).splitlines()[0][:300]}"
        ) from e
    if any(o.shape[0] != batch for o in outputs):
        raise ExportError(f"the dynamic-batch graph returned outputs of the wrong batch for batch {batch}")


def _probe(config, height: int, width: int) -> list[tuple[int, int]]:
    return dynamic_probe_sizes(height, width, config.coarse_stride, config.max_height, config.max_width)


def _other_size_pairs(config, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Photo pairs with a known warp at the probe sizes, and one pair of two different sizes."""
    import cv2

    pairs = []
    for i, (h, w) in enumerate(_probe(config, height, width)):
        pairs += [(a, b) for a, b, _ in real_image_pairs(h, w, 2, seed=10 + i)]
    (a, b, _), size = real_image_pairs(height, width, 1, seed=20)[0], _probe(config, height, width)
    if size:
        b = cv2.resize(b, (size[-1][1], size[-1][0]), interpolation=cv2.INTER_AREA)
    return pairs + [(a, b)]


@dataclass
class ExportResult:
    """What ``export_student`` wrote and measured."""

    onnx_path: Path
    report_path: Path
    report_md_path: Path
    ok: bool
    report: dict[str, Any] = field(default_factory=dict)
    model: Any = None  # the student as exported (loaded at the export size)
    parity_pairs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # the pairs compared


def _as_pairs(pairs, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(H, W) float32 pairs at the export size (validation images come at the training size)."""
    import cv2

    out = []
    for p in pairs:
        images = []
        for x in (p[0], p[1]):
            x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            x = x.reshape(x.shape[-2:]).astype(np.float32)
            if x.shape != (height, width):
                x = cv2.resize(x, (width, height), interpolation=cv2.INTER_AREA)
            images.append(x)
        out.append((images[0], images[1]))
    return out


def failed_paths(onnx_path: Path) -> list[Path]:
    """Where :func:`export_student` puts a graph that failed its checks and its report, beside
    ``<name>.onnx``: ``<name>.failed.onnx``, ``<name>.failed.export_report.json`` and ``.md``."""
    return [
        onnx_path.with_name(f"{onnx_path.stem}.failed{s}")
        for s in (".onnx", ".export_report.json", ".export_report.md")
    ]


def export_student(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    height: int,
    width: int,
    batch: int = 1,
    dynamic: bool | str = False,
    opset: int = 17,
    parity_pairs=None,
    with_confidence: bool = False,
    atol: float = 1e-4,
    min_match_agreement: float = 0.99,
    strict: bool = True,
    name: str | None = None,
) -> ExportResult:
    """Load a student checkpoint at the export size, export it, check it and write the report.

    Called at the end of every training run. The checkpoint is only read. The graph is written under a
    hidden name, checked, and only then moved to ``<name>.onnx``: with ``strict``, a graph that fails a check
    goes to ``<name>.failed.onnx`` with its report in ``<name>.failed.export_report.{json,md}`` instead (for
    inspection; an earlier good ``<name>.onnx`` and its report stay), and an interrupted export leaves
    neither. A later export that passes removes the failed files of an earlier one. A failure of the export or its
    checks is an ``ExportError`` (after writing the report when the export itself succeeded); a file that
    is not a student's, weights holding NaN/inf or a size off the stride are a ``ValueError`` before any
    work. Either way the caller can log it and keep its checkpoints.

    Args:
        checkpoint: Lightning checkpoint (``student_config`` + ``student.*``) or ``save_student`` file.
        out_dir: folder for ``<name>.onnx`` and ``<name>.export_report.{json,md}``.
        height, width: export input size (the position encoding is built for it).
        batch, dynamic, opset, with_confidence: see ``export_onnx``.
        parity_pairs: image pairs ``(image0, image1, ...)`` at the export size ((H,W) or (1,H,W) arrays
            or tensors in [0, 1]); default: 4 real photos with a known warp (``loftr_kd.data.homography.real_image_pairs``).
            A dynamic-shape graph is also compared at the other sizes of :func:`dynamic_probe_sizes`
            (portrait/landscape swapped, a wider aspect) and on a pair whose two images differ in size.
        atol, min_match_agreement: parity tolerances (see ``checks.check_parity``).
        strict: raise ``ExportError`` when an op or parity check fails (else only report it).
        name: file stem; default ``student_{height}x{width}``.

    Returns:
        ``ExportResult`` with the paths and the report dict.
    """
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir)
    if not checkpoint.exists():
        raise ExportError(f"checkpoint not found: {checkpoint}")
    name = name or f"student_{height}x{width}"
    onnx_path = out_dir / f"{name}.onnx"
    report_path = out_dir / f"{name}.export_report.json"
    from loftr_kd.checkpoints import CheckpointError

    try:
        from loftr_kd.models.student import load_student

        model = load_student(
            checkpoint,
            map_location="cpu",
            input_height=height,
            input_width=width,
        ).eval()
    except CheckpointError:
        raise  # the file's own one line (code refused, truncated, not a checkpoint)
    except (KeyError, ValueError) as e:  # not a student file, or damaged weights: the user's input, one line
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if "input_height" in text or "input_width" in text:  # the export size, not the file, is wrong
            raise ValueError(f"height={height} width={width}: {text}") from e
        raise ValueError(f"could not load the student from {checkpoint}: {text}") from e
    except Exception as e:
        raise ExportError(f"could not load the student from {checkpoint}: {type(e).__name__}: {e}") from e
    # The graph is checked under a hidden name and takes its own only once the checks pass: a failed or
    # interrupted export never leaves an unchecked file where a deployment would pick it up.
    unchecked = onnx_path.with_name(f".{onnx_path.stem}.unchecked.onnx")
    try:  # exported to `unchecked`, checked, then moved to onnx_path (to <name>.failed.onnx when a check failed)
        try:
            export_onnx(
                model,
                unchecked,
                batch=batch,
                dynamic=dynamic,
                opset=opset,
                with_confidence=with_confidence,
                height=height,
                width=width,
                extra_metadata={"checkpoint": checkpoint.name},
            )
        except Exception as e:
            raise ExportError(f"ONNX export of {checkpoint} failed: {type(e).__name__}: {e}") from e

        errors: list[str] = []
        dynamic = dynamic_mode(dynamic)
        report: dict[str, Any] = {
            "onnx_path": str(onnx_path),
            "checkpoint": str(checkpoint),
            "loftr_kd_version": __version__,
            "opset": opset,
            "dynamic": ",".join(DYNAMIC_MODES[dynamic]) if dynamic else False,
            "batch": batch,
            "height": height,
            "width": width,
            "match_ids_dtype": MATCH_IDS_DTYPE,
            "student_config": student_config_dict(model),
            "parameter_count": int(sum(p.numel() for p in model.parameters())),
            "onnx_initializer_parameters": checks.parameter_count(unchecked),
            "onnx_size_bytes": unchecked.stat().st_size,
            # CPU threads of the export and its checks (null: onnxruntime's default, all cores).
            "threads": {"torch": torch.get_num_threads(), "onnxruntime": session_threads()},
        }
        try:
            checks.run_onnx_checker(unchecked)
            report["onnx_checker"] = "passed"
        except checks.CheckError as e:
            report["onnx_checker"] = str(e)
            errors.append(str(e))
        report["io_shapes"] = checks.io_shapes(unchecked)
        op_check = checks.check_tensorrt_ops(unchecked)
        report["op_check"] = to_jsonable(op_check)
        if not op_check.ok:
            errors.append(f"ops outside the TensorRT allow-list: {op_check.violations}")
        pairs: list[tuple[np.ndarray, np.ndarray]] = []
        try:
            if parity_pairs is None or len(parity_pairs) == 0:
                pairs = [(a, b) for a, b, _ in real_image_pairs(height, width, 4)]
                report["parity_pairs_source"] = "scikit-image photos with a random homography"
            else:
                pairs = _as_pairs(parity_pairs, height, width)
                report["parity_pairs_source"] = "given pairs, resized to the export size where needed"
            if dynamic == "shape":
                pairs += _other_size_pairs(model.config, height, width)
                report["parity_pairs_source"] += (
                    "; dynamic shape: also photo pairs at "
                    + ", ".join(f"{w}x{h}" for h, w in _probe(model.config, height, width))
                    + " and one pair whose images differ in size"
                )
            report["parity_sizes"] = sorted(
                {f"{a.shape[1]}x{a.shape[0]} / {b.shape[1]}x{b.shape[0]}" for a, b in pairs}
            )
            parity = checks.check_parity(
                model, unchecked, pairs, atol=atol, min_match_agreement=min_match_agreement, batch=batch
            )
            report["parity"] = to_jsonable(parity)
            if not parity.ok:
                errors.append(
                    f"onnxruntime/PyTorch parity failed: match_confidence max diff "
                    f"{parity.match_confidence_max_abs_diff:.2e} (atol {atol}), match_ids equal "
                    f"{parity.match_ids_equal_fraction:.4f} (min {min_match_agreement}), points1 max diff "
                    f"{parity.points1_max_abs_diff_px} px, within {parity.points_atol_px} px "
                    f"{parity.points1_equal_fraction} (min {min_match_agreement})"
                )
        except Exception as e:
            errors.append(f"parity check could not run: {type(e).__name__}: {e}")
        report["errors"] = errors
        report["ok"] = not errors
        failed = failed_paths(onnx_path)
        if errors and strict:  # beside an earlier good graph and its report, which stay as they were
            onnx_path, report_path = failed[0], failed[1]
            report["onnx_path"] = str(onnx_path)
        else:  # a failed graph of an earlier export is no longer what this name stands for
            for path in failed:
                if path.is_file() and is_own_output(path):
                    path.unlink()
        os.replace(unchecked, onnx_path)
        # the checks ran on the hidden file: their messages name the file the graph now is
        errors[:] = [error.replace(str(unchecked), str(onnx_path)) for error in errors]
        json_path, md_path = checks.write_report(report_path, report)
        result = ExportResult(
            onnx_path, json_path, md_path, ok=not errors, report=report, model=model, parity_pairs=pairs
        )
        if errors and strict:
            raise ExportError(
                f"export checks failed; the graph was moved to {onnx_path} (report: {json_path}): "
                + "; ".join(errors)
            )
        return result
    finally:
        unchecked.unlink(missing_ok=True)
