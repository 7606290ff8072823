"""Metrics against independent truths: an oracle that knows the true geometry scores 1.0, a random
matcher scores near 0, ORB is sensible, and hand-computable cases give their closed-form values."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata

from loftr_kd import evaluation as ev
from loftr_kd.matcher import OpenCVMatcher

WIDTH, HEIGHT = 320, 240
K = np.array([[300.0, 0.0, 159.5], [0.0, 300.0, 119.5], [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------------------ data with known truth
def photo(name: str, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A bundled scikit-image photo as BGR uint8 at (height, width)."""
    image = getattr(skdata, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return cv2.resize(np.ascontiguousarray(image[:, :, 2::-1]), (width, height), interpolation=cv2.INTER_AREA)


def random_homography(rng: np.random.Generator, width: int, height: int, jitter: float = 0.12) -> np.ndarray:
    """Homography moving each image corner by up to ``jitter`` of the image size."""
    src = ev.image_corners(width, height).astype(np.float32)
    dst = src + rng.uniform(-jitter, jitter, size=(4, 2)).astype(np.float32) * [width, height]
    return cv2.getPerspectiveTransform(src, dst.astype(np.float32))


def make_hpatches(root: Path, names=("astronaut", "coffee"), per_sequence: int = 2, seed: int = 0) -> Path:
    """HPatches layout: ``<seq>/1.ppm .. k.ppm`` with ``H_1_k`` mapping image 1 pixels to image k."""
    rng = np.random.default_rng(seed)
    for name in names:
        directory = root / f"v_{name}"
        directory.mkdir(parents=True)
        image1 = photo(name)
        cv2.imwrite(str(directory / "1.ppm"), image1)
        for k in range(2, 2 + per_sequence):
            H = random_homography(rng, WIDTH, HEIGHT)
            cv2.imwrite(str(directory / f"{k}.ppm"), cv2.warpPerspective(image1, H, (WIDTH, HEIGHT)))
            np.savetxt(directory / f"H_1_{k}", H)
    return root


def rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    return cv2.Rodrigues(np.radians([rx, ry, rz]))[0]


def make_pose_pairs(
    root: Path, num_pairs: int = 4, seed: int = 0
) -> tuple[Path, list[tuple[np.ndarray, np.ndarray]]]:
    """Pair list of a synthetic scene: random 3-D points seen by two cameras with a known pose.

    Images are renders of a textured fronto-parallel plane at depth 4 (homography induced by the
    plane), distinct per pair. Returns the list file and, per pair, the 3-D points and T_0to1.
    """
    rng = np.random.default_rng(seed)
    names = ["astronaut", "coffee", "chelsea", "rocket"]
    pairs, scenes = [], []
    normal, depth = np.array([0.0, 0.0, 1.0]), 4.0
    for i in range(num_pairs):
        R = rotation(*rng.uniform(-8, 8, size=3))
        t = np.r_[rng.uniform(-0.6, 0.6, size=2), rng.uniform(-0.2, 0.2)]
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, t
        image0 = photo(names[i % len(names)])
        H = K @ (R + np.outer(t, normal) / depth) @ np.linalg.inv(K)  # plane n.X = d in camera 0
        image1 = cv2.warpPerspective(image0, H, (WIDTH, HEIGHT))
        p0, p1 = root / f"pair{i}_0.png", root / f"pair{i}_1.png"
        cv2.imwrite(str(p0), image0)
        cv2.imwrite(str(p1), image1)
        pairs.append(ev.PosePair(p0, p1, K, K, T))
        pixels = rng.uniform([0, 0], [WIDTH, HEIGHT], size=(400, 2))
        z = rng.uniform(2.0, 8.0, size=400)  # non-planar: depths spread over 2..8
        points = np.c_[(pixels - K[:2, 2]) / K[[0, 1], [0, 1]] * z[:, None], z]
        scenes.append((points, T))
    list_file = root / "pairs.txt"
    ev.write_pose_pairs(list_file, pairs, root)
    return list_file, scenes


def digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class OracleHomographyMatcher:
    """Knows the true homography of every pair: matches a 16-px grid of image0 to its true image."""

    def __init__(self, pairs: list[ev.HomographyPair]):
        self.truth = {(digest(ev.read_image(p.path0)), digest(ev.read_image(p.path1))): p.H for p in pairs}

    def __call__(self, image0, image1):
        H = self.truth[(digest(image0), digest(image1))]
        h, w = image0.shape[:2]
        grid = (
            np.stack(np.meshgrid(np.arange(8, w, 16), np.arange(8, h, 16)), -1).reshape(-1, 2).astype(float)
        )
        warped = ev.warp_points(grid, H)
        h1, w1 = image1.shape[:2]
        keep = (warped[:, 0] >= 0) & (warped[:, 0] <= w1 - 1) & (warped[:, 1] >= 0) & (warped[:, 1] <= h1 - 1)
        return {"keypoints0": grid[keep], "keypoints1": warped[keep], "confidence": np.ones(keep.sum())}


class OraclePoseMatcher:
    """Knows the 3-D points and the pose of every pair: returns their exact projections."""

    def __init__(self, pairs: list[ev.PosePair], scenes):
        self.truth = {
            (digest(ev.read_image(p.path0)), digest(ev.read_image(p.path1))): scene
            for p, scene in zip(pairs, scenes)
        }

    def __call__(self, image0, image1):
        points, T = self.truth[(digest(image0), digest(image1))]
        cam1 = points @ T[:3, :3].T + T[:3, 3]
        k0 = points[:, :2] / points[:, 2:] * K[[0, 1], [0, 1]] + K[:2, 2]
        k1 = cam1[:, :2] / cam1[:, 2:] * K[[0, 1], [0, 1]] + K[:2, 2]
        keep = (cam1[:, 2] > 0) & np.all((k1 >= 0) & (k1 <= [WIDTH - 1, HEIGHT - 1]), axis=1)
        return {"keypoints0": k0[keep], "keypoints1": k1[keep], "confidence": np.ones(keep.sum())}


class RandomMatcher:
    """Uniformly random correspondences."""

    def __init__(self, n: int = 300, seed: int = 0):
        self.n, self.rng = n, np.random.default_rng(seed)

    def __call__(self, image0, image1):
        h0, w0 = image0.shape[:2]
        h1, w1 = image1.shape[:2]
        return {
            "keypoints0": self.rng.uniform([0, 0], [w0 - 1, h0 - 1], size=(self.n, 2)),
            "keypoints1": self.rng.uniform([0, 0], [w1 - 1, h1 - 1], size=(self.n, 2)),
            "confidence": self.rng.uniform(size=self.n),
        }


@pytest.fixture(scope="module")
def hpatches(tmp_path_factory) -> Path:
    return make_hpatches(tmp_path_factory.mktemp("hpatches"))


@pytest.fixture(scope="module")
def pose_data(tmp_path_factory):
    return make_pose_pairs(tmp_path_factory.mktemp("pose"))


# ------------------------------------------------------------------------------ closed-form metrics
def test_error_auc_closed_form():
    # N errors all equal e: SuperGlue's curve rises linearly from (0, 0) to (e, 1/N), then steps to 1
    # at e, so AUC@t = ((t - e) + e / (2N)) / t.
    aucs = ev.error_auc([2.0] * 10, [5, 10])
    assert aucs[5.0] == pytest.approx((3 + 0.1) / 5)
    assert aucs[10.0] == pytest.approx((8 + 0.1) / 10)
    # Failures count in N: half of the pairs failing halves the AUC.
    assert ev.error_auc([2.0] * 500 + [math.inf] * 500, [5])[5.0] == pytest.approx(0.3, abs=1e-3)
    assert ev.error_auc([0.0] * 4, [3])[3.0] == pytest.approx(1.0)
    assert ev.error_auc([math.nan, 50.0], [3, 5])[5.0] == 0.0
    assert ev.error_auc([], [3]) == {3.0: 0.0}


def test_corner_error_of_a_translation():
    shifted = np.array([[1.0, 0, 3], [0, 1, 4], [0, 0, 1]])
    assert ev.corner_error(shifted, np.eye(3), WIDTH, HEIGHT) == pytest.approx(5.0)
    assert ev.corner_error(np.eye(3), np.eye(3), WIDTH, HEIGHT) == 0.0
    assert ev.corner_error(None, np.eye(3), WIDTH, HEIGHT) == math.inf


def test_pose_error_angles():
    R = rotation(0, 10, 0)
    assert ev.angle_error_rotation(R, np.eye(3)) == pytest.approx(10.0, abs=1e-6)
    T = np.eye(4)
    T[:3, 3] = [1, 0, 0]
    # The essential matrix fixes t only up to sign: -t is a perfect translation direction.
    assert ev.relative_pose_error(T, np.eye(3), np.array([-2.0, 0, 0])) == pytest.approx((0.0, 0.0), abs=1e-6)
    assert ev.relative_pose_error(T, np.eye(3), np.array([1.0, 1.0, 0]))[1] == pytest.approx(45.0)
    assert ev.relative_pose_error(T, None, None) == (math.inf, math.inf)


def test_symmetric_epipolar_error_is_zero_on_true_correspondences(pose_data):
    list_file, scenes = pose_data
    pairs = ev.load_pose_pairs(list_file)
    oracle = OraclePoseMatcher(pairs, scenes)
    result = oracle(ev.read_image(pairs[0].path0), ev.read_image(pairs[0].path1))
    errors = ev.symmetric_epipolar_errors(result["keypoints0"], result["keypoints1"], K, K, pairs[0].T_0to1)
    assert errors.max() < 1e-10
    moved = result["keypoints1"] + [0.0, 5.0]  # 5 px off the epipolar line (roughly) -> clearly wrong
    assert np.median(ev.symmetric_epipolar_errors(result["keypoints0"], moved, K, K, pairs[0].T_0to1)) > 5e-5


# ------------------------------------------------------------------------------ readers
def test_load_hpatches_layout(hpatches):
    pairs = ev.load_hpatches(hpatches)
    assert [p.name for p in pairs] == ["v_astronaut/1-2", "v_astronaut/1-3", "v_coffee/1-2", "v_coffee/1-3"]
    assert pairs[0].H.shape == (3, 3)


def test_load_hpatches_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no HPatches sequence"):
        ev.load_hpatches(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ev.load_hpatches(tmp_path / "missing")
    seq = tmp_path / "v_bad"
    seq.mkdir()
    cv2.imwrite(str(seq / "1.ppm"), photo("camera", 64, 48))
    cv2.imwrite(str(seq / "2.ppm"), photo("camera", 64, 48))
    (seq / "H_1_2").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(ValueError, match="H_1_2"):
        ev.load_hpatches(tmp_path)
    # NaN, or a singular matrix, scored every method 0 (or nan) without a word
    for text in ("nan 0 0\n0 1 0\n0 0 1\n", "0 0 0\n0 0 0\n0 0 0\n", "1e6 2e6 0\n1e6 2e6 0\n0 0 1e6\n"):
        (seq / "H_1_2").write_text(text)
        with pytest.raises(ValueError, match=r"H_1_2 is not an invertible homography"):
            ev.load_hpatches(tmp_path)
    # a homography is defined up to scale: the identity times 1e-5 is the identity
    (seq / "H_1_2").write_text("1e-5 0 0\n0 1e-5 0\n0 0 1e-5\n")
    assert np.allclose(ev.load_hpatches(tmp_path)[0].H, 1e-5 * np.eye(3))
    # an 8x8 image was upscaled to the protocol's size and scored as if it were a photo
    cv2.imwrite(str(tmp_path / "tiny.png"), photo("camera", 8, 8))
    with pytest.raises(ValueError, match=r"tiny.png: image is 8x8 pixels, too small to evaluate on"):
        ev.read_benchmark_image(tmp_path / "tiny.png")


def test_load_pose_pairs_errors(tmp_path, pose_data):
    list_file, _ = pose_data
    pairs = ev.load_pose_pairs(list_file)
    assert len(pairs) == 4 and np.allclose(pairs[0].K0, K)
    bad = tmp_path / "bad.txt"
    bad.write_text("# comment\n\na.png b.png 0 0 1 2 3\n")
    with pytest.raises(ValueError, match=r"bad.txt:3: expected 38 values"):
        ev.load_pose_pairs(bad)
    good = list_file.read_text().splitlines()[0].split()
    for index, value, message in (
        (5, "nan", "NaN or infinite values"),
        (4, "0", "K0: not a camera matrix: focal lengths must be > 0"),
    ):
        broken = [*good]
        broken[index] = value  # K0's first row (fx at 4)
        (list_file.parent / "broken.txt").write_text(" ".join(broken) + "\n")
        with pytest.raises(ValueError, match=rf"broken.txt:1: {message}"):
            ev.load_pose_pairs(list_file.parent / "broken.txt")
    missing = tmp_path / "missing.txt"
    missing.write_text(list_file.read_text())
    with pytest.raises(FileNotFoundError, match="not found"):
        ev.load_pose_pairs(missing)  # images are relative to the list's folder
    with pytest.raises(ValueError, match="cannot read"):
        (tmp_path / "junk.png").write_bytes(b"not an image")
        ev.read_image(tmp_path / "junk.png")


# ------------------------------------------------------------------------------ benchmarks
def test_homography_benchmark_oracle_random_orb(hpatches):
    pairs = ev.load_hpatches(hpatches)
    oracle = ev.evaluate_homography(OracleHomographyMatcher(pairs), pairs, short_side=None)
    assert all(v > 0.999 for v in oracle["auc"].values())
    assert oracle["precision"][3.0] == pytest.approx(1.0)
    assert oracle["failures"] == 0 and oracle["num_matches"] > 100

    random = ev.evaluate_homography(RandomMatcher(), pairs, short_side=None)
    assert random["auc"][10.0] < 0.05
    assert random["precision"][5.0] < 0.05

    orb = ev.evaluate_homography(OpenCVMatcher("orb"), pairs, short_side=None)
    assert orb["auc"][10.0] > 0.5  # mild warps of textured photos
    assert orb["precision"][5.0] > 0.5


def test_short_side_resize_rescales_the_true_homography(hpatches):
    """After both images are resized (LoFTR protocol), SIFT matches still obey the rescaled H."""
    pairs = ev.load_hpatches(hpatches)[:1]
    upscaled = ev.evaluate_homography(OpenCVMatcher("sift"), pairs, short_side=360)
    assert upscaled["auc"][10.0] > 0.6
    assert upscaled["precision"][3.0] > 0.8


def test_pose_benchmark_oracle_and_random(pose_data):
    list_file, scenes = pose_data
    pairs = ev.load_pose_pairs(list_file)
    oracle = ev.evaluate_pose(OraclePoseMatcher(pairs, scenes), pairs)
    assert all(v > 0.99 for v in oracle["auc"].values())
    assert oracle["epipolar_precision"] == pytest.approx(1.0)

    random = ev.evaluate_pose(RandomMatcher(seed=3), pairs)
    assert random["auc"][20.0] < 0.15
    assert random["epipolar_precision"] < 0.1


def test_pose_auc_of_a_known_rotation_error(pose_data):
    """An oracle whose camera 1 is rotated by 7 extra degrees has pose error 7 on all N pairs."""
    list_file, scenes = pose_data
    pairs = ev.load_pose_pairs(list_file)
    tilted = []
    for points, T in scenes:
        T_wrong = T.copy()
        T_wrong[:3, :3] = rotation(0, 0, 7) @ T[:3, :3]
        T_wrong[:3, 3] = rotation(0, 0, 7) @ T[:3, 3]  # a pure extra rotation of camera 1: t direction kept
        tilted.append((points, T_wrong))
    result = ev.evaluate_pose(OraclePoseMatcher(pairs, tilted), pairs)
    errors = [r["pose_error"] for r in result["per_pair"]]
    assert errors == pytest.approx([7.0] * len(pairs), abs=0.05)
    e, n = 7.0, len(pairs)
    assert result["auc"][5.0] == 0.0
    assert result["auc"][10.0] == pytest.approx((10 - e + e / (2 * n)) / 10, abs=0.01)
    assert result["auc"][20.0] == pytest.approx((20 - e + e / (2 * n)) / 20, abs=0.01)


def _homography_batch(H: np.ndarray) -> dict:
    image0 = cv2.cvtColor(photo("astronaut"), cv2.COLOR_BGR2GRAY)
    image1 = cv2.warpPerspective(image0, H, (WIDTH, HEIGHT))
    as_tensor = lambda im: torch.from_numpy(im.astype(np.float32) / 255.0)[None, None]  # noqa: E731
    return {
        "image0": as_tensor(image0),
        "image1": as_tensor(image1),
        "H_0to1": torch.from_numpy(H).float()[None],
    }


def test_coarse_metrics_oracle_and_shifted():
    H = random_homography(np.random.default_rng(5), WIDTH, HEIGHT, jitter=0.08)
    batch = _homography_batch(H)
    stride = 16
    centres = np.stack(np.meshgrid(np.arange(WIDTH // stride), np.arange(HEIGHT // stride)), -1).reshape(
        -1, 2
    )
    centres = (centres + 0.5) * stride - 0.5

    def oracle(image0, image1):
        return {
            "keypoints0": centres,
            "keypoints1": ev.warp_points(centres, H),
            "confidence": np.ones(len(centres)),
        }

    def one_cell_off(image0, image1):
        result = oracle(image0, image1)
        return {**result, "keypoints1": result["keypoints1"] + [stride, 0]}

    def oracle_off_grid(image0, image1):  # a detector-style oracle: arbitrary pixels, exact matches
        points = np.random.default_rng(0).uniform([20, 20], [WIDTH - 20, HEIGHT - 20], size=(300, 2))
        return {"keypoints0": points, "keypoints1": ev.warp_points(points, H), "confidence": np.ones(300)}

    perfect = ev.evaluate_coarse(oracle, [batch], stride)
    assert perfect["precision"] == pytest.approx(1.0)
    assert perfect["recall"] == pytest.approx(1.0)
    assert perfect["epe_px"] == pytest.approx(0.0, abs=1e-3)
    off = ev.evaluate_coarse(one_cell_off, [batch], stride)
    assert off["precision"] == 0.0 and off["recall"] == 0.0
    assert off["epe_px"] == pytest.approx(stride, abs=1e-3)
    anywhere = ev.evaluate_coarse(oracle_off_grid, [batch], stride)
    assert anywhere["precision"] == pytest.approx(1.0) and anywhere["epe_px"] < 1e-3
    random = ev.evaluate_coarse(RandomMatcher(), [batch], stride)
    assert random["precision"] < 0.05


def test_coarse_metrics_on_a_depth_pair():
    """Fronto-parallel plane at depth 4, camera moved 0.2 along x: every pixel shifts by f * 0.2 / 4 = 15 px."""
    T = torch.eye(4)
    T[0, 3] = -0.2  # X1 = X0 - 0.2 (camera moved +0.2 in x): x1 = x0 - 300 * 0.2 / 4 = x0 - 15
    gray = cv2.cvtColor(photo("coffee", WIDTH + 15, HEIGHT), cv2.COLOR_BGR2GRAY).astype(np.float32) / 255
    image0, image1 = gray[:, :WIDTH], gray[:, 15:]  # image1(x - 15) = image0(x), consistent with the pose
    batch = {
        "image0": torch.from_numpy(np.ascontiguousarray(image0))[None, None],
        "image1": torch.from_numpy(np.ascontiguousarray(image1))[None, None],
        "depth0": torch.full((1, HEIGHT, WIDTH), 4.0),
        "depth1": torch.full((1, HEIGHT, WIDTH), 4.0),
        "K0": torch.from_numpy(K).float()[None],
        "K1": torch.from_numpy(K).float()[None],
        "T_0to1": T[None],
    }

    def shifted(dx):
        def match(im0, im1):
            points = np.random.default_rng(1).uniform([0, 0], [WIDTH - 40, HEIGHT - 1], size=(200, 2))
            return {"keypoints0": points, "keypoints1": points + [dx, 0], "confidence": np.ones(200)}

        return match

    exact = ev.evaluate_coarse(shifted(-15.0), [batch], 16)
    assert exact["precision"] == pytest.approx(1.0) and exact["epe_px"] == pytest.approx(0.0, abs=1e-3)
    wrong = ev.evaluate_coarse(shifted(+15.0), [batch], 16)
    assert wrong["precision"] < 0.1 and wrong["epe_px"] == pytest.approx(30.0, abs=1e-3)


def test_run_evaluation_writes_reports(tmp_path, hpatches, pose_data):
    list_file, scenes = pose_data
    h_pairs = ev.load_hpatches(hpatches)
    p_pairs = ev.load_pose_pairs(list_file)[:2]
    oracle_h = OracleHomographyMatcher(h_pairs)
    oracle_p = OraclePoseMatcher(p_pairs, scenes[:2])
    results = ev.run_evaluation(
        {"oracle-h": oracle_h, "random": RandomMatcher()},
        tmp_path / "run",
        homography_pairs=h_pairs,
        homography_kwargs={"short_side": None},
    )
    ev.run_evaluation({"oracle-p": oracle_p}, tmp_path / "pose", pose_pairs=p_pairs)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["methods"]["oracle-h"]["homography"]["auc"]["10.0"] > 0.999
    assert results["methods"]["random"]["homography"]["auc"][10.0] < 0.05
    markdown = (tmp_path / "run" / "results.md").read_text()
    assert "| oracle-h | 100.0 | 100.0 | 100.0 |" in markdown and "| random |" in markdown
    split = saved["methods"]["oracle-h"]["homography"]["by_difficulty"]
    assert split["mild"]["num_pairs"] + split["hard"]["num_pairs"] == len(h_pairs)
    kinds = ("rotated", "zoomed", "rotated_and_zoomed")
    assert sum(split[kind]["num_pairs"] for kind in kinds) == split["hard"]["num_pairs"]
    assert "By difficulty of the true homography" in markdown and "The hard pairs by kind" in markdown
    assert (tmp_path / "run" / "homography_auc.png").stat().st_size > 1000
    assert (tmp_path / "pose" / "pose_auc.png").is_file()
    assert "AUC@5°" in (tmp_path / "pose" / "results.md").read_text()


def test_coarse_report_separates_cell_centres_from_refined_positions():
    """A matcher whose cell centres are right and whose refined points are exact: EPE cell > 0, refined 0."""
    H = random_homography(np.random.default_rng(6), WIDTH, HEIGHT, jitter=0.05)
    batch = _homography_batch(H)
    stride = 16
    grid = np.stack(np.meshgrid(np.arange(WIDTH // stride), np.arange(HEIGHT // stride)), -1).reshape(-1, 2)
    centres = (grid + 0.5) * stride - 0.5

    def refined_oracle(image0, image1):
        truth = ev.warp_points(centres, H)
        cells = (np.floor((truth + 0.5) / stride) + 0.5) * stride - 0.5  # the true cell's centre
        return {
            "keypoints0": centres,
            "keypoints1": truth,
            "confidence": np.ones(len(centres)),
            "coarse_keypoints1": cells,
        }

    result = ev.evaluate_coarse(refined_oracle, [batch], stride)
    gain = result["correct_cells"]
    assert gain["num_matches"] > 50
    assert gain["refined_epe_median_px"] < 0.1 < 2.0 < gain["coarse_epe_median_px"] < 8.0
    assert "matches whose coarse cell is right" in ev.markdown_report({"methods": {"m": {"coarse": result}}})


@pytest.mark.parametrize(("angle", "scale"), [(40.0, 2.5), (-10.0, 0.5), (0.0, 1.0)])
def test_rotation_and_zoom_of_a_known_similarity(angle: float, scale: float) -> None:
    width, height = 640, 480
    centre = ((width - 1) / 2, (height - 1) / 2)
    similarity = np.vstack([cv2.getRotationMatrix2D(centre, angle, scale), [0, 0, 1]])
    # plus a perspective part that is 1 at the centre and a translation: neither changes the answer
    shift = np.array([[1, 0, 17.0], [0, 1, -9.0], [0, 0, 1]])
    rotation, zoom = ev.homography_rotation_zoom(shift @ similarity, width, height)
    assert rotation == pytest.approx(abs(angle), abs=1e-6)
    assert zoom == pytest.approx(max(scale, 1 / scale), rel=1e-6)


@pytest.mark.parametrize(
    ("rotation", "zoom", "kind"),
    [(30.0, 2.0, "mild"), (31.0, 1.0, "rotated"), (5.0, 2.5, "zoomed"), (45.0, 3.0, "rotated_and_zoomed")],
)
def test_difficulty_of_a_pair(rotation: float, zoom: float, kind: str) -> None:
    from loftr_kd.evaluation.homography import DIFFICULTY_GROUPS, difficulty_of

    assert difficulty_of({"rotation_deg": rotation, "zoom": zoom}) == kind
    assert (kind in DIFFICULTY_GROUPS["hard"]) == (kind != "mild")


def test_pose_pairs_of_held_out_scenes_come_from_their_cameras(tmp_path):
    """Toy scenes: cameras translated along x by 0.2 per view, identity rotation (write_toy_dataset)."""
    from loftr_kd.data.synthetic import write_toy_dataset
    from loftr_kd.evaluation import pose_pairs_from_scenes

    write_toy_dataset(tmp_path, scenes=2, views=4, height=96, width=128, baseline=0.2)
    pairs = pose_pairs_from_scenes(tmp_path)
    assert pairs and all(p.path0.is_file() and p.path1.is_file() for p in pairs)
    for pair in pairs:
        view0, view1 = (int(p.stem) for p in (pair.path0, pair.path1))
        np.testing.assert_allclose(pair.T_0to1[:3, :3], np.eye(3), atol=1e-6)
        np.testing.assert_allclose(pair.T_0to1[:3, 3], [-0.2 * (view1 - view0), 0, 0], atol=1e-6)
    assert len(pose_pairs_from_scenes(tmp_path, max_pairs=2)) == 2


def test_a_pair_set_with_a_file_lost_is_refused_not_shortened(hpatches, tmp_path):
    """A sequence without image 1, or an image without its H_1_k, dropped its pairs without a word."""
    for lost in ("1.png", "H_1_3"):
        root = tmp_path / lost
        shutil.copytree(hpatches, root)
        victim = (
            next((root / "v_coffee").glob(f"{Path(lost).stem}.*"))
            if lost == "1.png"
            else root / "v_coffee" / lost
        )
        victim.unlink()
        expected = (
            r"v_coffee has H_1_2 but no image 1" if lost == "1.png" else r"3\.\w+ has no homography H_1_3"
        )
        with pytest.raises(FileNotFoundError, match=expected):
            ev.load_hpatches(root)


def test_pose_inputs_that_would_score_wrongly_are_refused(tmp_path, pose_data):
    """A K with K[2,2] != 1 scored an exact pose 15 degrees off; a skewed or singular K, a T without a
    baseline (every method fails it) or with no rotation in it were taken."""
    list_file, _ = pose_data
    good = list_file.read_text().splitlines()[0].split()
    scaled = [*good]
    scaled[4:13] = [f"{2 * float(v):.10g}" for v in good[4:13]]  # K0 times 2: the same camera
    (list_file.parent / "scaled.txt").write_text(" ".join(scaled) + "\n")
    np.testing.assert_allclose(ev.load_pose_pairs(list_file.parent / "scaled.txt")[0].K0, K)
    identity = ["1", "0", "0", "0", "0", "1", "0", "0", "0", "0", "1", "0", "0", "0", "0", "1"]
    squashed = ["3", "0", "0", "0.1", "0", "0.1", "0", "0", "0", "0", "1", "0", "0", "0", "0", "1"]
    for index, values, message in (
        (4, ["500", "3", "320"], "K0: a skewed camera matrix"),
        (
            4,
            ["500", "0", "320", "0", "500", "240", "0.1", "0", "1"],
            r"K0: not a camera matrix: its last row",
        ),
        (22, identity, "T_0to1 has no translation"),
        (22, squashed, "T_0to1's 3x3 block is not a rotation"),
    ):
        broken = [*good]
        broken[index : index + len(values)] = values
        (list_file.parent / "broken.txt").write_text(" ".join(broken) + "\n")
        with pytest.raises(ValueError, match=rf"broken.txt:1: {message}"):
            ev.load_pose_pairs(list_file.parent / "broken.txt")


def test_scene_pairs_are_named_by_their_scene(tmp_path):
    """Every scene names its images 00000000.jpg ...: pairs of two scenes shared a name in per_pair."""
    from loftr_kd.data.synthetic import write_toy_dataset
    from loftr_kd.evaluation import pose_pairs_from_scenes

    write_toy_dataset(tmp_path, scenes=2, views=3, height=96, width=128, baseline=0.2)
    names = [
        p.name
        for p in pose_pairs_from_scenes(
            tmp_path, sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and (p / "cams").is_dir())
        )
    ]
    assert len(set(names)) == len(names) and all("/" in n for n in names)
