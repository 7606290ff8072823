"""Robust-fit validation (loftr_kd.validation): one-pass matches, fitted models, AUCs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from loftr_kd.geometry import CoarseGrid, warp_points
from loftr_kd.models.matching import CoarseMatchOutput
from loftr_kd.validation import FitValidationConfig, RobustFitMetric, one_pass_matches, pair_fit_errors

GRID = CoarseGrid(16, 6, 8)  # 128 x 96 pixels


def _output(confidence: torch.Tensor, positions: torch.Tensor | None = None) -> CoarseMatchOutput:
    empty = torch.zeros(confidence.shape[:2], dtype=torch.long)
    return CoarseMatchOutput(
        confidence, confidence, empty, empty.float(), candidate_ids=empty, candidate_points1=positions
    )


def test_one_pass_matches_keep_mutual_cells_above_the_threshold_off_the_border() -> None:
    cells = GRID.num_cells
    confidence = torch.zeros(1, cells, cells)
    inner = [i for i in range(cells) if GRID.border_mask(1)[i]]
    a, b, c = inner[:3]
    confidence[0, a, b] = 0.9  # kept
    confidence[0, b, c] = 0.04  # below the threshold
    confidence[0, c, a] = 0.5  # kept
    confidence[0, 0, a] = 0.3  # border row: removed (and not the maximum of column a)
    positions = GRID.centers().unsqueeze(0).clone()  # candidate positions, replaced by "refined" ones below
    positions[0, a] = torch.tensor([40.5, 41.5])
    positions[0, c] = GRID.centers()[a]
    [(points0, points1)] = one_pass_matches(_output(confidence, positions), GRID, 0.05, border_removal=1)
    np.testing.assert_allclose(points0, GRID.centers()[[a, c]].numpy())
    np.testing.assert_allclose(points1, [[40.5, 41.5], GRID.centers()[a].tolist()])


def test_one_pass_matches_pair_corner_queries_with_their_own_matches() -> None:
    """A student with corner queries: image0's point of each match is its row's query
    (``candidate_points0``), the point its image-1 position is the match of, not the cell centre."""
    from loftr_kd.models.refinement import Refinement
    from loftr_kd.models.student import build_student

    cells = GRID.num_cells
    confidence = torch.zeros(1, cells, cells)
    a, b = 20, 21
    confidence[0, a, b] = confidence[0, b, a] = 0.9
    queries = GRID.centers().unsqueeze(0) + torch.tensor([2.5, -1.5])  # off the cell centres
    out = _output(confidence, GRID.centers().unsqueeze(0).clone())._replace(candidate_points0=queries)
    [(points0, _)] = one_pass_matches(out, GRID, 0.05, border_removal=0)
    np.testing.assert_allclose(points0, queries[0, [a, b]].numpy())
    # the student fills candidate_points0 with its queries (unmasked) and points0 with the matched ones
    torch.manual_seed(0)
    model = build_student(input_height=96, input_width=128, refine="corr", refine_query="corner").eval()
    assert isinstance(model.refinement, Refinement)
    image0 = torch.rand(1, 1, 96, 128)
    with torch.no_grad():
        out = model(image0, image0.clone())
    expected = model.refinement.refine_described(
        *(model.refinement.describe(f) for f in out.fine_maps),
        out.candidate_ids,
        GRID,
        model.refinement.queries(image0),
    ).points0
    torch.testing.assert_close(out.candidate_points0, expected)
    matched = out.match_ids >= 0
    torch.testing.assert_close(out.points0[matched], expected[matched])


def test_one_pass_matches_drop_positions_outside_image1() -> None:
    cells = GRID.num_cells
    confidence = torch.zeros(1, cells, cells)
    a, b = 20, 21
    confidence[0, a, b] = confidence[0, b, a] = 0.9
    positions = GRID.centers().unsqueeze(0).clone()
    positions[0, a] = torch.tensor([-3.0, 10.0])
    [(points0, _)] = one_pass_matches(_output(confidence, positions), GRID, 0.05, border_removal=0)
    np.testing.assert_allclose(points0, GRID.centers()[[b]].numpy())


def _homography_batch(h: np.ndarray) -> dict:
    return {"image0": torch.zeros(1, 1, 96, 128), "H_0to1": torch.from_numpy(h).float()[None]}


def test_exact_matches_fit_the_true_homography_and_wrong_ones_fail() -> None:
    h = np.array([[1.05, 0.02, 3.0], [-0.01, 0.97, -2.0], [1e-4, 0.0, 1.0]])
    points0 = GRID.centers().double().numpy()
    exact = pair_fit_errors(_homography_batch(h), [(points0, warp_points(points0, h))], FitValidationConfig())
    assert exact["pose"] == [] and exact["homography"][0] < 0.05
    rng = np.random.default_rng(0)
    shuffled = warp_points(points0, h)[rng.permutation(len(points0))]
    wrong = pair_fit_errors(_homography_batch(h), [(points0, shuffled)], FitValidationConfig())
    assert wrong["homography"][0] > 10.0
    none = pair_fit_errors(_homography_batch(h), [(points0[:3], points0[:3])], FitValidationConfig())
    assert none["homography"] == [math.inf]  # too few matches: a failed pair, not a crash


def test_exact_matches_of_a_scene_give_the_true_pose() -> None:
    rng = np.random.default_rng(1)
    K = np.array([[100.0, 0, 64], [0, 100.0, 48], [0, 0, 1]])
    X0 = np.c_[rng.uniform(-2, 2, 200), rng.uniform(-1.5, 1.5, 200), rng.uniform(4, 8, 200)]
    angle = math.radians(8)
    R = np.array([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    t = np.array([-0.5, 0.05, 0.1])
    X1 = X0 @ R.T + t
    project = lambda X: (X[:, :2] / X[:, 2:]) * [K[0, 0], K[1, 1]] + K[:2, 2]  # noqa: E731
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    batch = {
        "image0": torch.zeros(1, 1, 96, 128),
        "K0": torch.from_numpy(K)[None],
        "K1": torch.from_numpy(K)[None],
        "T_0to1": torch.from_numpy(T)[None],
    }
    errors = pair_fit_errors(batch, [(project(X0), project(X1))], FitValidationConfig())
    assert errors["homography"] == [] and errors["pose"][0] < 0.5
    # Seeded per pair: the same pair gives the same error again, whatever ran in between.
    assert pair_fit_errors(batch, [(project(X0), project(X1))], FitValidationConfig()) == errors
    unlabelled = pair_fit_errors(
        {"image0": batch["image0"]}, [(project(X0), project(X1))], FitValidationConfig()
    )
    assert unlabelled == {"homography": [], "pose": []}


def test_metric_gives_each_kinds_auc_and_their_mean() -> None:
    metric = RobustFitMetric()
    metric.update({"homography": [0.0, math.inf], "pose": []})
    metric.update({"homography": [], "pose": [2.5]})
    summary = metric.compute()
    assert summary["homography_pairs"] == 2 and summary["pose_pairs"] == 1
    # one perfect pair of two (AUC 0.5 at any threshold); one pose error of 2.5 deg: AUC@5 = 1 - 2.5/2/5
    assert summary["auc_homography@3px"] == pytest.approx(0.5)
    assert summary["auc_pose@5deg"] == pytest.approx(0.75)
    assert summary["auc_pose@20deg"] == pytest.approx(1 - 2.5 / 2 / 20)
    assert summary["auc@5"] == pytest.approx((0.5 + 0.75) / 2)
    metric.reset()
    metric.update({"homography": [1.0], "pose": []})
    assert set(metric.compute()) == {
        "auc_homography@3px",
        "auc_homography@5px",
        "auc_homography@10px",
        "homography_pairs",
        "auc@5",
    }


def test_a_kind_no_rank_saw_is_left_out_after_a_ddp_sync() -> None:
    metric = RobustFitMetric()
    metric.update({"homography": [], "pose": [1.0]})
    metric.homography = torch.zeros(0, dtype=torch.float64)  # what a sync makes of a list no rank filled
    assert "auc_homography@5px" not in metric.compute()
