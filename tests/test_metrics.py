"""One metrics module: pixel precision, recall, F1, EPE percentiles, additive statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from loftr_kd.geometry import CoarseGrid
from loftr_kd.metrics import MatchStats, homography_match_stats, match_stats, student_match_stats


def test_known_errors_give_known_figures() -> None:
    truth = torch.zeros(5, 2)
    errors = torch.tensor([0.5, 2.0, 4.0, 10.0, 0.0])
    points = torch.stack([errors, torch.zeros(5)], -1)  # error = x offset
    judged = torch.tensor([True, True, True, True, False])  # the last one's truth is unknown
    cells0 = torch.tensor([0, 1, 2, 3, 4])
    gt_ids = torch.tensor([7, 7, -1, 7, 7, -1])  # cells 0, 1, 3, 4 have a ground-truth match
    summary = match_stats(points, truth, judged, cells0, gt_ids).summary()
    assert summary["precision@1px"] == pytest.approx(1 / 4)
    assert summary["precision@3px"] == pytest.approx(2 / 4)
    assert summary["precision@5px"] == pytest.approx(3 / 4) == summary["precision"]
    # correct at 5 px and with a ground-truth match: cells 0, 1 (cell 2 has none); of 4 such cells
    assert summary["recall"] == pytest.approx(2 / 4)
    assert summary["f1"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    assert summary["matches_per_pair"] == 5
    assert summary["epe_mean_px"] == pytest.approx((0.5 + 2 + 4 + 10) / 4)
    assert summary["epe_median_px"] == pytest.approx(2.0, abs=0.05)  # 2nd of 4 sorted errors
    assert summary["epe_p90_px"] == pytest.approx(10.0, abs=0.05)


def test_stats_add_up_and_survive_a_tensor_round_trip() -> None:
    def one_match(error_px: float) -> MatchStats:
        point = torch.tensor([[error_px, 0.0]])
        return match_stats(
            point, torch.zeros(1, 2), torch.tensor([True]), torch.tensor([0]), torch.tensor([0])
        )

    a, b = one_match(1.0), one_match(9.0)
    both = MatchStats.from_tensor((a + b).as_tensor())
    assert both.count("pairs") == 2 and both.count("judged") == 2 and both.count("correct@5px") == 1
    assert both.summary()["epe_mean_px"] == pytest.approx(5.0)
    assert math.isnan(MatchStats().summary()["epe_median_px"])


def test_student_stats_select_the_matched_cells() -> None:
    points1 = torch.tensor([[[3.0, 0.0], [100.0, 100.0], [0.5, 0.0]]])
    match_ids = torch.tensor([[4, -1, 2]])  # the middle cell has no match: its position is not judged
    truth = torch.zeros(1, 3, 2)
    stats = student_match_stats(points1, match_ids, truth, torch.ones(1, 3, dtype=torch.bool), match_ids)
    assert (
        stats.count("predicted") == 2 and stats.count("correct@1px") == 1 and stats.count("correct@5px") == 2
    )


def test_homography_match_stats_against_known_warps():
    stride, h, w = 16, 4, 6
    grid = CoarseGrid(stride, h, w)
    centres = grid.centers().numpy()
    ids = np.arange(h * w)
    identity = np.eye(3)
    exact = homography_match_stats(ids, centres, centres, identity, h * stride, w * stride, stride)
    assert exact.count("correct@1px") == h * w and exact.summary()["epe_median_px"] < 0.1
    # a shift by 2.5 px: matches at the cell centres are 2.5 px off, correct at 3 px but not at 1 px
    shift = np.array([[1, 0, 2.5], [0, 1, 0], [0, 0, 1]], float)
    off = homography_match_stats(ids, centres, centres, shift, h * stride, w * stride, stride).summary()
    assert off["precision@1px"] == 0.0 and off["precision@3px"] == pytest.approx(1.0)
    # the same shift with refined positions that follow it: exact again
    moved = homography_match_stats(ids, centres, centres + [2.5, 0], shift, h * stride, w * stride, stride)
    assert moved.summary()["precision@1px"] == pytest.approx(1.0)
    none = homography_match_stats(
        np.full(h * w, -1), centres, centres, identity, h * stride, w * stride, stride
    )
    assert none.count("predicted") == 0 and none.count("judged") == 0
