"""The split export: the student as two graphs, an encoder (one image) and a matcher (two encodings).

Written beside the whole graph by ``loftr-kd-export`` (``student.onnx`` -> ``student.encoder.onnx`` and
``student.matcher.onnx``: :func:`loftr_kd.runtime.backend.split_path`), so an image encoded once is
matched against many others (a video against a reference frame, a registration's hypotheses) and every
runtime finds both halves beside the file it was given. Two graphs, not one with optional feature inputs:
ONNX has no optional inputs without control flow (``If``, which TensorRT refuses with dynamic shapes), and
each half is then a plain graph every runtime builds and times like the whole one.

- **encoder** ``image (B, 1, H, W)`` -> ``coarse (B, C, H/s, W/s)`` [, ``fine (B, D, H/f, W/f)``]: the
  student's :meth:`~loftr_kd.models.student.CoarseLoFTRStudent.encode` (backbone, position encoding, the
  transformer's leading self layers, the refinement's unit fine descriptors).
- **matcher** ``coarse0, coarse1`` [, ``fine0, fine1``] -> the whole graph's outputs (``match_ids`` int32,
  ``match_confidence``, ``points0``, ``points1``, ``match_uncertainty``): the student's ``match``.

The batch is always dynamic (a registration matches its hypotheses in one call); height and width are
dynamic where the whole graph's are (``dynamic=true``), each image's on its own. Like the whole graph,
every dynamic graph is run at a batch and sizes it was not traced with before it is written, and its
metadata carry the ``student_config`` (checked against the whole graph's when a runtime loads it),
``split_part`` and ``input_strides`` (pixels per input cell, for TensorRT profiles).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from loftr_kd.export import checks
from loftr_kd.export.onnx import (
    OUTPUT_NAMES,
    _declare_output_shapes,
    _with_weights,
    dynamic_mode,
    dynamic_probe_sizes,
    graph_metadata,
    graph_outputs,
    student_config_dict,
    verify_runs,
    write_metadata,
)
from loftr_kd.files import replacing
from loftr_kd.runtime.backend import (
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    MATCHER_INPUTS,
    SPLIT_PARTS,
    EncodedBatch,
    split_path,
)

__all__ = ["EncoderWrapper", "MatcherWrapper", "check_split", "export_split", "split_paths"]


class EncoderWrapper(nn.Module):
    """``image -> coarse [, fine [, queries]]``: the student's ``encode`` as a graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        return tuple(x for x in self.model.encode(image) if x is not None)


class MatcherWrapper(nn.Module):
    """``coarse0, coarse1 [, fine0, fine1 [, queries0]] ->`` the whole graph's outputs: the student's ``match``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, coarse0, coarse1, fine0=None, fine1=None, queries0=None):
        from loftr_kd.models.student import EncodedImages

        encoded0, encoded1 = EncodedImages(coarse0, fine0, queries0), EncodedImages(coarse1, fine1)
        return graph_outputs(self.model.match(encoded0, encoded1))


def split_paths(path: str | Path) -> tuple[Path, Path]:
    """``(encoder, matcher)`` paths of the split export beside the whole graph ``path``."""
    return tuple(split_path(path, part) for part in SPLIT_PARTS)


def export_split(
    model: nn.Module,
    path: str | Path,
    *,
    dynamic: bool | str = False,
    opset: int = 17,
    height: int | None = None,
    width: int | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Export a student's encoder and matcher beside the whole graph ``path`` (each written atomically).

    Args:
        model: the student (``encode`` / ``match``), prepared for inference (export runs on a CPU copy).
        path: the whole graph's ``.onnx`` (need not exist); the halves go to :func:`split_paths`.
        dynamic: the whole graph's ``dynamic`` (``True``/``"shape"``: height and width dynamic too).
        opset: ONNX opset (TorchScript exporter).
        height, width: the traced size; default the model's configured input.
        extra_metadata: more ``metadata_props`` entries (values JSON-encoded unless str).

    Returns:
        ``(encoder path, matcher path)``.

    Raises:
        ExportError: a dynamic graph does not run at a batch or size it was not traced with.
    """
    config = student_config_dict(model)
    height = int(height or config["input_height"])
    width = int(width or config["input_width"])
    stride = int(config["coarse_stride"])
    shape = dynamic_mode(dynamic) == "shape"
    mode = "shape" if shape else "batch"
    model = model.eval()
    weights = _with_weights(model, extra_metadata)  # of the weights as given, as the whole graph's
    prepare = getattr(model, "prepare_for_inference", None)
    model = prepare() if prepare else model
    size1 = (height, width)
    if shape:  # the second image at another size and aspect, as the whole graph is traced
        size1 = (
            dynamic_probe_sizes(height, width, stride, config["max_height"], config["max_width"]) or [size1]
        )[-1]
    batch = 2  # a dynamic dim traced at 1 would be specialised
    with torch.no_grad():
        encoded0 = model.encode(torch.rand(batch, 1, height, width))
        encoded1 = model.encode(torch.rand(batch, 1, *size1))
    fine = encoded0.fine is not None
    queries = encoded0.queries is not None
    encoder_outputs = list(ENCODER_OUTPUTS[: 1 + fine + queries])
    matcher_inputs = list(MATCHER_INPUTS[: 2 + 2 * fine + queries])
    matcher_example = (encoded0.coarse, encoded1.coarse) + ((encoded0.fine, encoded1.fine) if fine else ())
    matcher_example += (encoded0.queries,) if queries else ()
    with torch.no_grad():
        probe = graph_outputs(model.match(encoded0, encoded1))
    output_names = list(OUTPUT_NAMES[: len(probe)])
    fine_stride = config.get("refine_fine_stride") if fine else None
    strides = {ENCODER_INPUT: 1, "coarse": stride, "fine": fine_stride, "queries": stride}
    encoder_axes = _axes([ENCODER_INPUT, *encoder_outputs], shape)
    matcher_axes = _axes(matcher_inputs, shape)
    points = int(config.get("refine_points", 1) or 1)  # entries per image0 cell
    matcher_axes.update(
        {name: {0: "batch", 1: "cells0" if points == 1 else "entries0"} for name in output_names}
    )
    graphs = {
        "encoder": (
            EncoderWrapper(model).eval(),
            (torch.rand(batch, 1, height, width),),
            [ENCODER_INPUT],
            encoder_outputs,
            encoder_axes,
            encoded0,
        ),
        "matcher": (
            MatcherWrapper(model).eval(),
            matcher_example,
            matcher_inputs,
            output_names,
            matcher_axes,
            probe,
        ),
    }
    input_strides = {
        "encoder": {ENCODER_INPUT: 1},
        "matcher": {name: strides[name.rstrip("01")] for name in matcher_inputs},
    }
    paths = split_paths(path)
    with contextlib.ExitStack() as stack:  # both halves replace the old ones only once both pass
        written = []
        for (part, (wrapper, example, inputs, outputs, axes, traced)), out_path in zip(graphs.items(), paths):
            metadata = graph_metadata(
                config, height, width, 1, mode, outputs, {**weights, "split_part": part}
            )
            metadata["input_strides"] = json.dumps(input_strides[part])
            tmp = stack.enter_context(replacing(out_path, suffix=".tmp.onnx"))
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
                torch.onnx.export(
                    wrapper,
                    example,
                    str(tmp),
                    dynamo=False,
                    do_constant_folding=True,
                    input_names=inputs,
                    output_names=outputs,
                    opset_version=opset,
                    dynamic_axes=axes,
                )
            proto = onnx.load(str(tmp))
            _declare_output_shapes(proto, tuple(x for x in traced if x is not None), axes)
            write_metadata(proto, metadata)
            onnx.save(proto, str(tmp))
            written.append(tmp)
        sizes = [(height, width)]
        if shape:
            sizes += dynamic_probe_sizes(height, width, stride, config["max_height"], config["max_width"])
        _verify(written[0], written[1], sizes, stride, points)
    return paths


def _axes(names: list[str], shape: bool) -> dict[str, dict[int, str]]:
    """Dynamic axes of split-graph tensors: batch, and per tensor its rows and columns where ``shape``
    (the queries, one per cell, their cells)."""
    axes = {}
    for name in names:
        if not shape:
            axes[name] = {0: "batch"}
        elif name.startswith("queries"):
            axes[name] = {0: "batch", 1: f"{name}_cells"}
        else:
            axes[name] = {0: "batch", 2: f"{name}_rows", 3: f"{name}_cols"}
    return axes


def _verify(
    encoder_path: Path, matcher_path: Path, sizes: list[tuple[int, int]], stride: int, points: int = 1
) -> None:
    """Run the two halves on pairs of ``sizes`` (image0 and image1 differing) at a batch they were not
    traced with; a batch or size baked in during tracing fails here."""
    encoder, matcher = (checks.ort_session(p, threads=1) for p in (encoder_path, matcher_path))
    inputs = [i.name for i in matcher.get_inputs()]

    def run(image0: np.ndarray, image1: np.ndarray) -> list[np.ndarray]:
        encoded0, encoded1 = (
            EncodedBatch(*encoder.run(None, {ENCODER_INPUT: image})) for image in (image0, image1)
        )
        values = encoded0.matcher_feeds(encoded1)
        return matcher.run(None, {name: values[name] for name in inputs})

    verify_runs(run, "the split export", "the split export's matcher", 3, sizes, stride, points)


def check_split(
    model: nn.Module,
    onnx_path: str | Path,
    pairs: list[tuple[np.ndarray, np.ndarray]],
    *,
    atol: float = 1e-4,
    min_match_agreement: float = 0.99,
) -> dict[str, Any]:
    """The whole graph's checks on each half of the split export beside ``onnx_path``: ``onnx.checker``, the
    TensorRT op allow-list, and parity (:func:`~loftr_kd.export.checks.check_split_parity`: against PyTorch
    with the whole graph's tolerances, and against the whole graph itself).

    Returns:
        The export report's ``split`` section, its failures under ``errors``.
    """
    from loftr_kd.files import to_jsonable

    errors: list[str] = []
    section: dict[str, Any] = {}
    for part, path in zip(SPLIT_PARTS, split_paths(onnx_path)):
        entry: dict[str, Any] = {"path": str(path), "size_bytes": path.stat().st_size}
        try:
            checks.run_onnx_checker(path)
            entry["onnx_checker"] = "passed"
        except checks.CheckError as e:
            entry["onnx_checker"] = str(e)
            errors.append(f"{part}: {e}")
        entry["io_shapes"] = checks.io_shapes(path)
        op_check = checks.check_tensorrt_ops(path)
        entry["op_check"] = to_jsonable(op_check)
        if not op_check.ok:
            errors.append(f"{part}: ops outside the TensorRT allow-list: {op_check.violations}")
        section[part] = entry
    try:
        parity = checks.check_split_parity(
            model, onnx_path, pairs, atol=atol, min_match_agreement=min_match_agreement
        )
        section["parity"] = to_jsonable(parity)
        if not parity["ok"]:
            vs = parity["vs_pytorch"]
            errors.append(
                f"split export / PyTorch parity failed: match_confidence max diff "
                f"{vs.match_confidence_max_abs_diff:.2e} (atol {atol}), match_ids equal "
                f"{vs.match_ids_equal_fraction:.4f} (min {min_match_agreement})"
            )
    except Exception as e:
        errors.append(f"split parity check could not run: {type(e).__name__}: {e}")
    section["errors"] = errors
    return section
