"""onnxruntime static INT8 quantisation (loftr_kd.export.quantize)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from loftr_kd.data.homography import real_image_pairs
from loftr_kd.export import checks
from loftr_kd.export.onnx import export_onnx
from loftr_kd.export.quantize import PairCalibrationReader, compare_int8, quantize_int8
from loftr_kd.models.student import build_student

H, W = 64, 96


def test_calibration_reader_from_pairs_and_batches():
    pairs = [(np.zeros((H, W)), np.ones((1, H, W)))] * 3
    feeds = list(PairCalibrationReader(pairs, batch=2, max_pairs=2))
    assert len(feeds) == 2 and feeds[0]["image0"].shape == (2, 1, H, W)
    assert feeds[0]["image1"].dtype == np.float32 and feeds[0]["image1"].max() == 1.0
    batches = [
        {"image0": torch.zeros(3, 1, H, W), "image1": torch.ones(3, 1, H, W), "pair_id": ["a", "b", "c"]}
    ]
    assert len(list(PairCalibrationReader(batches, max_pairs=10))) == 3


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    model = build_student(input_height=H, input_width=W, border_removal=0).eval()
    fp32 = export_onnx(model, root / "m.onnx")
    calibration = [(a, b) for a, b, _ in real_image_pairs(H, W, 2, seed=1)]
    int8 = quantize_int8(fp32, root / "m.int8.onnx", calibration)
    return fp32, int8


def test_quantize_writes_qdq_graph_with_metadata(quantized):
    fp32, int8 = quantized
    hist = checks.op_histogram(int8)
    assert hist.get("QuantizeLinear", 0) > 0 and hist.get("DequantizeLinear", 0) > 0
    assert "Softmax" in hist  # left in float on purpose
    meta = checks.read_metadata(int8)
    assert json.loads(meta["student_config"]) == json.loads(checks.read_metadata(fp32)["student_config"])
    assert json.loads(meta["quantization"])["format"] == "QDQ"
    checks.run_onnx_checker(int8)


def test_compare_int8_reports_speed_and_precision(quantized):
    fp32, int8 = quantized
    pairs = real_image_pairs(H, W, 2, seed=2)
    result = compare_int8(fp32, int8, pairs, threads=1, iters=2, warmup=1)
    assert result["speedup"] > 0 and 0.0 <= result["agreement_with_fp32"] <= 1.0
    assert "homography" in result["precision_basis"] and "precision_change" in result
    no_gt = compare_int8(fp32, int8, [(a, b) for a, b, _ in pairs], threads=1, iters=1, warmup=0)
    assert "agreement with fp32 only" in no_gt["precision_basis"] and "precision_fp32" not in no_gt


def test_quantize_without_calibration_pairs_fails(quantized, tmp_path):
    fp32, _ = quantized
    with pytest.raises(ValueError):
        quantize_int8(fp32, tmp_path / "x.onnx", [])


def test_int8_of_a_refining_student_keeps_its_refined_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_student(input_height=H, input_width=W, border_removal=0, refine="corr").eval()
    fp32 = export_onnx(model, tmp_path / "r.onnx")
    calibration = [(a, b) for a, b, _ in real_image_pairs(H, W, 2, seed=1)]
    int8 = quantize_int8(fp32, tmp_path / "r.int8.onnx", calibration)
    assert "points1" in checks.io_shapes(int8)["outputs"]
    result = compare_int8(fp32, int8, real_image_pairs(H, W, 2, seed=2), threads=1, iters=1, warmup=0)
    assert "precision@1px" in result["metrics_int8"] and "epe_median_px" in result["metrics_fp32"]
