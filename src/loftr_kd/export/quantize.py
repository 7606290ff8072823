"""onnxruntime static INT8 quantisation for CPUs, and its speed/precision change against fp32.

Format: QDQ (QuantizeLinear/DequantizeLinear pairs around float ops), the format onnxruntime
recommends for CPU and the one TensorRT also reads; QOperator (QLinearConv, ...) is CPU-only.
Weights are quantised per output channel (symmetric int8); activations per tensor with MinMax
calibration on image pairs from the training data. Only Conv/MatMul/Gemm are quantised by default:
the dual-softmax and the mutual nearest-neighbour selection stay in float, since quantising
probabilities near the match threshold changes which cells match.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from loftr_kd.export.checks import read_metadata
from loftr_kd.metrics import MatchStats, homography_match_stats
from loftr_kd.runtime.sessions import time_interleaved

DEFAULT_OP_TYPES = ("Conv", "MatMul", "Gemm")


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def iter_pairs_from_batches(batches: Iterable[dict[str, Any]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Turn DataLoader batches (``image0``/``image1`` (B,1,H,W)) into single (H, W) pairs."""
    for batch in batches:
        a, b = _to_numpy(batch["image0"]), _to_numpy(batch["image1"])
        for i in range(a.shape[0]):
            yield a[i].reshape(a.shape[-2:]), b[i].reshape(b.shape[-2:])


class PairCalibrationReader(CalibrationDataReader):
    """``CalibrationDataReader`` over image pairs (or DataLoader batches), shaped for the graph.

    Args:
        pairs: iterable of ``(image0, image1, ...)`` with (H, W) or (1, H, W) images in [0, 1], or of
            batch dicts with ``image0``/``image1`` (B, 1, H, W) (a ``PairDataModule`` DataLoader).
        batch: batch size of the graph's inputs (pairs are repeated to fill a static batch > 1).
        max_pairs: stop after this many pairs.
    """

    def __init__(self, pairs: Iterable, *, batch: int = 1, max_pairs: int = 32) -> None:
        self.batch = batch
        # Materialised up front (a few dozen pairs): onnxruntime's calibrators may ask for len().
        self._pairs: list[tuple[np.ndarray, np.ndarray]] = []
        for item in pairs:
            items = iter_pairs_from_batches([item]) if isinstance(item, dict) else [item]
            for a, b, *_ in items:
                if len(self._pairs) >= max_pairs:
                    break
                a, b = _to_numpy(a), _to_numpy(b)
                self._pairs.append((a.reshape(a.shape[-2:]), b.reshape(b.shape[-2:])))
            if len(self._pairs) >= max_pairs:
                break
        self._index = 0

    def __len__(self) -> int:
        return len(self._pairs)

    def rewind(self) -> None:
        self._index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= len(self._pairs):
            return None
        a, b = self._pairs[self._index]
        self._index += 1
        return {
            "image0": np.repeat(a[None, None], self.batch, axis=0),
            "image1": np.repeat(b[None, None], self.batch, axis=0),
        }

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime's quantiser logs every copied bias at INFO on the root logger (which Hydra enables)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _graph_batch(path: str | Path) -> int:
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims[0].HasField("dim_value") else 1


def quantize_int8(
    onnx_path: str | Path,
    out_path: str | Path,
    calibration: Iterable,
    *,
    per_channel: bool = True,
    quant_format: str = "QDQ",
    op_types: Sequence[str] | None = DEFAULT_OP_TYPES,
    calibrate_method: str = "MinMax",
    activation_type: str = "QUInt8",
    nodes_to_exclude: Sequence[str] | None = None,
    max_pairs: int = 32,
    preprocess: bool = True,
) -> Path:
    """Static INT8 quantisation with onnxruntime, calibrated on image pairs.

    Args:
        onnx_path: fp32 graph from ``export_onnx``.
        out_path: destination of the INT8 graph (metadata of the fp32 graph copied, plus ``quantization``).
        calibration: pairs or DataLoader batches (see ``PairCalibrationReader``).
        per_channel: per-output-channel weight scales.
        quant_format: ``"QDQ"`` (default) or ``"QOperator"``.
        op_types: op types to quantise (None = onnxruntime's default set).
        calibrate_method: ``MinMax``, ``Entropy`` or ``Percentile``.
        activation_type: ``QUInt8`` (u8 activations x s8 weights, the fast path of onnxruntime's x86
            kernels on AVX2/AVX512) or ``QInt8``.
        nodes_to_exclude: node names kept in float (e.g. the full-resolution stem).
        max_pairs: calibration pairs used.
        preprocess: run onnxruntime's ``quant_pre_process`` (shape inference, graph optimisation) first.

    Returns:
        ``out_path``.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    reader = PairCalibrationReader(calibration, batch=_graph_batch(onnx_path), max_pairs=max_pairs)
    if len(reader) == 0:
        raise ValueError("no calibration pairs were given")
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp, _quiet_root_logger():
        source = onnx_path
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            source = Path(tmp) / "preprocessed.onnx"
            quant_pre_process(str(onnx_path), str(source), skip_symbolic_shape=True)
        staged = Path(tmp) / "int8.onnx"
        quantize_static(
            str(source),
            str(staged),
            reader,
            quant_format=QuantFormat.QDQ if quant_format.upper() == "QDQ" else QuantFormat.QOperator,
            op_types_to_quantize=list(op_types) if op_types else None,
            per_channel=per_channel,
            activation_type=getattr(QuantType, activation_type),
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, calibrate_method),
            nodes_to_exclude=list(nodes_to_exclude) if nodes_to_exclude else None,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        proto = onnx.load(str(staged))
        metadata = read_metadata(onnx_path)
        metadata["quantization"] = json.dumps(
            {
                "format": quant_format.upper(),
                "per_channel": per_channel,
                "op_types": list(op_types) if op_types else None,
                "calibrate_method": calibrate_method,
                "activation_type": activation_type,
                "calibration_pairs": len(reader),
            }
        )
        del proto.metadata_props[:]
        for k, v in metadata.items():
            proto.metadata_props.add(key=k, value=v)
        tmp_out = Path(tmp) / "final.onnx"
        onnx.save(proto, str(tmp_out))
        tmp_out.replace(out_path)
    return out_path


def compare_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    pairs: Sequence[tuple],
    *,
    threads: int | None = None,
    iters: int = 10,
    warmup: int = 2,
) -> dict[str, Any]:
    """Speed-up and match change of the INT8 graph against fp32 on validation pairs.

    ``pairs`` are ``(image0, image1)`` or ``(image0, image1, H_0to1)``. With homographies, match
    match quality against ground truth is reported for both (``homography_match_stats``, the
    metrics of :mod:`loftr_kd.metrics`);
    ``agreement`` (fraction of cells with the same match index as fp32) is always reported. Both graphs
    run through the onnxruntime backend (:class:`~loftr_kd.runtime.onnx_backend.OnnxBackend`).
    """
    from loftr_kd.runtime.backend import MatcherError
    from loftr_kd.runtime.onnx_backend import OnnxBackend

    try:
        fp32 = OnnxBackend(fp32_path, threads=threads)
        int8 = OnnxBackend(int8_path, threads=threads)
    except MatcherError as err:  # not an exported student (no student_config metadata ...): bad input
        raise ValueError(str(err)) from err
    stride = fp32.geometry.stride
    same = total = 0
    stats = {"fp32": MatchStats(), "int8": MatchStats()}
    has_gt = all(len(p) >= 3 and p[2] is not None for p in pairs)
    feeds = None
    for pair in pairs:
        a, b = _to_numpy(pair[0]), _to_numpy(pair[1])
        a, b = a.reshape(a.shape[-2:]), b.reshape(b.shape[-2:])
        feeds = fp32.feed(a[None, None], b[None, None])  # a static batch is filled by repeating the pair
        outputs = {"fp32": fp32.run(feeds), "int8": int8.run(feeds)}
        same += int((outputs["fp32"].match_ids[0] == outputs["int8"].match_ids[0]).sum())
        total += outputs["fp32"].match_ids[0].size
        if has_gt:
            for key, out in outputs.items():
                stats[key] = stats[key] + homography_match_stats(
                    out.match_ids[0], out.points0[0], out.points1[0], pair[2], a.shape[0], a.shape[1], stride
                )
    times = time_interleaved(
        {"fp32": lambda: fp32.run(feeds), "int8": lambda: int8.run(feeds)}, iters, warmup
    )
    m32, m8 = (statistics.median(times[key]["wall_ms"]) for key in ("fp32", "int8"))
    result: dict[str, Any] = {
        "pairs": len(pairs),
        "threads": threads,
        "fp32_median_ms": m32,
        "int8_median_ms": m8,
        "speedup": m32 / m8 if m8 > 0 else None,
        "agreement_with_fp32": same / max(total, 1),
        "matches_fp32": stats["fp32"].count("predicted") if has_gt else None,
        "matches_int8": stats["int8"].count("predicted") if has_gt else None,
        "precision_basis": (
            "homography ground truth: loftr_kd.metrics (end-point error of the match position; precision "
            "at 5 px, also at 1 / 3 px)"
            if has_gt
            else "no ground truth given: agreement with fp32 only"
        ),
    }
    if has_gt:
        s32, s8 = stats["fp32"].summary(), stats["int8"].summary()
        p32 = s32["precision"] if stats["fp32"].count("judged") else None
        p8 = s8["precision"] if stats["int8"].count("judged") else None
        result.update(
            precision_fp32=p32,
            precision_int8=p8,
            precision_change=(p8 - p32) if p32 is not None and p8 is not None else None,
            metrics_fp32=s32,
            metrics_int8=s8,
        )
    return result
