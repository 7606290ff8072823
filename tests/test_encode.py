"""Encode once, match many (issue 24): the student's ``encode`` / ``match`` halves, the split export beside
the whole graph, the runtime backends' ``encode`` / ``match``, and a Matcher taking ``ImageFeatures`` in place
of an image -- each against the whole call, its independent truth."""

from __future__ import annotations

import importlib.util
import json
import shutil

import cv2
import numpy as np
import onnx
import pytest
import torch
from skimage import data as skdata

from loftr_kd.data.homography import real_image_pairs
from loftr_kd.export.onnx import export_onnx
from loftr_kd.export.split import export_split, split_paths
from loftr_kd.features import ImageFeatures
from loftr_kd.matcher import Matcher, MatcherError
from loftr_kd.models.student import EncodedImages, build_student, save_student
from loftr_kd.runtime import OnnxBackend, TorchBackend, split_path

H, W = 64, 96
FIELDS = ("match_ids", "match_confidence", "points0", "points1", "match_uncertainty")


def refining_student(seed: int = 0, **overrides):
    """A random refining student (threshold 0 and no border removal: a small grid still matches)."""
    torch.manual_seed(seed)
    values = dict(input_height=H, input_width=W, border_removal=0, match_threshold=0.0, refine="corr")
    return build_student(**{**values, **overrides}).prepare_for_inference()


@pytest.fixture(scope="module")
def student():
    return refining_student()


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory):
    """The whole graph (dynamic shapes) with its split export beside it."""
    root = tmp_path_factory.mktemp("split")
    whole = export_onnx(student, root / "student.onnx", dynamic=True)
    export_split(student, whole, dynamic=True)
    return whole


@pytest.fixture(scope="module")
def static(student, tmp_path_factory):
    """A static whole graph (the configured size) with its split export (dynamic batch only)."""
    whole = export_onnx(student, tmp_path_factory.mktemp("static") / "static.onnx")
    export_split(student, whole)
    return whole


def _pair(height: int = H, width: int = W, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    a, b, _ = real_image_pairs(height, width, 1, seed=seed)[0]
    return a[None, None], b[None, None]


def _photo(width: int, height: int) -> np.ndarray:
    return cv2.resize(skdata.astronaut()[:, :, ::-1], (width, height), interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------------------------------ the student
@pytest.mark.parametrize("refine", ["corr", "none"])
def test_encode_then_match_is_forward(refine):
    """Images of two numbers of cells: forward encodes them apart too, so the halves give its outputs bit
    for bit; a same-size pair is stacked by forward (one backbone batch, one self-attention batch), equal
    to float rounding."""
    model = refining_student(refine=refine)
    image0 = torch.from_numpy(_pair()[0])
    with torch.inference_mode():
        for image1 in (torch.from_numpy(_pair(96, 128)[1]), torch.from_numpy(_pair()[1])):
            whole = model(image0, image1)
            encoded0, encoded1 = model.encode(image0), model.encode(image1)
            split = model.match(encoded0, encoded1)
            assert (encoded0.fine is None) == (refine == "none")
            assert encoded0.coarse.shape == (1, model.config.d_model, H // 16, W // 16)
            torch.testing.assert_close(split.match_ids, whole.match_ids, rtol=0, atol=0)
            exact = image0.shape != image1.shape
            for name in ("match_confidence", "points1", "match_uncertainty"):
                tolerance = 0 if exact else 1e-5
                torch.testing.assert_close(getattr(split, name), getattr(whole, name), rtol=0, atol=tolerance)


def test_match_refuses_encodings_it_did_not_make(student):
    encoded = student.encode(torch.from_numpy(_pair()[0]))
    with pytest.raises(ValueError, match="fine must be given"):
        student.match(EncodedImages(encoded.coarse), encoded)
    with pytest.raises(ValueError, match=r"coarse must be \(B, 32, h, w\)"):
        student.match(EncodedImages(encoded.coarse[:, :8], encoded.fine), encoded)
    with pytest.raises(ValueError, match="batch sizes differ"):
        student.match(
            EncodedImages(encoded.coarse.repeat(2, 1, 1, 1), encoded.fine.repeat(2, 1, 1, 1)), encoded
        )


# ------------------------------------------------------------------------------ the split export
def test_split_paths_sit_beside_the_whole_graph_and_its_engines(tmp_path):
    assert split_path(tmp_path / "student.onnx", "encoder") == tmp_path / "student.encoder.onnx"
    assert split_path(tmp_path / "m.v2.onnx", "matcher") == tmp_path / "m.v2.matcher.onnx"
    # an engine built from student.encoder.onnx by the export: student.encoder.fp16.engine
    assert split_path(tmp_path / "student.fp16.engine", "encoder") == tmp_path / "student.encoder.fp16.engine"
    assert split_path(tmp_path / "student.plan", "matcher") == tmp_path / "student.matcher.plan"
    with pytest.raises(ValueError, match="part must be one of"):
        split_path(tmp_path / "student.onnx", "backbone")


def test_an_engine_without_its_sidecar_reads_its_geometry_from_the_onnx_it_was_built_from(exported, tmp_path):
    """The documented trtexec line saves student.fp16.engine beside student.onnx and writes no sidecar; the
    geometry was looked up in student.fp16.onnx, which no export writes."""
    from loftr_kd.runtime.backend import ModelGeometry

    for source in (exported, *split_paths(exported)):
        shutil.copyfile(source, tmp_path / source.name)
    whole = OnnxBackend(exported, threads=1).geometry
    for engine in ("student.fp16.engine", "student.fp32.engine", "student.engine"):
        assert ModelGeometry.from_engine_metadata({}, tmp_path / engine) == whole
    encoder = ModelGeometry.from_engine_metadata({}, tmp_path / "student.encoder.fp16.engine")
    assert encoder.config == whole.config


def test_split_export_gives_the_whole_graphs_outputs_bit_for_bit(exported):
    """Two sizes, batch 1 and 3 (the graphs were traced at batch 2): the halves compute what the whole
    dynamic graph computes."""
    encoder, matcher = split_paths(exported)
    metadata = {p.key: p.value for p in onnx.load(str(matcher)).metadata_props}
    assert metadata["split_part"] == "matcher" and json.loads(metadata["input_strides"]) == {
        "coarse0": 16,
        "coarse1": 16,
        "fine0": 4,
        "fine1": 4,
    }
    backend = OnnxBackend(exported, threads=1)
    assert backend.can_encode
    (images0, _), (_, images1) = _pair(), _pair(96, 64, seed=4)
    for batch in (1, 3):
        a, b = np.repeat(images0, batch, 0), np.repeat(images1, batch, 0)
        whole = backend.run(backend.feed(a, b))
        split = backend.match(backend.encode(a), backend.encode(b))
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(split, name), getattr(whole, name), err_msg=name)
        assert (whole.match_ids >= 0).any()


def test_a_static_export_splits_with_a_dynamic_batch(static):
    backend = OnnxBackend(static, threads=1)
    images0, images1 = _pair()
    encoded = backend.encode(np.repeat(images0, 2, 0))  # any batch
    assert encoded.coarse.shape[0] == 2 and not backend.geometry.dynamic
    split = backend.match(backend.encode(images0), backend.encode(images1))
    whole_out = backend.run(backend.feed(images0, images1))
    np.testing.assert_array_equal(split.match_ids, whole_out.match_ids)
    np.testing.assert_allclose(split.match_confidence, whole_out.match_confidence, atol=1e-5)


def test_without_a_split_export_encode_says_how_to_get_one(exported, tmp_path):
    alone = tmp_path / "alone.onnx"
    shutil.copyfile(exported, alone)
    backend = OnnxBackend(alone, threads=1)
    assert not backend.can_encode
    with pytest.raises(MatcherError, match=r"alone.encoder.onnx, alone.matcher.onnx.*loftr-kd-export"):
        backend.encode(_pair()[0])
    matcher = Matcher(alone, threads=1)
    assert not matcher.can_encode
    with pytest.raises(MatcherError, match="no split export beside it"):
        matcher.encode(_photo(W, H))
    result = matcher(_photo(W, H), _photo(W, H))  # whole pairs still match
    assert len(result["keypoints0"]) > 0
    with pytest.raises(MatcherError, match="is the encoder of a split export"):
        OnnxBackend(split_paths(exported)[0])


def test_halves_of_another_model_are_refused(exported, tmp_path):
    """A half whose student_config differs from the whole graph's (here: another match threshold)."""
    whole = tmp_path / "student.onnx"
    shutil.copyfile(exported, whole)
    for source, target in zip(split_paths(exported), split_paths(whole)):
        proto = onnx.load(str(source))
        for prop in proto.metadata_props:
            if prop.key == "student_config":
                prop.value = json.dumps({**json.loads(prop.value), "match_threshold": 0.1})
        onnx.save(proto, str(target))
    with pytest.raises(MatcherError, match="exported from another model.*match_threshold"):
        OnnxBackend(whole, threads=1).encode(_pair()[0])


def test_halves_of_earlier_weights_are_refused(exported, tmp_path):
    """The whole graph exported again from other weights of the same config (the next epoch, exported with
    split=false) beside the earlier halves: encode() would match with the earlier weights."""
    whole = tmp_path / "student.onnx"
    for source, target in zip(split_paths(exported), split_paths(whole)):
        shutil.copyfile(source, target)
    export_onnx(refining_student(seed=1), whole, dynamic=True)
    with pytest.raises(
        MatcherError, match=r"exported from other weights than .*student.onnx.*loftr-kd-export"
    ):
        OnnxBackend(whole, threads=1).encode(_pair()[0])
    export_split(refining_student(seed=1), whole, dynamic=True)  # exported together: taken
    assert OnnxBackend(whole, threads=1).encode(_pair()[0]).coarse.shape[0] == 1


def test_torch_backend_halves_match_its_whole_call(student):
    backend = TorchBackend(student)
    images0, images1 = _pair()
    whole = backend.run(backend.feed(images0, images1))
    split = backend.match(backend.encode(images0), backend.encode(images1))
    np.testing.assert_array_equal(split.match_ids, whole.match_ids)
    np.testing.assert_allclose(split.match_confidence, whole.match_confidence, atol=1e-5)
    np.testing.assert_allclose(split.points1, whole.points1, atol=1e-4)


# ------------------------------------------------------------------------------------ the Matcher
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_features_in_place_of_images_give_the_images_result(student, exported, tmp_path, backend):
    """Either side, or both, encoded: the result of the images themselves (bit for bit on the dynamic ONNX
    file, whose whole graph encodes the two images apart; to float rounding on torch, which stacks a
    same-size pair). Images of their own sizes and colour modes, resized by the Matcher."""
    weights = exported if backend == "onnx" else save_student(student, tmp_path / "student.pt")
    matcher = Matcher(weights, backend=backend, threads=1, size=128)
    image0, image1 = _photo(200, 150), cv2.cvtColor(_photo(160, 160), cv2.COLOR_BGR2GRAY)
    expected = matcher(image0, image1)
    assert len(expected["keypoints0"]) > 10
    features0, features1 = matcher.encode(image0), matcher.encode(image1)
    for left, right in ((features0, image1), (image0, features1), (features0, features1)):
        got = matcher(left, right)
        for key, value in expected.items():
            if backend == "onnx":
                np.testing.assert_array_equal(got[key], value, err_msg=key)
            else:
                np.testing.assert_allclose(got[key], value, atol=1e-4, err_msg=key)
    same0, same1 = _photo(128, 96), _photo(128, 96)[::-1].copy()  # a same-size pair: torch stacks it
    expected, got = matcher(same0, same1), matcher(matcher.encode(same0), same1)
    np.testing.assert_allclose(got["keypoints1"], expected["keypoints1"], atol=1e-3)
    np.testing.assert_allclose(got["confidence"], expected["confidence"], atol=1e-5)


def test_features_are_plain_read_only_arrays_and_say_what_made_them(exported):
    matcher = Matcher(exported, threads=1, size=128)
    features = matcher.encode(_photo(200, 150))
    assert isinstance(features, ImageFeatures) and features.image_shape == (150, 200)
    assert features.input_shape == (96, 128) and features.size == 128
    assert features.coarse.shape == (32, 6, 8) and features.fine.shape == (16, 24, 32)
    assert features.coarse.dtype == np.float32 and not features.coarse.flags.writeable
    assert features.nbytes == features.coarse.nbytes + features.fine.nbytes
    assert features.model.startswith("sha1 ") and features.model.endswith(" on onnx")
    assert "200x150 image at 128x96" in repr(features)


def test_features_of_another_model_or_size_are_clear_errors(student, exported, tmp_path):
    matcher = Matcher(exported, threads=1, size=128)
    image = _photo(200, 150)
    features = matcher.encode(image)
    other = Matcher(save_student(student, tmp_path / "student.pt"), backend="torch", size=128)
    with pytest.raises(
        MatcherError,
        match=r"image0 was encoded by another model \(weights sha1 \w+ on onnx\), not .*student.pt",
    ):
        other(features, image)
    # The same weights under another file name are the same model: their features are matched.
    renamed = Matcher(shutil.copy(other.weights, tmp_path / "renamed.pt"), backend="torch", size=128)
    from_copy, plain = renamed(other.encode(image), image), other(image, image)
    np.testing.assert_allclose(from_copy["keypoints1"], plain["keypoints1"], atol=1e-3)  # torch rounding
    with pytest.raises(
        MatcherError, match="encoded at long side 128, but this call matches it at 96: pass size0=128"
    ):
        matcher(features, image, size0=96)
    small = matcher.encode(image, size=96)
    assert len(matcher(small, image, size0=96)["keypoints0"]) > 0
    with pytest.raises(MatcherError, match="image1 was encoded at long side 96.*size1=96"):
        matcher(image, small)
    with pytest.raises(TypeError, match="must be ImageFeatures"):
        matcher.match_batch([(features, image)])


def test_batches_of_encodings_match_like_one_at_a_time(exported):
    """encode_batch / match_batch group equal shapes into one call: the results of one-at-a-time calls,
    to float rounding (a batched MatMul sums in another order)."""
    matcher = Matcher(exported, threads=1, size=128)
    images = [_photo(200, 150), _photo(200, 150)[:, ::-1].copy(), _photo(150, 200)]
    batched = matcher.encode_batch(images)
    single = [matcher.encode(image) for image in images]
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a.coarse, b.coarse, atol=1e-5)
        np.testing.assert_allclose(a.fine, b.fine, atol=1e-6)
    pairs = [(single[0], single[1]), (single[1], single[0]), (single[0], single[2])]
    for got, (f0, f1) in zip(matcher.match_batch(pairs), pairs):
        expected = matcher(f0, f1)
        np.testing.assert_allclose(got["keypoints1"], expected["keypoints1"], atol=1e-3)
        np.testing.assert_allclose(got["confidence"], expected["confidence"], atol=1e-5)


def test_a_static_file_encodes_letterboxed(static):
    matcher = Matcher(static, threads=1)
    image0, image1 = _photo(200, 120), _photo(90, 70)
    features = matcher.encode(image0)
    assert features.size is None and features.input_shape == (H, W)
    expected, got = matcher(image0, image1), matcher(features, image1)
    np.testing.assert_allclose(got["keypoints1"], expected["keypoints1"], atol=1e-3)
    with pytest.raises(MatcherError, match="static input"):
        matcher.encode(image0, size=128)


@pytest.mark.slow
def test_a_checkpoint_on_onnxruntime_exports_its_halves_into_the_cache_on_first_encode(student, tmp_path):
    weights = save_student(student, tmp_path / "student.pt")
    matcher = Matcher(weights, threads=1, size=128)
    halves = split_paths(matcher.onnx_path)
    assert matcher.can_encode and not any(p.exists() for p in halves)  # written on first use only
    image = _photo(200, 150)
    np.testing.assert_array_equal(
        matcher(matcher.encode(image), image)["keypoints1"], matcher(image, image)["keypoints1"]
    )
    assert all(p.is_file() for p in halves)
    stamps = [p.stat().st_mtime_ns for p in halves]
    again = Matcher(weights, threads=1, size=128)
    again.encode(image)
    assert [p.stat().st_mtime_ns for p in halves] == stamps  # reused, not exported again


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed")
def test_tensorrt_engines_of_the_split_export_match_the_whole_engine(student, exported, tmp_path):
    from loftr_kd.export.tensorrt import build_engine

    profile = {"min": [32, 32], "opt": [H, W], "max": [256, 256], "max_batch": 4}
    engine = build_engine(exported, tmp_path / "student.fp32.engine", fp16=False, shape_profile=profile)
    for part in split_paths(exported):
        build_engine(part, split_path(engine, part.stem.rsplit(".", 1)[1]), fp16=False, shape_profile=profile)
    matcher = Matcher(engine, backend="trt", size=128)
    assert matcher.can_encode and matcher.runner.split_batch == 4
    image0, image1 = _photo(200, 150), _photo(160, 160)
    expected, got = matcher(image0, image1), matcher(matcher.encode(image0), image1)
    assert abs(len(got["keypoints0"]) - len(expected["keypoints0"])) <= 2
    np.testing.assert_allclose(
        np.median(got["keypoints1"], 0), np.median(expected["keypoints1"], 0), atol=0.5
    )
