"""Checks run on every exported graph: ONNX checker, TensorRT op allow-list, onnxruntime parity, report.

The allow-list is derived from the onnx-tensorrt operator support matrix (``docs/operators.md`` of
onnx/onnx-tensorrt): every operator marked supported there, minus the ones this project refuses on
purpose (control flow, data-dependent shapes, Einsum — see ``FORBIDDEN_OPS``), plus the opset-17 ops
that TensorRT >= 8.6 parses natively (``LayerNormalization`` ...). Keeping to the TensorRT 8.x subset
means an engine can also be built on a Jetson whose JetPack is stuck on an older TensorRT.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

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
    points_atol_px: float = 0.01

    @property
    def ok(self) -> bool:
        diffs = [self.match_confidence_max_abs_diff]
        if self.confidence_max_abs_diff is not None:
            diffs.append(self.confidence_max_abs_diff)
        points_ok = (
            self.points1_max_abs_diff_px is None or self.points1_max_abs_diff_px <= self.points_atol_px
        )
        return (
            all(d <= self.atol for d in diffs)
            and self.match_ids_equal_fraction >= self.min_match_agreement
            and points_ok
        )


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _all_nodes(graph: onnx.GraphProto):
    """Nodes of a graph and of every subgraph (If/Loop bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_nodes(sub)


def op_histogram(model: onnx.ModelProto | str | Path) -> dict[str, int]:
    """Count of each op type (``domain::Op`` outside the default domain), subgraphs included."""
    counts: Counter[str] = Counter()
    for node in _all_nodes(_load(model).graph):
        name = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[name] += 1
    return dict(sorted(counts.items()))


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


def read_metadata(model: onnx.ModelProto | str | Path) -> dict[str, str]:
    """The ``metadata_props`` of a model as a dict."""
    return {p.key: p.value for p in _load(model).metadata_props}


def onnxruntime_session(
    path: str | Path,
    *,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
    spinning: bool = True,
):
    """An onnxruntime session with a fixed intra-op thread count (None = onnxruntime's default).

    ``spinning=False`` stops the intra-op threads from busy-waiting after a run (onnxruntime's
    ``session.intra_op.allow_spinning``): needed when several sessions are timed in turn on few cores,
    where an idle session's spinning threads would steal the next one's.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


def check_parity(
    model,
    onnx_path: str | Path,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    atol: float = 1e-4,
    min_match_agreement: float = 0.99,
    batch: int | None = None,
) -> ParityResult:
    """Run PyTorch and onnxruntime on the same pairs and compare.

    Args:
        model: the student (``forward(image0, image1) -> CoarseMatchOutput``), on CPU.
        onnx_path: exported graph (inputs ``image0``/``image1``).
        pairs: grayscale pairs, each image (H, W) float32 in [0, 1] at the export size.
        atol: tolerance on confidences (probabilities in [0, 1]); float32 reorderings give ~1e-6.
        min_match_agreement: minimum fraction of cells whose match index is identical; a cell whose
            best score sits on the threshold can flip, so exact 1.0 is not required.
        batch: batch of a static graph (read from the graph when None); pairs are repeated to fill it.

    Returns:
        ``ParityResult``; check ``.ok``.
    """
    import torch

    if not pairs:
        raise ValueError("check_parity needs at least one image pair")
    session = onnxruntime_session(onnx_path)
    input_dims = session.get_inputs()[0].shape
    if batch is None:
        batch = input_dims[0] if isinstance(input_dims[0], int) else 1
    output_names = [o.name for o in session.get_outputs()]
    conf_diff = 0.0
    full_diff: float | None = 0.0 if "confidence" in output_names else None
    points_diff: float | None = 0.0 if "points1" in output_names else None
    equal = total = n_torch = n_onnx = 0
    model = model.eval()
    for image0, image1 in pairs:
        a = np.repeat(np.asarray(image0, np.float32)[None, None], batch, axis=0)
        b = np.repeat(np.asarray(image1, np.float32)[None, None], batch, axis=0)
        with torch.inference_mode():
            ref = model(torch.from_numpy(a), torch.from_numpy(b))
        got = dict(zip(output_names, session.run(None, {"image0": a, "image1": b})))
        ids_ref = ref.match_ids.numpy().astype(np.int64)
        ids_got = got["match_ids"].astype(np.int64)
        conf_diff = max(
            conf_diff, float(np.abs(ref.match_confidence.numpy() - got["match_confidence"]).max())
        )
        if full_diff is not None:
            full_diff = max(full_diff, float(np.abs(ref.confidence.numpy() - got["confidence"]).max()))
        if points_diff is not None:
            both = (ids_ref >= 0) & (ids_got >= 0) & (ids_ref == ids_got)
            if both.any():
                diff = np.abs(ref.points1.numpy() - got["points1"])[both]
                points_diff = max(points_diff, float(diff.max()))
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
    )


def to_jsonable(value: Any) -> Any:
    """Dataclasses (with their ``ok``), paths and numpy scalars to plain JSON types."""
    if hasattr(value, "__dataclass_fields__"):
        d = asdict(value)
        if hasattr(value, "ok"):
            d["ok"] = value.ok
        return to_jsonable(d)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def report_markdown(report: dict[str, Any]) -> str:
    """Readable rendering of an export report."""
    lines = [f"# Export report: {Path(str(report.get('onnx_path', '?'))).name}", ""]
    lines.append(f"- status: **{'OK' if report.get('ok') else 'FAILED'}**")
    for key in ("onnx_path", "checkpoint", "opset", "dynamic", "parameter_count", "loftr_kd_version"):
        if key in report:
            lines.append(f"- {key}: `{report[key]}`")
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
    return "\n".join(lines) + "\n"


def write_report(path: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report`` as JSON at ``path`` and as Markdown beside it (``.md``); returns both paths."""
    path = Path(path)
    data = to_jsonable(report)
    json_path = atomic_write_text(path.with_suffix(".json"), json.dumps(data, indent=2) + "\n")
    md_path = atomic_write_text(path.with_suffix(".md"), report_markdown(data))
    return json_path, md_path


def real_image_pairs(
    height: int, width: int, n: int = 4, *, seed: int = 0, max_angle_deg: float = 20.0, max_scale: float = 1.3
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Real photos (scikit-image's bundled set, offline) paired with a random homography warp.

    Returns:
        ``n`` tuples ``(image0, image1, H_0to1)``: images (height, width) float32 in [0, 1], and the
        3x3 homography mapping image0 pixels to image1 pixels.
    """
    import cv2
    import skimage.data

    names = ["camera", "astronaut", "coffee", "chelsea", "rocket", "brick", "coins", "moon"]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = getattr(skimage.data, names[i % len(names)])()
        if img.ndim == 3:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
        image0 = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        angle = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg))
        scale = np.exp(rng.uniform(-np.log(max_scale), np.log(max_scale)))
        cx, cy = (width - 1) / 2, (height - 1) / 2
        c, s = scale * np.cos(angle), scale * np.sin(angle)
        centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
        back = np.array(
            [
                [1, 0, cx + rng.uniform(-0.05, 0.05) * width],
                [0, 1, cy + rng.uniform(-0.05, 0.05) * height],
                [0, 0, 1],
            ]
        )
        similarity = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        perspective = np.eye(3)
        perspective[2, :2] = rng.uniform(-2e-4, 2e-4, 2) * 640 / max(width, height)
        h_0to1 = back @ perspective @ similarity @ centre
        h_0to1 /= h_0to1[2, 2]
        image1 = cv2.warpPerspective(image0, h_0to1, (width, height), flags=cv2.INTER_LINEAR)
        out.append((image0, image1.astype(np.float32), h_0to1.astype(np.float32)))
    return out
