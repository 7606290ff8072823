"""ONNX export, TensorRT op allow-list, parity and report (loftr_kd.export.onnx / checks)."""

from __future__ import annotations

import json
from typing import NamedTuple

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from loftr_kd.checkpoints import CheckpointError
from loftr_kd.data.homography import real_image_pairs
from loftr_kd.export import checks
from loftr_kd.export.onnx import ExportError, _verify_dynamic_batch, export_onnx, export_student
from loftr_kd.models.student import build_student, save_student

H, W = 64, 96  # tiny: a 4x6 coarse grid at stride 16


def tiny_student():
    # border_removal 0 so that such a small grid can still produce matches.
    return build_student(input_height=H, input_width=W, border_removal=0).eval()


def _graph(op_type: str, dynamic: bool = False, **attrs) -> onnx.ModelProto:
    """A one-node graph ``y = op(x, x)`` (or ``op(x)``) built by hand."""
    dim0 = "batch" if dynamic else 1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim0, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inputs = ["x", "x"] if op_type in ("Add", "MatMul", "Einsum") else ["x"]
    node = helper.make_node(op_type, inputs, ["y"], **attrs)
    return helper.make_model(helper.make_graph([node], "g", [x], [y]))


# ---------------------------------------------------------------------------------------------------
# op allow-list on hand-built graphs


def test_allow_list_accepts_plain_ops():
    result = checks.check_tensorrt_ops(_graph("Add"))
    assert result.ok and result.histogram == {"Add": 1}


@pytest.mark.parametrize(
    "op, attrs", [("Einsum", {"equation": "ij,ij->ij"}), ("NonZero", {}), ("Unique", {})]
)
def test_allow_list_flags_forbidden_ops(op, attrs):
    result = checks.check_tensorrt_ops(_graph(op, **attrs))
    assert not result.ok
    assert op in result.violations and result.violations[op]


def test_allow_list_flags_unknown_and_custom_domain_ops():
    model = _graph("Relu")
    model.graph.node[0].domain = "com.microsoft"
    result = checks.check_tensorrt_ops(model)
    assert "com.microsoft::Relu" in result.violations


def _if_graph(dynamic: bool) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch" if dynamic else 1, 4])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    then_g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)
    return helper.make_model(helper.make_graph([node], "g", [x, cond], [y]))


def test_if_flagged_only_with_dynamic_shapes_and_subgraphs_counted():
    static = checks.check_tensorrt_ops(_if_graph(False))
    assert static.ok and static.warnings
    assert static.histogram == {"If": 1, "Neg": 1, "Relu": 1}  # subgraph ops are counted too
    dynamic = checks.check_tensorrt_ops(_if_graph(True))
    assert "If" in dynamic.violations


def test_onnx_checker_rejects_broken_graph():
    model = _graph("Add")
    model.graph.node[0].input[1] = "missing"
    with pytest.raises(checks.CheckError, match="onnx.checker"):
        checks.run_onnx_checker(model)


def test_write_report_json_and_markdown(tmp_path):
    op_check = checks.check_tensorrt_ops(_graph("Einsum", equation="ij,ij->ij"))
    report = {
        "onnx_path": "x.onnx",
        "ok": False,
        "op_check": op_check,
        "errors": ["bad"],
        "value": np.float32(1.5),
    }
    json_path, md_path = checks.write_report(tmp_path / "r.json", report)
    data = json.loads(json_path.read_text())
    assert data["op_check"]["ok"] is False and "Einsum" in data["op_check"]["violations"]
    assert data["value"] == 1.5
    text = md_path.read_text()
    assert "FAILED" in text and "| Einsum | 1 |" in text
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------------------------------------------
# real image pairs: the homography is the independent truth


def test_real_image_pairs_follow_their_homography():
    (image0, image1, h_0to1), *_ = real_image_pairs(120, 160, 1, seed=3)
    assert image0.shape == image1.shape == (120, 160) and image0.dtype == np.float32
    assert image0.min() >= 0.0 and image0.max() <= 1.0
    warped = cv2.warpPerspective(image0, h_0to1.astype(np.float64), (160, 120))
    valid = cv2.warpPerspective(np.ones_like(image0), h_0to1.astype(np.float64), (160, 120)) > 0.99
    assert valid.mean() > 0.3
    assert np.abs(warped - image1)[valid].max() < 1e-4


# ---------------------------------------------------------------------------------------------------
# export of the real student


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_student()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "student.onnx", with_confidence=True)
    return model, path


def test_export_outputs_shapes_dtypes_and_metadata(exported):
    model, path = exported
    shapes = checks.io_shapes(path)
    L = (H // 16) * (W // 16)
    assert shapes["inputs"]["image0"] == {"dtype": "float32", "shape": [1, 1, H, W]}
    assert shapes["outputs"]["match_ids"] == {"dtype": "int32", "shape": [1, L]}
    assert shapes["outputs"]["match_confidence"]["shape"] == [1, L]
    assert shapes["outputs"]["confidence"]["shape"] == [1, L, L]
    meta = checks.read_metadata(path)
    config = json.loads(meta["student_config"])
    assert config["input_height"] == H and config["coarse_stride"] == 16
    assert meta["match_ids_dtype"] == "int32" and meta["loftr_kd_version"]
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temp file left behind


def test_exported_student_passes_checker_and_allow_list(exported):
    _, path = exported
    checks.run_onnx_checker(path)
    result = checks.check_tensorrt_ops(path)
    assert result.ok, result.violations
    assert "Einsum" not in result.histogram and "NonZero" not in result.histogram


def test_parity_on_real_pairs(exported):
    model, path = exported
    pairs = [(a, b) for a, b, _ in real_image_pairs(H, W, 2)]
    parity = checks.check_parity(model, path, pairs)
    assert parity.ok
    assert parity.confidence_max_abs_diff is not None and parity.confidence_max_abs_diff < 1e-4
    assert parity.match_ids_equal_fraction == 1.0


def test_parity_detects_a_different_model(exported):
    _, path = exported
    other = tiny_student()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    pairs = [(a, b) for a, b, _ in real_image_pairs(H, W, 1)]
    assert not checks.check_parity(other, path, pairs).ok


def test_export_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        export_onnx(tiny_student(), tmp_path / "x.onnx", batch=0)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(tiny_student(), tmp_path / "x.onnx", exporter="dynamo", opset=17)


# ---------------------------------------------------------------------------------------------------
# dynamic batch: a batch size baked in at trace time must be caught


class _Out(NamedTuple):
    similarity: torch.Tensor
    confidence: torch.Tensor
    match_ids: torch.Tensor
    match_confidence: torch.Tensor


class _PairNet(nn.Module):
    """Shared conv on the concatenated pair, split back by ``split(batch)`` or ``chunk(2)``."""

    def __init__(self, use_chunk: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 16, stride=16)
        self.use_chunk = use_chunk

    def forward(self, image0, image1):
        feats = self.conv(torch.cat([image0, image1])).flatten(2).transpose(1, 2)  # (2B, L, C)
        f0, f1 = feats.chunk(2) if self.use_chunk else feats.split(image0.shape[0])
        sim = f0 @ f1.transpose(1, 2)
        conf = sim.softmax(1) * sim.softmax(2)
        value, ids = conf.max(2)
        return _Out(sim, conf, ids, value)


@pytest.mark.parametrize("use_chunk", [True, False])
def test_dynamic_batch_is_verified(tmp_path, use_chunk):
    model = _PairNet(use_chunk).eval()
    if use_chunk:
        path = export_onnx(model, tmp_path / "d.onnx", dynamic="batch", height=32, width=48)
        assert checks.io_shapes(path)["inputs"]["image0"]["shape"][0] == "batch"
        _verify_dynamic_batch(path, 5, 32, 48)
    else:
        with pytest.raises(ExportError, match="baked in"):
            export_onnx(model, tmp_path / "d.onnx", dynamic="batch", height=32, width=48)
        assert not list(tmp_path.iterdir())  # nothing half-written


# ---------------------------------------------------------------------------------------------------
# export_student (end of every training run)


def test_export_student_writes_onnx_and_report_and_keeps_checkpoint(tmp_path):
    ckpt = save_student(tiny_student(), tmp_path / "ckpt" / "student.pt")
    before = (ckpt.read_bytes(), ckpt.stat().st_mtime_ns)
    # validation pairs at another (training) size are resized to the export size
    pairs = [(a, b) for a, b, _ in real_image_pairs(2 * H, 2 * W, 2)]
    result = export_student(ckpt, tmp_path / "out", height=H, width=W, parity_pairs=pairs)
    assert result.ok and result.onnx_path.is_file()
    report = json.loads(result.report_path.read_text())
    for key in ("op_check", "parity", "io_shapes", "parameter_count", "student_config"):
        assert key in report
    assert report["parity"]["ok"] and report["op_check"]["ok"]
    assert report["parameter_count"] > 0
    assert result.report_md_path.read_text().startswith("# Export report")
    assert (ckpt.read_bytes(), ckpt.stat().st_mtime_ns) == before
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["student.pt"]


def test_export_student_raises_export_error(tmp_path):
    with pytest.raises(ExportError, match="not found"):
        export_student(tmp_path / "missing.pt", tmp_path, height=H, width=W)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt: truncated, corrupt or not a torch checkpoint"):
        export_student(bad, tmp_path / "out", height=H, width=W)
    assert bad.read_bytes() == b"not a checkpoint"


def test_export_student_from_lightning_style_checkpoint(tmp_path):
    model = tiny_student()
    state = {f"student.{k}": v for k, v in model.state_dict().items()}
    state["teacher.dummy"] = torch.zeros(1)
    ckpt = tmp_path / "epoch=1.ckpt"
    torch.save({"student_config": dict(model.config.__dict__), "state_dict": state, "epoch": 1}, ckpt)
    result = export_student(ckpt, tmp_path / "out", height=H, width=W, parity_pairs=[])
    assert result.ok and result.report["parity_pairs_source"].startswith("scikit-image")
    assert checks.read_metadata(result.onnx_path)["checkpoint"] == "epoch=1.ckpt"
