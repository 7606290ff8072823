"""TensorRT engine build and runner (loftr_kd.export.tensorrt); GPU tests skip without TensorRT/CUDA."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from loftr_kd.data.homography import real_image_pairs
from loftr_kd.export import checks
from loftr_kd.export.onnx import export_onnx
from loftr_kd.export.tensorrt import (
    TensorRTUnavailable,
    build_engine,
    default_profiles,
    engine_metadata_path,
    tensorrt_available,
    trtexec_command,
)
from loftr_kd.models.student import build_student

H, W = 64, 96
HAS_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.fixture(scope="module")
def onnx_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt")
    model = build_student(input_height=H, input_width=W, border_removal=0).eval()
    return model, export_onnx(model, root / "static.onnx"), root


def test_trtexec_command_static():
    cmd = trtexec_command("m.onnx", "m.engine", fp16=True, workspace_mb=512)
    assert cmd.split() == [
        "trtexec",
        "--onnx=m.onnx",
        "--saveEngine=m.engine",
        "--memPoolSize=workspace:512M",
        "--fp16",
    ]
    assert "--fp16" not in trtexec_command("m.onnx", "m.engine", fp16=False, workspace_mb=512)


def test_trtexec_command_with_profile():
    prof = {"image0": ((1, 1, 48, 64), (2, 1, 48, 64), (8, 1, 48, 64))}
    cmd = trtexec_command("m.onnx", "m.engine", fp16=False, workspace_mb=64, profiles=[prof])
    assert "--minShapes=image0:1x1x48x64" in cmd and "--optShapes=image0:2x1x48x64" in cmd
    assert "--maxShapes=image0:8x1x48x64" in cmd


def test_default_profiles(onnx_paths, tmp_path):
    _, static, _ = onnx_paths
    assert default_profiles(static) is None
    # a dynamic-batch graph, built by hand (the input shape is all that matters here)
    import onnx

    proto = onnx.load(str(static))
    for inp in proto.graph.input:
        inp.type.tensor_type.shape.dim[0].dim_param = "batch"
    path = tmp_path / "dyn.onnx"
    onnx.save(proto, str(path))
    (prof,) = default_profiles(path, max_batch=4)
    assert prof["image0"] == ((1, 1, H, W), (1, 1, H, W), (4, 1, H, W))


@pytest.mark.skipif(HAS_TRT, reason="TensorRT and a GPU are present: the unavailable path cannot be tested")
def test_build_engine_unavailable_raises_one_clear_reason(onnx_paths, tmp_path):
    _, static, _ = onnx_paths
    ok, reason = tensorrt_available()
    assert not ok and reason
    with pytest.raises(TensorRTUnavailable) as info:
        build_engine(static, tmp_path / "m.engine", fp16=True, workspace_mb=64)
    assert "\n" not in info.value.reason
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_engine_build_and_run_matches_onnxruntime(onnx_paths, fp16):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from loftr_kd.export.tensorrt import TensorRTRunner

    model, static, root = onnx_paths
    engine = build_engine(static, root / f"m{int(fp16)}.engine", fp16=fp16, workspace_mb=256)
    meta = json.loads(engine_metadata_path(engine).read_text())
    assert meta["precision"] == ("fp16" if fp16 else "fp32") and meta["gpu_name"] and meta["tensorrt_version"]
    runner = TensorRTRunner(engine)
    session = checks.ort_session(static)
    for a, b, _ in real_image_pairs(H, W, 2):
        a, b = a[None, None], b[None, None]
        out = runner(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda())
        ids_ref, conf_ref = session.run(["match_ids", "match_confidence"], {"image0": a, "image1": b})
        assert out["match_ids"].dtype == torch.int64
        tol = 1e-2 if fp16 else 1e-4
        assert np.abs(out["match_confidence"].float().cpu().numpy() - conf_ref).max() < tol
        agreement = (out["match_ids"].cpu().numpy() == ids_ref).mean()
        assert agreement >= (0.9 if fp16 else 0.99)


@pytest.mark.gpu
def test_fp16_engine_of_the_shipped_graph_matches_onnxruntime_at_640x480(tmp_path):
    """The deployment case: the shipped dynamic graph, fp16, at 640x480 on real photographs. Its attention
    sums once passed float16's range there (an fp16 computation returned no matches at all)."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from pathlib import Path

    from loftr_kd.export.tensorrt import TensorRTRunner

    shipped = Path(__file__).resolve().parents[1] / "weights" / "student_paper_refine.onnx"
    profile = {"min": [480, 640], "opt": [480, 640], "max": [480, 640]}
    engine = build_engine(shipped, tmp_path / "shipped.fp16.engine", fp16=True, shape_profile=profile)
    runner, session = TensorRTRunner(engine), checks.ort_session(shipped)
    for a, b, _ in real_image_pairs(480, 640, 3):
        a, b = a[None, None], b[None, None]
        out = runner(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda())
        (ids_ref,) = session.run(["match_ids"], {"image0": a, "image1": b})
        ids = out["match_ids"].cpu().numpy()
        assert (ids_ref >= 0).sum() > 50
        assert abs(int((ids >= 0).sum()) - int((ids_ref >= 0).sum())) <= 0.1 * (ids_ref >= 0).sum()
        assert (ids == ids_ref).mean() >= 0.9
