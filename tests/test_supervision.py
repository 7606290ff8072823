"""Ground truth against independent truths: identity pose, analytic plane homography, occluders, shifts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from loftr_kd.supervision import (
    DEFAULT_DEPTH_TOLERANCE,
    CoarseGroundTruth,
    cell_centers,
    coarse_ground_truth,
    point_ground_truth,
    points_to_cells,
    warp_points_depth,
    warp_points_homography,
)

H_IMG, W_IMG = 96, 128  # small images keep the tests fast; grids 12x16 (stride 8) and 6x8 (stride 16)
K = np.array([[110.0, 0.0, 63.5], [0.0, 105.0, 47.5], [0.0, 0.0, 1.0]])


def rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def pose(R: np.ndarray, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def plane_depth1(R: np.ndarray, t: np.ndarray, z_plane: float, hw=(H_IMG, W_IMG)) -> np.ndarray:
    """Depth seen by camera1 of the plane Z0 = z_plane (camera0 frame), by ray casting every pixel."""
    v, u = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float64)
    rays = np.linalg.inv(K) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])  # camera1 rays with z = 1
    # X0 = R^T (X1 - t); its z is z_plane: (R^T)[2] . (lam * ray - t) = z_plane.
    r3 = R.T[2]
    lam = (z_plane + r3 @ t) / (r3 @ rays)
    return lam.reshape(hw)


def plane_homography(R: np.ndarray, t: np.ndarray, z_plane: float) -> np.ndarray:
    """H = K1 (R - t n^T / d) K0^-1 for the plane n^T X + d = 0 with n = (0, 0, -1), d = z_plane."""
    n = np.array([0.0, 0.0, -1.0])
    return K @ (R - np.outer(t, n) / z_plane) @ np.linalg.inv(K)


def depth_batch(samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Batch of the ARCHITECTURE contract from (T_0to1, depth0, depth1) per sample."""
    f = lambda a: torch.as_tensor(np.stack(a), dtype=torch.float32)  # noqa: E731
    b = len(samples)
    T = f([s[0] for s in samples])
    return {
        "image0": torch.zeros(b, 1, H_IMG, W_IMG),
        "image1": torch.zeros(b, 1, H_IMG, W_IMG),
        "depth0": f([s[1] for s in samples]),
        "depth1": f([s[2] for s in samples]),
        "K0": f([K] * b),
        "K1": f([K] * b),
        "T_0to1": T,
        "T_1to0": torch.linalg.inv(T),
    }


def homography_batch(Hs: list[np.ndarray]) -> dict[str, torch.Tensor]:
    b = len(Hs)
    return {
        "image0": torch.zeros(b, 1, H_IMG, W_IMG),
        "image1": torch.zeros(b, 1, H_IMG, W_IMG),
        "H_0to1": torch.as_tensor(np.stack(Hs), dtype=torch.float32),
    }


def apply_h(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    ph = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ H.T
    return ph[:, :2] / ph[:, 2:]


def mutual_cells_numpy(H: np.ndarray, stride: int, hw=(H_IMG, W_IMG)) -> np.ndarray:
    """Independent reference: mutual nearest cells under a homography, written with plain numpy loops."""
    h, w = hw[0] // stride, hw[1] // stride
    centres = np.array(
        [((c + 0.5) * stride - 0.5, (r + 0.5) * stride - 0.5) for r in range(h) for c in range(w)]
    )

    def cells(pts):
        out = []
        for x, y in pts:
            inside = -0.5 <= x < hw[1] - 0.5 and -0.5 <= y < hw[0] - 0.5
            c, r = math.floor((x + 0.5) / stride), math.floor((y + 0.5) / stride)
            out.append(r * w + c if inside and 0 <= c < w and 0 <= r < h else -1)
        return out

    fwd, bwd = cells(apply_h(H, centres)), cells(apply_h(np.linalg.inv(H), centres))
    return np.array([j if j >= 0 and bwd[j] == i else -1 for i, j in enumerate(fwd)])


# --------------------------------------------------------------------------------------------- grid


def test_cell_centers_by_hand():
    expected = torch.tensor([[3.5, 3.5], [11.5, 3.5], [19.5, 3.5], [3.5, 11.5], [11.5, 11.5], [19.5, 11.5]])
    torch.testing.assert_close(cell_centers(2, 3, 8), expected)
    assert cell_centers(2, 3, 16, dtype=torch.float64).dtype == torch.float64
    assert cell_centers(30, 40, 16).shape == (1200, 2)
    with pytest.raises(ValueError):
        cell_centers(2, 3, 0)


def test_points_to_cells_nearest_centre_and_off_grid():
    # cell 0 at stride 8 covers [-0.5, 7.5) on each axis; its centre is 3.5
    pts = torch.tensor(
        [[3.5, 3.5], [-0.5, 0.0], [7.49, 7.49], [7.5, 3.5], [-0.6, 3.5], [127.4, 95.4], [float("nan"), 1]]
    )
    cells = points_to_cells(pts, 8, 12, 16)
    assert cells.tolist() == [0, 0, 0, 1, -1, 11 * 16 + 15, -1]


# ------------------------------------------------------------------------------------- depth path


def test_identity_pose_maps_every_cell_to_itself():
    rng = np.random.default_rng(0)
    depth = rng.uniform(2.0, 9.0, (H_IMG, W_IMG))  # any depth: identity pose ignores it
    batch = depth_batch([(np.eye(4), depth, depth)])
    for stride in (8, 16):
        gt = coarse_ground_truth(batch, stride)
        assert isinstance(gt, CoarseGroundTruth)
        n = (H_IMG // stride) * (W_IMG // stride)
        assert gt.match_ids.dtype == torch.int64 and gt.match_ids.shape == (1, n)
        assert gt.match_ids[0].tolist() == list(range(n))
        assert gt.valid.all()
        torch.testing.assert_close(
            gt.points1[0], cell_centers(H_IMG // stride, W_IMG // stride, stride), atol=1e-4, rtol=0
        )


@pytest.mark.parametrize(
    ("R", "t"),
    [
        (np.eye(3), np.array([0.35, -0.2, 0.5])),  # pure translation, with zoom out
        (rot_y(6.0) @ rot_x(-4.0), np.array([-0.4, 0.15, -0.6])),  # rotation + translation, zoom in
    ],
)
def test_fronto_parallel_plane_matches_analytic_homography(R, t):
    z = 4.0
    depth0 = np.full((H_IMG, W_IMG), z)
    batch = depth_batch([(pose(R, t), depth0, plane_depth1(R, t, z))])
    H = plane_homography(R, t, z)
    for stride in (8, 16):
        h, w = H_IMG // stride, W_IMG // stride
        gt = coarse_ground_truth(batch, stride)
        centres = cell_centers(h, w, stride, dtype=torch.float64).numpy()
        expected = apply_h(H, centres)
        inside = (expected[:, 0] >= -0.5) & (expected[:, 0] < W_IMG - 0.5)
        inside &= (expected[:, 1] >= -0.5) & (expected[:, 1] < H_IMG - 0.5)
        # every visible centre is valid, at the analytic position
        valid = gt.valid[0].numpy()
        assert (valid == inside).all()
        np.testing.assert_allclose(gt.points1[0].numpy()[inside], expected[inside], atol=2e-3)
        # match ids equal the cell of the analytic landing point, and exactly the mutual ones are kept
        ids = gt.match_ids[0].numpy()
        cells = np.floor((expected + 0.5) / stride).astype(int)
        matched = ids >= 0
        assert matched.sum() > 0.4 * h * w
        np.testing.assert_array_equal(ids[matched], (cells[:, 1] * w + cells[:, 0])[matched])
        np.testing.assert_array_equal(ids, mutual_cells_numpy(H, stride))


def test_depth_path_agrees_with_homography_path_on_a_plane():
    R, t, z = rot_y(-5.0), np.array([0.3, 0.1, 0.2]), 5.0
    from_depth = coarse_ground_truth(
        depth_batch([(pose(R, t), np.full((H_IMG, W_IMG), z), plane_depth1(R, t, z))]), 8
    )
    from_h = coarse_ground_truth(homography_batch([plane_homography(R, t, z)]), 8)
    torch.testing.assert_close(from_depth.match_ids, from_h.match_ids)
    torch.testing.assert_close(from_depth.valid, from_h.valid)
    torch.testing.assert_close(from_depth.points1, from_h.points1, atol=2e-3, rtol=0)


def test_point_truth_of_any_points_on_a_plane_by_depth_and_by_homography():
    """point_ground_truth (the truth of corner queries) warps arbitrary sub-pixel points by the analytic plane
    homography along the depth path, agrees with the homography path, and at the cell centres equals the coarse
    truth's points1 / valid."""
    R, t, z = rot_y(6.0) @ rot_x(-4.0), np.array([-0.4, 0.15, -0.6]), 4.0
    depth = depth_batch([(pose(R, t), np.full((H_IMG, W_IMG), z), plane_depth1(R, t, z))])
    H = plane_homography(R, t, z)
    rng = np.random.default_rng(0)
    points = rng.uniform([2.0, 2.0], [W_IMG - 3.0, H_IMG - 3.0], size=(40, 2))
    truth, valid = point_ground_truth(depth, torch.from_numpy(points).float()[None], 16)
    expected = apply_h(H, points)
    inside = (expected[:, 0] >= -0.5) & (expected[:, 0] < W_IMG - 0.5)
    inside &= (expected[:, 1] >= -0.5) & (expected[:, 1] < H_IMG - 0.5)
    assert inside.sum() > 20 and (valid[0].numpy() == inside).all()
    np.testing.assert_allclose(truth[0].numpy()[inside], expected[inside], atol=2e-3)
    assert (truth[0][~valid[0]] == 0).all()
    by_h = point_ground_truth(homography_batch([H]), torch.from_numpy(points).float()[None], 16)
    torch.testing.assert_close(by_h[0][valid], truth[valid], atol=2e-3, rtol=0)
    centres = cell_centers(H_IMG // 16, W_IMG // 16, 16)[None]
    gt = coarse_ground_truth(depth, 16)
    at_centres = point_ground_truth(depth, centres, 16)
    torch.testing.assert_close(at_centres[0], gt.points1)
    assert torch.equal(at_centres[1], gt.valid)
    with pytest.raises(ValueError, match="points0 must be"):
        point_ground_truth(depth, centres[0], 16)


def slanted_plane(R: np.ndarray, t: np.ndarray, normal0: np.ndarray, d: float):
    """Depth maps of the plane ``normal0 . X0 = d`` (camera0 frame) in both views, by ray casting every pixel,
    and its homography ``H = K (R + t normal0^T / d) K^-1`` (X1 = R X0 + t on the plane)."""
    v, u = np.mgrid[0:H_IMG, 0:W_IMG].astype(np.float64)
    rays = np.linalg.inv(K) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])  # z = 1 rays
    depth0 = d / (normal0 @ rays)
    normal1 = R @ normal0  # the plane in camera1: normal1 . X1 = d + normal1 . t
    depth1 = (d + normal1 @ t) / (normal1 @ rays)
    H = K @ (R + np.outer(t, normal0) / d) @ np.linalg.inv(K)
    return depth0.reshape(H_IMG, W_IMG), depth1.reshape(H_IMG, W_IMG), H


def test_slanted_plane_targets_are_exact_at_half_integer_points():
    """On a slanted plane depth changes from pixel to pixel, so a cell centre (a half-integer point) needs its
    own depth, not its nearest pixel's: points1 and the corner-query truth equal the plane's homography."""
    R, t = rot_y(5.0) @ rot_x(-3.0), np.array([-0.35, 0.1, -0.3])
    normal0 = rot_y(-40.0) @ rot_x(25.0) @ np.array([0.0, 0.0, 1.0])  # depth spans ~3-7 across image0
    depth0, depth1, H = slanted_plane(R, t, normal0, 4.0)
    assert depth0.max() / depth0.min() > 1.8
    batch = depth_batch([(pose(R, t), depth0, depth1)])
    for stride in (8, 16):
        gt = coarse_ground_truth(batch, stride)
        expected = apply_h(
            H, cell_centers(H_IMG // stride, W_IMG // stride, stride, dtype=torch.float64).numpy()
        )
        inside = (expected[:, 0] >= -0.5) & (expected[:, 0] < W_IMG - 0.5)
        inside &= (expected[:, 1] >= -0.5) & (expected[:, 1] < H_IMG - 0.5)
        assert inside.sum() > 0.5 * len(inside) and (gt.valid[0].numpy() == inside).all()
        error = np.linalg.norm(gt.points1[0].numpy()[inside] - expected[inside], axis=1)
        assert error.max() < 2e-3  # the nearest pixel's depth: p90 ~0.3 px
        np.testing.assert_array_equal(gt.match_ids[0].numpy(), mutual_cells_numpy(H, stride))
    # corner queries of fine strides 2 and 4 sit at half-integers too; random sub-pixel points anywhere
    corners = [(q + 0.5) * f - 0.5 for f in (2, 4) for q in range(2, 10)]
    points = np.array([(x, y) for x in corners for y in corners[::3]])
    points = np.concatenate([points, np.random.default_rng(1).uniform(1.0, [W_IMG - 2, H_IMG - 2], (100, 2))])
    truth, valid = point_ground_truth(batch, torch.from_numpy(points).float()[None], 16)
    expected = apply_h(H, points)
    inside = (expected[:, 0] >= -0.5) & (expected[:, 0] < W_IMG - 0.5)
    inside &= (expected[:, 1] >= -0.5) & (expected[:, 1] < H_IMG - 0.5)
    assert inside.sum() > 50 and (valid[0].numpy() == inside).all()
    error = np.linalg.norm(truth[0].numpy()[inside] - expected[inside], axis=1)
    assert error.max() < 2e-3


@pytest.fixture(scope="module")
def synthetic_pairs(tmp_path_factory):
    """Pairs of the project's synthetic scenes (planar boxes on a ground plane, exact rendered depth)."""
    from loftr_kd.data.blendedmvs import BlendedMVSPairDataset
    from loftr_kd.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    names = generate_dataset(root, scenes=2, views=3, seed=7, height=120, width=160, log=lambda line: None)
    dataset = BlendedMVSPairDataset(root, names, height=120, width=160)
    return [dataset.load_pair(i) for i in range(len(dataset))]


def test_depth_targets_on_synthetic_scenes_equal_the_exact_pixel_warps(synthetic_pairs):
    """Independent truth for a cell centre (a half-integer point): the mean of the exact warps of the 4 pixel
    centres around it, each with its own rendered depth, where those 4 lie on one plane (a homography there,
    so the mean is the centre's correspondence to ~1e-3 px)."""
    errors = []
    for pair in synthetic_pairs:
        batch = {k: v[None] for k, v in pair.items() if torch.is_tensor(v)}
        depth0, K0, K1 = (pair[k].double().numpy() for k in ("depth0", "K0", "K1"))
        T = pair["T_0to1"].double().numpy()
        for stride in (8, 16):
            gt = coarse_ground_truth(batch, stride)
            centres = cell_centers(120 // stride, 160 // stride, stride, dtype=torch.float64).numpy()
            truth, depths = np.zeros_like(centres), []
            for dx, dy in ((-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)):
                pixels = (centres + [dx, dy]).round().astype(int)
                z = depth0[pixels[:, 1], pixels[:, 0]]
                xyz = (np.c_[pixels, np.ones(len(pixels))] @ np.linalg.inv(K0).T) * z[:, None]
                projected = (xyz @ T[:3, :3].T + T[:3, 3]) @ K1.T
                truth += projected[:, :2] / projected[:, 2:] / 4
                depths.append(z)
            depths = np.array(depths)
            smooth = (depths.min(0) > 0) & (depths.max(0) < 1.02 * depths.min(0))
            check = gt.valid[0].numpy() & smooth
            errors.append(np.linalg.norm(gt.points1[0].numpy()[check] - truth[check], axis=1))
    errors = np.concatenate(errors)
    assert len(errors) > 1000
    # with the nearest pixel's depth: median 0.06, p90 0.34, p99 0.9 px
    assert np.median(errors) < 2e-3 and np.percentile(errors, 90) < 0.01 and np.percentile(errors, 99) < 0.02


def test_occluder_in_view1_is_rejected_both_ways():
    # Background plane at 5 in view0; view1 (shifted sideways) also sees a nearer object at depth 2 over
    # a pixel box. Image0 cells landing on the box must be rejected, as must the box's cells warped back.
    R, t, z = np.eye(3), np.array([0.2, 0.0, 0.0]), 5.0
    depth1_clean = plane_depth1(R, t, z)
    depth1 = depth1_clean.copy()
    box = (slice(24, 72), slice(40, 88))  # rows, cols in image1
    depth1[box] = 2.0
    gt_clean = coarse_ground_truth(depth_batch([(pose(R, t), np.full((H_IMG, W_IMG), z), depth1_clean)]), 8)
    gt = coarse_ground_truth(depth_batch([(pose(R, t), np.full((H_IMG, W_IMG), z), depth1)]), 8)

    landing = apply_h(plane_homography(R, t, z), cell_centers(12, 16, 8, dtype=torch.float64).numpy())
    # the depth test reads the 2x2 pixels around the landing point: all on the box -> occluded; none -> clear
    lo = np.floor(landing).astype(int)
    x_in = (lo[:, 0] >= 40) & (lo[:, 0] + 1 < 88)
    y_in = (lo[:, 1] >= 24) & (lo[:, 1] + 1 < 72)
    x_out = (lo[:, 0] + 1 < 40) | (lo[:, 0] >= 88)
    y_out = (lo[:, 1] + 1 < 24) | (lo[:, 1] >= 72)
    on_box, off_box = x_in & y_in, x_out | y_out
    assert on_box.sum() >= 20
    ids, ids_clean = gt.match_ids[0].numpy(), gt_clean.match_ids[0].numpy()
    assert (ids[on_box] == -1).all() and (~gt.valid[0].numpy()[on_box]).all()
    assert (ids_clean[on_box] >= 0).sum() >= 20  # without the occluder these cells matched
    np.testing.assert_array_equal(ids[off_box], ids_clean[off_box])  # nothing else changed
    # backward direction: no image0 cell is matched *to* a box cell of image1
    box_cells = {r * 16 + c for r in range(3, 9) for c in range(5, 11)}
    assert not box_cells & set(ids[ids >= 0].tolist())


def test_depth_tolerance_and_unknown_depth():
    depth = np.full((H_IMG, W_IMG), 5.0)
    noisy = depth * 1.03  # 3 % relative disagreement
    batch = depth_batch([(np.eye(4), depth, noisy)])
    assert (coarse_ground_truth(batch, 8, depth_tolerance=0.05).match_ids >= 0).all()
    assert (coarse_ground_truth(batch, 8, depth_tolerance=0.02).match_ids == -1).all()
    assert DEFAULT_DEPTH_TOLERANCE > 0.03

    holes0, holes1 = depth.copy(), depth.copy()
    holes0[:8, :8] = 0.0  # cell 0 of image0 unknown
    holes1[88:, 120:] = 0.0  # last cell of image1 unknown
    gt = coarse_ground_truth(depth_batch([(np.eye(4), holes0, holes1)]), 8)
    ids = gt.match_ids[0]
    assert ids[0] == -1 and ids[-1] == -1 and not gt.valid[0, 0] and not gt.valid[0, -1]
    assert (ids[1:-1] == torch.arange(1, 191)).all()


def test_out_of_view_and_behind_camera():
    depth = np.full((H_IMG, W_IMG), 5.0)
    # sideways translation: the right part of image0 leaves image1
    t = np.array([1.6, 0.0, 0.0])  # X1 = X0 + t: image points move right by 1.6 * 110 / 5 = 35.2 px
    gt = coarse_ground_truth(depth_batch([(pose(np.eye(3), t), depth, plane_depth1(np.eye(3), t, 5.0))]), 8)
    landing_x = cell_centers(12, 16, 8)[:, 0] + 35.2
    out = landing_x >= W_IMG - 0.5
    assert out.any() and (gt.match_ids[0][out] == -1).all() and (~gt.valid[0][out]).all()
    assert (gt.match_ids[0][~out] >= 0).all()

    # camera1 moved 10 units forward past the plane at 5: every point is behind it. A huge tolerance
    # leaves the behind-camera test alone to reject them (the mirrored projection lands inside image1).
    points0 = cell_centers(12, 16, 8).unsqueeze(0)
    T = torch.as_tensor(pose(np.eye(3), [0.0, 0.0, -10.0]), dtype=torch.float32)[None]
    Kt = torch.as_tensor(K, dtype=torch.float32)[None]
    d = torch.full((1, H_IMG, W_IMG), 5.0)
    points1, valid = warp_points_depth(points0, d, d, Kt, Kt, T, depth_tolerance=100.0)
    assert not valid.any()
    assert torch.isfinite(points1).all()


def test_batch_with_different_poses_per_sample():
    z = 4.0
    depth0 = np.full((H_IMG, W_IMG), z)
    samples = [
        (np.eye(3), np.zeros(3)),
        (rot_y(6.0), np.array([0.3, -0.1, 0.2])),
        (np.eye(3), np.array([-0.5, 0.0, 0.4])),
    ]
    batch = depth_batch([(pose(R, t), depth0, plane_depth1(R, t, z)) for R, t in samples])
    for stride in (8, 16):
        gt = coarse_ground_truth(batch, stride)
        assert gt.match_ids.shape == (3, (H_IMG // stride) * (W_IMG // stride))
        for b, (R, t) in enumerate(samples):
            np.testing.assert_array_equal(
                gt.match_ids[b].numpy(), mutual_cells_numpy(plane_homography(R, t, z), stride)
            )


def test_missing_t_1to0_is_inverted_and_bad_inputs_raise():
    R, t, z = rot_y(4.0), np.array([0.2, 0.0, 0.1]), 4.0
    batch = depth_batch([(pose(R, t), np.full((H_IMG, W_IMG), z), plane_depth1(R, t, z))])
    full = coarse_ground_truth(batch, 8)
    del batch["T_1to0"]
    torch.testing.assert_close(coarse_ground_truth(batch, 8).match_ids, full.match_ids)

    with pytest.raises(KeyError, match="depth0"):
        coarse_ground_truth({k: v for k, v in batch.items() if k != "depth0"}, 8)
    with pytest.raises(ValueError, match="stride"):
        coarse_ground_truth(batch, 0)
    bad = dict(batch, depth1=batch["depth1"][:, :-1])
    with pytest.raises(ValueError, match="depth1"):
        coarse_ground_truth(bad, 8)
    with pytest.raises(ValueError, match="K0"):
        warp_points_depth(
            torch.zeros(1, 4, 2),
            batch["depth0"],
            batch["depth1"],
            batch["K0"][:, :2],
            batch["K1"],
            batch["T_0to1"],
        )


def test_full_size_batch_is_sparse_and_runs_under_autocast():
    # 640x480 at stride 8 is 4800 cells: a dense (HW)^2 matrix would be 23 M entries per sample; the
    # ground truth only ever holds O(HW) tensors, so this runs in milliseconds.
    b, h, w = 2, 480, 640
    Kf = torch.tensor([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]]).expand(b, 3, 3)
    batch = {
        "image0": torch.zeros(b, 1, h, w),
        "image1": torch.zeros(b, 1, h, w),
        "depth0": torch.full((b, h, w), 3.0),
        "depth1": torch.full((b, h, w), 3.0),
        "K0": Kf,
        "K1": Kf,
        "T_0to1": torch.eye(4).expand(b, 4, 4),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gt8 = coarse_ground_truth(batch, 8)
        gt16 = coarse_ground_truth(batch, 16)
    assert gt8.points1.dtype == torch.float32
    assert (gt8.match_ids == torch.arange(4800)).all() and (gt16.match_ids == torch.arange(1200)).all()


# -------------------------------------------------------------------------------- homography path


def test_homography_shift_by_one_cell():
    for stride in (8, 16):
        h, w = H_IMG // stride, W_IMG // stride
        shift_x = np.array([[1.0, 0, stride], [0, 1, 0], [0, 0, 1]])
        shift_y = np.array([[1.0, 0, 0], [0, 1, stride], [0, 0, 1]])
        gt = coarse_ground_truth(homography_batch([shift_x, shift_y]), stride)
        idx = torch.arange(h * w)
        col, row = idx % w, idx // w
        torch.testing.assert_close(gt.match_ids[0], torch.where(col < w - 1, idx + 1, -1))
        torch.testing.assert_close(gt.match_ids[1], torch.where(row < h - 1, idx + w, -1))
        torch.testing.assert_close(
            gt.points1[0][col < w - 1], cell_centers(h, w, stride)[col < w - 1] + torch.tensor([stride, 0.0])
        )


def test_strides_8_and_16_on_the_same_batch():
    # a 16 px shift is two cells at stride 8 and one at stride 16
    batch = homography_batch([np.array([[1.0, 0, 16], [0, 1, 0], [0, 0, 1]])])
    gt8, gt16 = coarse_ground_truth(batch, 8), coarse_ground_truth(batch, 16)
    assert gt8.match_ids.shape == (1, 192) and gt16.match_ids.shape == (1, 48)
    assert gt8.match_ids[0, 0] == 2 and gt8.match_ids[0, 14] == -1
    assert gt16.match_ids[0, 0] == 1 and gt16.match_ids[0, 7] == -1
    torch.testing.assert_close(gt8.points1[0, 0], torch.tensor([19.5, 3.5]))
    torch.testing.assert_close(gt16.points1[0, 0], torch.tensor([23.5, 7.5]))


def test_homography_zoom_rotation_matches_numpy_reference():
    a = math.radians(30.0)
    centre = np.array([[1, 0, 63.5], [0, 1, 47.5], [0, 0, 1]])
    zoom_rot = np.array(
        [[1.6 * math.cos(a), -1.6 * math.sin(a), 0], [1.6 * math.sin(a), 1.6 * math.cos(a), 0], [0, 0, 1]]
    )
    H = centre @ zoom_rot @ np.linalg.inv(centre)
    H[2, :2] = [3e-4, -2e-4]  # some perspective
    gt = coarse_ground_truth(homography_batch([H]), 8)
    np.testing.assert_array_equal(gt.match_ids[0].numpy(), mutual_cells_numpy(H, 8))
    # zoom 1.6: several image0 cells land in the same image1 cell, only one of them is mutual
    ids = gt.match_ids[0][gt.match_ids[0] >= 0]
    assert ids.unique().numel() == ids.numel()


def test_homography_sign_does_not_matter_and_horizon_is_invalid():
    minus_identity = torch.tensor([[[-1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]]])  # the identity, projectively
    pts = cell_centers(12, 16, 8).unsqueeze(0)
    points1, valid = warp_points_homography(pts, minus_identity, (H_IMG, W_IMG), (H_IMG, W_IMG))
    torch.testing.assert_close(points1, pts)
    assert valid.all()
    gt = coarse_ground_truth(homography_batch([-np.eye(3)]), 8)
    assert (gt.match_ids[0] == torch.arange(192)).all()

    # horizon at x = 100 in image0 (w = 1 - 0.01 x): the point (120, 0) lies beyond it, yet its mirrored
    # projection (-10 / -0.2, 0) = (50, 0) is inside image1. Image0's centre (w > 0) is on the visible side.
    H = torch.tensor([[[1.0, 0, -130.0], [0, 1.0, 0], [-0.01, 0, 1.0]]])
    point = torch.tensor([[[120.0, 0.0]]])
    for sign in (1.0, -1.0):
        points1, valid = warp_points_homography(point, sign * H, (H_IMG, W_IMG), (H_IMG, W_IMG))
        torch.testing.assert_close(points1, torch.tensor([[[50.0, 0.0]]]))
        assert not valid.any()


def test_images_of_different_sizes():
    batch = {
        "image0": torch.zeros(1, 1, H_IMG, W_IMG),
        "image1": torch.zeros(1, 1, 48, 64),
        "H_0to1": torch.eye(3)[None],
    }
    gt = coarse_ground_truth(batch, 8)  # image0 grid 12x16, image1 grid 6x8
    r, c = torch.arange(192) // 16, torch.arange(192) % 16
    expected = torch.where((r < 6) & (c < 8), r * 8 + c, -1)
    torch.testing.assert_close(gt.match_ids[0], expected)
    # an image1 without a single cell at this stride: nothing matches, nothing crashes
    tiny = dict(batch, image1=torch.zeros(1, 1, 8, 8))
    assert (coarse_ground_truth(tiny, 16).match_ids == -1).all()
