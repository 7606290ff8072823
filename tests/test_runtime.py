"""Runtime backends (loftr_kd.runtime): one protocol over PyTorch, onnxruntime and TensorRT, the geometry read
from each file's metadata, and onnxruntime timing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from loftr_kd.data.homography import real_image_pairs
from loftr_kd.export.onnx import export_onnx
from loftr_kd.models.student import build_student
from loftr_kd.runtime import (
    MatcherError,
    ModelGeometry,
    ModelOutputs,
    OnnxBackend,
    TensorRTBackend,
    TensorRTUnavailable,
    TorchBackend,
    time_onnx,
)

H, W, STRIDE = 64, 96, 16
L0 = (H // STRIDE) * (W // STRIDE)


@pytest.fixture(scope="module")
def student():
    """A random refining student (threshold 0 and no border removal: a small grid still matches)."""
    torch.manual_seed(0)
    model = build_student(input_height=H, input_width=W, border_removal=0, match_threshold=0.0, refine="corr")
    return model.prepare_for_inference()


@pytest.fixture(scope="module")
def graphs(student, tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime")
    return {
        "static": export_onnx(student, root / "static.onnx"),
        "dynamic": export_onnx(student, root / "dynamic.onnx", dynamic=True),
        "batch2": export_onnx(student, root / "batch2.onnx", batch=2),
    }


def _pair(height: int = H, width: int = W) -> tuple[np.ndarray, np.ndarray]:
    a, b, _ = real_image_pairs(height, width, 1, seed=3)[0]
    return a[None, None], b[None, None]


def _check_outputs(out: ModelOutputs, batch: int, cells: int) -> None:
    assert out.match_ids.shape == (batch, cells) and out.match_ids.dtype == np.int64
    assert out.match_confidence.shape == (batch, cells) and out.match_confidence.dtype == np.float32
    for points in (out.points0, out.points1):
        assert points.shape == (batch, cells, 2) and points.dtype == np.float32
    assert (out.match_ids >= 0).any()


def test_torch_and_onnxruntime_backends_give_the_same_outputs(student, graphs):
    images0, images1 = _pair()
    torch_backend = TorchBackend(student)
    expected = torch_backend.run(torch_backend.feed(images0, images1))
    _check_outputs(expected, 1, L0)
    for name in ("static", "dynamic"):
        backend = OnnxBackend(graphs[name], threads=1)
        got = backend.run(backend.feed(images0, images1))
        _check_outputs(got, 1, L0)
        np.testing.assert_array_equal(got.match_ids, expected.match_ids)
        np.testing.assert_allclose(got.match_confidence, expected.match_confidence, atol=1e-4)
        np.testing.assert_allclose(got.points1, expected.points1, atol=1e-2)
        assert got.match_uncertainty is not None and got.confidence is None


def test_a_dynamic_graph_takes_two_sizes_in_one_call(student, graphs):
    backend = OnnxBackend(graphs["dynamic"], threads=1)
    (images0, _), (_, images1) = _pair(), _pair(96, 64)
    out = backend.run(backend.feed(images0, images1))
    _check_outputs(out, 1, L0)
    assert out.points1[out.match_ids >= 0, 1].max() < 96  # image1 is 64 wide, 96 high


def test_geometry_comes_from_the_files_metadata(student, graphs, tmp_path):
    checkpoint = TorchBackend(student).geometry
    assert (checkpoint.input_height, checkpoint.input_width, checkpoint.stride) == (H, W, STRIDE)
    assert checkpoint.dynamic and checkpoint.max_size == (2048, 2048) and checkpoint.baked_threshold is None
    assert checkpoint.refine == "corr"
    static = OnnxBackend(graphs["static"]).geometry
    assert not static.dynamic and static.max_size is None and static.baked_threshold == 0.0
    dynamic = OnnxBackend(graphs["dynamic"]).geometry
    assert dynamic.dynamic and dynamic.max_size == (2048, 2048) and dynamic.config == static.config
    assert OnnxBackend(graphs["batch2"]).geometry.batch == 2
    bare = onnx.load(str(graphs["static"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(MatcherError, match="bare.onnx carries no student_config metadata"):
        OnnxBackend(tmp_path / "bare.onnx")
    with pytest.raises(MatcherError, match="not a multiple of the coarse stride 16"):
        ModelGeometry(config={}, input_height=100, input_width=96, stride=16)


def test_engine_geometry_from_its_sidecar_or_the_onnx_beside_it(graphs, tmp_path):
    """No TensorRT needed: the engine's metadata alone says its geometry and its profile's limits."""
    onnx_metadata = {p.key: p.value for p in onnx.load(str(graphs["dynamic"])).metadata_props}
    config = json.loads(onnx_metadata["student_config"])
    profile = {"image0": [[1, 1, 32, 32], [1, 1, H, W], [1, 1, 256, 320]]}
    sidecar = {"student_config": config, "onnx_metadata": onnx_metadata, "profiles": [profile]}
    geometry = ModelGeometry.from_engine_metadata(sidecar, tmp_path / "m.engine")
    assert geometry.dynamic and geometry.min_size == (32, 32) and geometry.max_size == (256, 320)
    assert geometry.baked_threshold == 0.0 and geometry.stride == STRIDE
    beside = tmp_path / "static.engine"
    beside.with_suffix(".onnx").write_bytes(graphs["static"].read_bytes())
    geometry = ModelGeometry.from_engine_metadata({}, beside)
    assert not geometry.dynamic and (geometry.input_height, geometry.input_width) == (H, W)
    with pytest.raises(MatcherError, match="no metadata found; pass input_size"):
        ModelGeometry.from_engine_metadata({}, tmp_path / "alone.engine")
    with pytest.raises(MatcherError, match="cannot tell the coarse stride"):
        ModelGeometry.from_engine_metadata({}, tmp_path / "alone.engine", input_size=(H, W))


def test_a_static_batch_is_filled_by_repeating_one_pair(graphs):
    backend = OnnxBackend(graphs["batch2"], threads=1)
    out = backend.run(backend.feed(*_pair()))
    _check_outputs(out, 2, L0)
    np.testing.assert_array_equal(out.match_ids[0], out.match_ids[1])
    images = np.zeros((3, 1, H, W), np.float32)
    with pytest.raises(ValueError, match="takes a batch of 2 pairs"):
        backend.feed(images, images)


def test_graphs_without_points_outputs_get_cell_centres(tmp_path):
    """Graphs exported before ``points0``/``points1`` existed: the backend places matches at cell centres,
    which is what a coarse student's own points are."""
    torch.manual_seed(1)
    coarse = build_student(input_height=H, input_width=W, border_removal=0, match_threshold=0.0).eval()
    path = export_onnx(coarse, tmp_path / "coarse.onnx")
    old = onnx.load(str(path))
    kept = [o for o in old.graph.output if o.name in ("match_ids", "match_confidence")]
    del old.graph.output[:]
    old.graph.output.extend(kept)
    onnx.save(old, str(tmp_path / "old.onnx"))
    images = _pair()
    new_backend, old_backend = OnnxBackend(path, threads=1), OnnxBackend(tmp_path / "old.onnx", threads=1)
    expected = new_backend.run(new_backend.feed(*images))
    got = old_backend.run(old_backend.feed(*images))
    assert old_backend.output_names == ["match_ids", "match_confidence"]
    np.testing.assert_array_equal(got.match_ids, expected.match_ids)
    np.testing.assert_allclose(got.points0, expected.points0)
    np.testing.assert_allclose(got.points1, expected.points1)


def test_loading_and_running_an_onnx_file_never_imports_torch(graphs):
    code = (
        "import sys, numpy as np\n"
        "from loftr_kd.runtime import OnnxBackend\n"
        f"backend = OnnxBackend({str(graphs['dynamic'])!r}, threads=1)\n"
        f"images = np.random.default_rng(0).random((1, 1, {H}, {W}), dtype=np.float32)\n"
        "out = backend.run(backend.feed(images, images))\n"
        "from loftr_kd.matcher import Matcher\n"
        f"Matcher({str(graphs['static'])!r}, backend='onnx', threads=1)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(out.match_ids.shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"(1, {L0})"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_backend_unavailable_says_why(tmp_path):
    engine = tmp_path / "student.engine"
    engine.write_bytes(b"\0")
    with pytest.raises(TensorRTUnavailable, match="import tensorrt failed") as info:
        TensorRTBackend(engine)
    assert "TensorRT is not available" in info.value.reason


def test_time_onnx_times_every_graph_on_the_same_inputs(graphs):
    images0, images1 = _pair()
    timings = time_onnx(
        {"static": graphs["static"], "dynamic": graphs["dynamic"]},
        {"image0": images0, "image1": images1},
        threads=1,
        repeats=2,
        warmup=1,
    )
    assert set(timings) == {"static", "dynamic"}
    for timing in timings.values():
        assert (
            timing["min_ms"] > 0 and timing["median_ms"] >= timing["min_ms"] and timing["cpu_median_ms"] >= 0
        )


def test_a_commands_threads_reach_the_sessions_its_checks_open(graphs):
    """``default_threads`` is how loftr-kd-export's ``threads`` reaches every check session, however deep."""
    from loftr_kd.runtime.sessions import default_threads, ort_session, session_threads

    path = graphs["static"]
    assert session_threads() is None
    assert ort_session(path).get_session_options().intra_op_num_threads == 0  # onnxruntime's default
    with default_threads(1):
        assert session_threads() == 1
        assert ort_session(path).get_session_options().intra_op_num_threads == 1
        assert ort_session(path, threads=2).get_session_options().intra_op_num_threads == 2  # its own wins
    assert session_threads() is None  # restored


def test_a_graph_traced_at_another_size_than_its_config_says_is_matched_at_its_own(student, tmp_path):
    """export_onnx(height=, width=) wrote the graph's size in its metadata but the Matcher read the config's:
    every call failed with an onnxruntime shape error."""
    from loftr_kd import Matcher

    path = export_onnx(student, tmp_path / "other_size.onnx", height=H + 32, width=W + 32)
    matcher = Matcher(path, backend="onnx", threads=1)
    assert matcher.input_shape(H + 32, W + 32) == (H + 32, W + 32)
    a, b = (image[0, 0] for image in _pair(H + 32, W + 32))
    result = matcher(a, b)
    assert len(result["keypoints0"]) == len(result["keypoints1"]) > 0


def test_a_letterboxed_image_loses_its_border_cells_at_the_contents_edge_too(tmp_path):
    """A static file letterboxes: the model removed border cells of its padded input, so the content's
    right/bottom cells, half in the padding, kept their matches (p90 error 3.2 px against 1.7 inside)."""
    from loftr_kd import Matcher

    torch.manual_seed(0)
    model = build_student(
        input_height=H, input_width=W, border_removal=1, match_threshold=0.0
    ).prepare_for_inference()
    matcher = Matcher(export_onnx(model, tmp_path / "static.onnx"), backend="onnx", threads=1)
    a, b = (image[0, 0] for image in _pair(W, H))  # portrait: 64 x 96 content in a 96 x 64 input
    result = matcher(a, b)
    assert len(result["keypoints0"]) > 0
    # content 43 px wide = 3 cell columns (the last in part); border 1: columns 0 and 2 go, 1 stays
    scale = 64 / 96
    for points in (result["coarse_keypoints0"], result["coarse_keypoints1"]):
        columns = np.floor(((points[:, 0] + 0.5) * scale - 0.5) / STRIDE)
        rows = np.floor(((points[:, 1] + 0.5) * scale - 0.5) / STRIDE)
        assert set(columns.tolist()) == {1.0} and rows.min() >= 1 and rows.max() <= 2
