"""Checks run on every exported graph: ONNX checker, TensorRT op allow-list, onnxruntime parity, report.

The allow-list is derived from the onnx-tensorrt operator support matrix (``docs/operators.md`` of
onnx/onnx-tensorrt): every operator marked supported there, minus the ones this project refuses on
purpose (control flow, data-dependent shapes, Einsum — see ``FORBIDDEN_OPS``), plus the opset-17 ops
that TensorRT >= 8.6 parses natively (``LayerNormalization`` ...). It checks operator names only, not the
opset or the input types: an opset-17 export needs TensorRT 8.6+; an older TensorRT (a Jetson Nano's 8.2)
needs an ``opset=13`` export, which has not been tried on one (docs/deployment.md, "Which TensorRT").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from loftr_kd.files import to_jsonable, write_json, write_text
from loftr_kd.runtime.sessions import load_model as _load
from loftr_kd.runtime.sessions import op_histogram, ort_session, read_metadata

# re-exported: long-standing import paths
__all__ = ["op_histogram", "ort_session", "read_metadata", "to_jsonable"]

# Operators the TensorRT ONNX parser supports (onnx-tensorrt support matrix, TensorRT 8.4+), plus the
# opset 17/18 normalisation ops TensorRT 8.6+ parses. Ops outside this set make the parse fail or
# need a plugin.
TENSORRT_SUPPORTED_OPS: frozenset[str] = frozenset(
    [
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "CastLike",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumSum",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gelu",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GroupNormalization",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "InstanceNormalization",
        "IsNaN",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "LpNormalization",
        "LpPool",
        "LRN",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "Min",
        "Mish",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "Pad",
        "ParametricSoftplus",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "Range",
        "Reciprocal",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "Round",
        "ScaledTanh",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "Shape",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Unsqueeze",
        "Upsample",
        "Where",
        "Xor",
    ]
)

# Ops refused even where some TensorRT version parses them, with the reason shown in the report.
FORBIDDEN_OPS: dict[str, str] = {
    "Einsum": "TensorRT parses only a subset (no ellipsis/diagonal/broadcast); use MatMul",
    "NonZero": "data-dependent output shape; unsupported by TensorRT 8.x, slow elsewhere",
    "Loop": "control flow: TensorRT runs it as a slow loop layer, often rejects dynamic trip counts",
    "Scan": "control flow with data-dependent iteration",
    "Unique": "data-dependent output shape; unsupported by the TensorRT parser",
    "Compress": "data-dependent output shape; unsupported by the TensorRT parser",
    "SequenceConstruct": "sequence types are unsupported by the TensorRT parser",
    "SequenceAt": "sequence types are unsupported by the TensorRT parser",
    "SplitToSequence": "sequence types are unsupported by the TensorRT parser",
    "ConcatFromSequence": "sequence types are unsupported by the TensorRT parser",
    "Hardmax": "unsupported by the TensorRT parser",
    "OneHot": "unsupported by TensorRT 8.x",
    "Mod": "unsupported by TensorRT 8.x",
    "IsInf": "unsupported by TensorRT 8.x",
    "ConvInteger": "integer ops: use QDQ (QuantizeLinear/DequantizeLinear) for TensorRT INT8",
    "MatMulInteger": "integer ops: use QDQ (QuantizeLinear/DequantizeLinear) for TensorRT INT8",
    "QLinearConv": "QOperator format: use QDQ for TensorRT INT8",
    "QLinearMatMul": "QOperator format: use QDQ for TensorRT INT8",
    "DynamicQuantizeLinear": "unsupported by the TensorRT parser",
}

# `If` is accepted by TensorRT when both branches have broadcastable static shapes; with dynamic
# input shapes it is a common parse failure, so it is only flagged then.
CONDITIONAL_OPS: dict[str, str] = {
    "If": "conditional with dynamic input shapes: TensorRT needs broadcastable static branch shapes",
}


# Two runtimes agree on a refined match position when they differ by at most this (pixels).
POINTS_ATOL_PX = 0.01


class CheckError(RuntimeError):
    """Raised when an exported graph fails a check."""


@dataclass(frozen=True)
class OpCheck:
    """Result of the TensorRT op allow-list check."""

    histogram: dict[str, int]
    violations: dict[str, str]  # op -> reason
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass(frozen=True)
class ParityResult:
    """onnxruntime vs PyTorch on the same pairs."""

    pairs: int
    match_confidence_max_abs_diff: float
    confidence_max_abs_diff: float | None  # only when the graph exports the confidence matrix
    match_ids_equal_fraction: float
    matches_torch: int
    matches_onnx: int
    atol: float
    min_match_agreement: float
    # largest |points1| difference (px) over cells matched in both runtimes; None for older graphs
    points1_max_abs_diff_px: float | None = None
    points_atol_px: float = POINTS_ATOL_PX
    # fraction of those cells whose points1 agree within points_atol_px. The refinement's local
    # expectation is centred on an ArgMax: where two window positions tie to float32 rounding, one
    # runtime may pick the other and that one cell moves by a fine pixel or more, so the bar is a
    # fraction (min_match_agreement), like match_ids, not the maximum.
    points1_equal_fraction: float | None = None

    @property
    def ok(self) -> bool:
        diffs = [self.match_confidence_max_abs_diff]
        if self.confidence_max_abs_diff is not None:
            diffs.append(self.confidence_max_abs_diff)
        if self.points1_equal_fraction is not None:
            points_ok = self.points1_equal_fraction >= self.min_match_agreement
        else:
            points_ok = (
                self.points1_max_abs_diff_px is None or self.points1_max_abs_diff_px <= self.points_atol_px
            )
        return (
            all(d <= self.atol for d in diffs)
            and self.match_ids_equal_fraction >= self.min_match_agreement
            and points_ok
        )


def has_dynamic_inputs(model: onnx.ModelProto | str | Path) -> bool:
    """True if any graph input has a symbolic or unknown dimension."""
    for inp in _load(model).graph.input:
        for dim in inp.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                return True
    return False


def check_tensorrt_ops(model: onnx.ModelProto | str | Path) -> OpCheck:
    """Check every op against the TensorRT parser allow-list.

    Returns:
        ``OpCheck`` with the histogram, the violations (op -> reason) and softer warnings (INT64
        initializers, which TensorRT < 10 casts down to INT32).
    """
    proto = _load(model)
    histogram = op_histogram(proto)
    dynamic = has_dynamic_inputs(proto)
    violations: dict[str, str] = {}
    for op in histogram:
        if op in FORBIDDEN_OPS:
            violations[op] = FORBIDDEN_OPS[op]
        elif op in CONDITIONAL_OPS:
            if dynamic:
                violations[op] = CONDITIONAL_OPS[op]
        elif op not in TENSORRT_SUPPORTED_OPS:
            violations[op] = "not in the onnx-tensorrt supported-operator matrix"
    warnings = []
    if "If" in histogram and not dynamic:
        warnings.append("graph contains If (accepted with static shapes, but check it is needed)")
    int64_weights = [
        init.name
        for init in proto.graph.initializer
        if init.data_type == onnx.TensorProto.INT64 and int(np.prod(init.dims or [1])) > 1
    ]
    if int64_weights:
        warnings.append(
            f"{len(int64_weights)} INT64 initializer(s) with more than one element "
            "(TensorRT < 10 casts them to INT32)"
        )
    return OpCheck(histogram=histogram, violations=violations, warnings=warnings)


def run_onnx_checker(model: onnx.ModelProto | str | Path) -> None:
    """``onnx.checker`` with full shape inference; raises ``CheckError`` with the checker's message."""
    try:
        if isinstance(model, onnx.ModelProto):
            onnx.checker.check_model(model, full_check=True)
        else:
            # The path form also handles models with external data.
            onnx.checker.check_model(str(model), full_check=True)
    except onnx.checker.ValidationError as e:  # type: ignore[attr-defined]
        raise CheckError(f"onnx.checker rejected the graph: {e}") from e
    except onnx.shape_inference.InferenceError as e:  # type: ignore[attr-defined]
        raise CheckError(f"ONNX shape inference failed: {e}") from e


def io_shapes(model: onnx.ModelProto | str | Path) -> dict[str, dict[str, Any]]:
    """Inputs and outputs with their dtype and shape (symbolic dims by name)."""
    proto = _load(model)

    def describe(values) -> dict[str, Any]:
        out = {}
        for v in values:
            tt = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
            out[v.name] = {"dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name, "shape": dims}
        return out

    return {"inputs": describe(proto.graph.input), "outputs": describe(proto.graph.output)}


def parameter_count(model: onnx.ModelProto | str | Path) -> int:
    """Number of float parameters stored as initializers (weights, biases, folded constants)."""
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    return int(
        sum(
            int(np.prod(i.dims)) if i.dims else 1
            for i in _load(model).graph.initializer
            if i.data_type in floats
        )
    )


def check_parity(
    model,
    onnx_path: str | Path,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    atol: float = 1e-4,
    min_match_agreement: float = 0.99,
    batch: int | None = None,
) -> ParityResult:
    """Run PyTorch and onnxruntime on the same pairs and compare (both through :mod:`loftr_kd.runtime`'s
    backends, onnxruntime at its default threads, PyTorch at the caller's).

    Args:
        model: the student (``forward(image0, image1) -> CoarseMatchOutput``), on CPU.
        onnx_path: exported graph (inputs ``image0``/``image1``, ``loftr-kd-export`` metadata).
        pairs: grayscale pairs, each image (H, W) float32 in [0, 1] at the export size.
        atol: tolerance on confidences (probabilities in [0, 1]); float32 reorderings give ~1e-6.
        min_match_agreement: minimum fraction of cells whose match index is identical; a cell whose
            best score sits on the threshold can flip, so exact 1.0 is not required.
        batch: batch of a static graph (read from the graph when None); pairs are repeated to fill it.

    Returns:
        ``ParityResult``; check ``.ok``.
    """
    from loftr_kd.runtime.onnx_backend import OnnxBackend
    from loftr_kd.runtime.torch_backend import TorchBackend

    onnx_backend = OnnxBackend(onnx_path, with_confidence=True)
    with_confidence = "confidence" in onnx_backend.output_names  # exported with_confidence=True
    torch_backend = TorchBackend(model, with_confidence=with_confidence)
    batch = onnx_backend.geometry.batch if batch is None else batch
    return _compare(
        lambda a, b: torch_backend.run(torch_backend.feed(a, b)),
        lambda a, b: onnx_backend.run(onnx_backend.feed(a, b)),
        pairs,
        batch=batch,
        atol=atol,
        min_match_agreement=min_match_agreement,
        compare_points="points1" in onnx_backend.output_names,  # older graphs: cell centres, not compared
    )


def check_split_parity(
    model,
    onnx_path: str | Path,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    atol: float = 1e-4,
    min_match_agreement: float = 0.99,
) -> dict[str, Any]:
    """The split export beside ``onnx_path`` (encoder, then matcher) against PyTorch, as :func:`check_parity`
    checks the whole graph, and against the whole graph itself.

    Returns:
        ``{"vs_pytorch": ParityResult, "pairs_identical_to_whole_graph": fraction of pairs whose outputs
        are bit for bit the whole graph's, "max_abs_diff_vs_whole_graph": largest difference of any
        output, "ok": the PyTorch parity's}``.
    """
    from loftr_kd.runtime.onnx_backend import OnnxBackend
    from loftr_kd.runtime.torch_backend import TorchBackend

    onnx_backend = OnnxBackend(onnx_path)
    torch_backend = TorchBackend(model)
    identical, largest = 0, 0.0

    def split(a: np.ndarray, b: np.ndarray):
        nonlocal identical, largest
        got = onnx_backend.match(onnx_backend.encode(a), onnx_backend.encode(b))
        whole = onnx_backend.run(onnx_backend.feed(a, b))
        fields = [(x, y) for x, y in zip(got, whole) if x is not None and y is not None]
        identical += all(np.array_equal(x, y) for x, y in fields)
        largest = max(
            [largest] + [float(np.abs(x.astype(np.float64) - y).max()) for x, y in fields if x.size]
        )
        return got

    parity = _compare(
        lambda a, b: torch_backend.run(torch_backend.feed(a, b)),
        split,
        pairs,
        batch=1,
        atol=atol,
        min_match_agreement=min_match_agreement,
    )
    return {
        "vs_pytorch": parity,
        "pairs_identical_to_whole_graph": identical / len(pairs),
        "max_abs_diff_vs_whole_graph": largest,
        "ok": parity.ok,
    }


def _compare(
    reference: Callable[[np.ndarray, np.ndarray], Any],
    candidate: Callable[[np.ndarray, np.ndarray], Any],
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    batch: int,
    atol: float,
    min_match_agreement: float,
    compare_points: bool = True,
) -> ParityResult:
    """Two runs of a student (``(B, 1, H, W)`` pairs -> ``ModelOutputs``) on the same pairs, compared."""
    if not pairs:
        raise ValueError("check_parity needs at least one image pair")
    conf_diff = 0.0
    full_diff: float | None = None
    points_diff: float | None = None
    points_close = points_total = 0
    equal = total = n_torch = n_onnx = 0
    for image0, image1 in pairs:
        a = np.repeat(np.asarray(image0, np.float32)[None, None], batch, axis=0)
        b = np.repeat(np.asarray(image1, np.float32)[None, None], batch, axis=0)
        ref = reference(a, b)
        got = candidate(a, b)
        ids_ref, ids_got = ref.match_ids, got.match_ids
        conf_diff = max(conf_diff, float(np.abs(ref.match_confidence - got.match_confidence).max()))
        if ref.confidence is not None and got.confidence is not None:
            full_diff = max(full_diff or 0.0, float(np.abs(ref.confidence - got.confidence).max()))
        if compare_points:
            points_diff = points_diff or 0.0
            both = (ids_ref >= 0) & (ids_got >= 0) & (ids_ref == ids_got)
            if both.any():
                diff = np.abs(ref.points1 - got.points1)[both].max(-1)
                points_diff = max(points_diff, float(diff.max()))
                points_close += int((diff <= POINTS_ATOL_PX).sum())
                points_total += int(diff.size)
        equal += int((ids_ref == ids_got).sum())
        total += ids_ref.size
        n_torch += int((ids_ref[0] >= 0).sum())
        n_onnx += int((ids_got[0] >= 0).sum())
    return ParityResult(
        pairs=len(pairs),
        match_confidence_max_abs_diff=conf_diff,
        confidence_max_abs_diff=full_diff,
        match_ids_equal_fraction=equal / max(total, 1),
        matches_torch=n_torch,
        matches_onnx=n_onnx,
        atol=atol,
        min_match_agreement=min_match_agreement,
        points1_max_abs_diff_px=points_diff,
        points1_equal_fraction=points_close / points_total if points_total else None,
    )


def report_markdown(report: dict[str, Any]) -> str:
    """Readable rendering of an export report."""
    lines = [f"# Export report: {Path(str(report.get('onnx_path', '?'))).name}", ""]
    lines.append(f"- status: **{'OK' if report.get('ok') else 'FAILED'}**")
    for key in ("onnx_path", "checkpoint", "opset", "dynamic", "parameter_count", "loftr_kd_version"):
        if key in report:
            lines.append(f"- {key}: `{report[key]}`")
    threads = report.get("threads")
    if threads:
        ort_threads = threads.get("onnxruntime") or "its default (all cores)"
        lines.append(f"- CPU threads: torch {threads.get('torch')}, onnxruntime {ort_threads}")
    if report.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e}" for e in report["errors"]]
    shapes = report.get("io_shapes") or {}
    if shapes:
        lines += [
            "",
            "## Inputs and outputs",
            "",
            "| kind | name | dtype | shape |",
            "| --- | --- | --- | --- |",
        ]
        for kind in ("inputs", "outputs"):
            for name, info in shapes.get(kind, {}).items():
                lines.append(f"| {kind[:-1]} | `{name}` | {info['dtype']} | {info['shape']} |")
    ops = report.get("op_check") or {}
    if ops:
        lines += ["", "## Ops (TensorRT allow-list)", ""]
        lines.append(f"- violations: {ops.get('violations') or 'none'}")
        for w in ops.get("warnings", []):
            lines.append(f"- warning: {w}")
        lines += ["", "| op | count |", "| --- | --- |"]
        lines += [f"| {op} | {n} |" for op, n in ops.get("histogram", {}).items()]
    parity = report.get("parity")
    if parity:
        lines += ["", "## onnxruntime vs PyTorch", "", "| figure | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in parity.items()]
    split = report.get("split")
    if split:
        lines += [
            "",
            "## Split export (encoder, matcher)",
            "",
            "| graph | bytes | onnx.checker | ops outside the allow-list |",
        ]
        lines += ["| --- | ---: | --- | --- |"]
        for part in ("encoder", "matcher"):
            entry = split.get(part) or {}
            violations = (entry.get("op_check") or {}).get("violations") or "none"
            lines.append(
                f"| `{Path(str(entry.get('path', '?'))).name}` | {entry.get('size_bytes', '?')} | "
                f"{entry.get('onnx_checker', '?')} | {violations} |"
            )
        split_parity = split.get("parity") or {}
        lines += ["", "| figure | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in split_parity.items() if k != "vs_pytorch"]
        lines += [f"| vs PyTorch: {k} | {v} |" for k, v in (split_parity.get("vs_pytorch") or {}).items()]
    return "\n".join(lines) + "\n"


def write_report(path: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report`` as JSON at ``path`` and as Markdown beside it (``.md``); returns both paths."""
    path = Path(path)
    data = to_jsonable(report)
    json_path = write_json(path.with_suffix(".json"), data)
    md_path = write_text(path.with_suffix(".md"), report_markdown(data))
    return json_path, md_path
