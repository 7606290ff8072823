"""Pixel-level match quality: one definition for validation, ``loftr-kd-evaluate`` and the INT8 report
(:func:`homography_match_stats`).

A predicted match ``(p0, p1)`` is *judged* when the exact image1 position ``t1`` of ``p0`` is known
(depth or homography ground truth: visible, in view, not occluded) and its *end-point error* is
``||p1 - t1||`` in the pixels of the images the matcher was given. It is *correct at t px* when that
error is below ``t``. Figures (:meth:`MatchStats.summary`):

- ``precision@{1,3,5}px``: correct / judged at each threshold;
- ``precision``: the same at :data:`RECALL_THRESHOLD_PX` (5 px);
- ``recall``: image0 cells with a ground-truth coarse match (``CoarseGroundTruth.match_ids >= 0``) that
  hold at least one match correct at :data:`RECALL_THRESHOLD_PX`, over all such cells;
- ``f1``: of precision and recall at :data:`RECALL_THRESHOLD_PX` (selects the best checkpoint);
- ``matches_per_pair``; ``epe_median_px`` / ``epe_p90_px`` / ``epe_mean_px`` over judged matches.

Counts are kept as one fixed-size float tensor (with a histogram of errors for the percentiles), so
statistics of several batches, or of DDP ranks, merge by addition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torchmetrics import Metric

from loftr_kd.geometry import CoarseGrid, warp_points_homography
from loftr_kd.supervision import coarse_ground_truth

__all__ = [
    "PIXEL_THRESHOLDS",
    "RECALL_THRESHOLD_PX",
    "MatchStats",
    "MatchStatsMetric",
    "confidence_mae",
    "homography_match_stats",
    "match_stats",
    "student_match_stats",
]

PIXEL_THRESHOLDS = (1.0, 3.0, 5.0)
# 5 px: above the half-diagonal of an 8-px cell, so a coarse-only teacher's exact-cell matches count,
# and well below a 16-px cell, so a coarse-only student's cell centres count only when lucky.
RECALL_THRESHOLD_PX = 5.0
HISTOGRAM_MAX_PX = 256.0
HISTOGRAM_BINS = 5120  # 0.05 px bins; larger errors land in the last (overflow) bin, reported as inf
_COUNTS = ("pairs", "predicted", "judged", "gt_cells", "recalled_cells", "epe_sum") + tuple(
    f"correct@{t:g}px" for t in PIXEL_THRESHOLDS
)


@dataclass
class MatchStats:
    """Additive match statistics (see the module docstring)."""

    counts: torch.Tensor = field(default_factory=lambda: torch.zeros(len(_COUNTS), dtype=torch.float64))
    histogram: torch.Tensor = field(
        default_factory=lambda: torch.zeros(HISTOGRAM_BINS + 1, dtype=torch.float64)
    )

    def __add__(self, other: MatchStats) -> MatchStats:
        return MatchStats(
            self.counts + other.counts.to(self.counts), self.histogram + other.histogram.to(self.histogram)
        )

    def as_tensor(self) -> torch.Tensor:
        """Counts and histogram in one tensor (for ``all_gather`` / ``all_reduce``)."""
        return torch.cat([self.counts, self.histogram])

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> MatchStats:
        """Inverse of :meth:`as_tensor`."""
        values = values.detach().to("cpu", torch.float64)
        return cls(values[: len(_COUNTS)].clone(), values[len(_COUNTS) :].clone())

    def count(self, name: str) -> float:
        """One named count (``pairs``, ``judged``, ``correct@3px``, ...)."""
        return float(self.counts[_COUNTS.index(name)])

    def _percentile(self, q: float) -> float:
        total = float(self.histogram.sum())
        if total == 0:
            return float("nan")
        cumulative = torch.cumsum(self.histogram, 0)
        index = int(torch.searchsorted(cumulative, torch.tensor(q * total, dtype=torch.float64)))
        if index >= HISTOGRAM_BINS:
            return float("inf")
        return (index + 0.5) * HISTOGRAM_MAX_PX / HISTOGRAM_BINS

    def summary(self) -> dict[str, float]:
        """Precision at 1/3/5 px, recall, F1, matches per pair and end-point-error statistics."""
        judged = max(self.count("judged"), 1.0)
        out = {f"precision@{t:g}px": self.count(f"correct@{t:g}px") / judged for t in PIXEL_THRESHOLDS}
        precision = out[f"precision@{RECALL_THRESHOLD_PX:g}px"]
        recall = self.count("recalled_cells") / max(self.count("gt_cells"), 1.0)
        out["precision"] = precision  # the name older logs and reports use
        out["recall"] = recall
        out["f1"] = 2 * precision * recall / max(precision + recall, 1e-9)
        out["matches_per_pair"] = self.count("predicted") / max(self.count("pairs"), 1.0)
        out["epe_median_px"] = self._percentile(0.5)
        out["epe_p90_px"] = self._percentile(0.9)
        out["epe_mean_px"] = self.count("epe_sum") / judged if self.count("judged") else float("nan")
        out["num_pairs"] = self.count("pairs")
        return out


def match_stats(
    points1: torch.Tensor | np.ndarray,
    truth1: torch.Tensor | np.ndarray,
    judged: torch.Tensor | np.ndarray,
    cells0: torch.Tensor | np.ndarray,
    gt_match_ids: torch.Tensor | np.ndarray,
) -> MatchStats:
    """Statistics of one image pair's matches.

    Args:
        points1: ``(N, 2)`` predicted image1 positions.
        truth1: ``(N, 2)`` exact image1 positions of the matches' image0 points.
        judged: ``(N,)`` bool, ``truth1`` is known.
        cells0: ``(N,)`` image0 cell of each match's image0 point (``CoarseGrid.cell_of``), ``-1`` off grid.
        gt_match_ids: ``(L0,)`` coarse ground truth of image0's cells, ``-1`` = none.

    Returns:
        :class:`MatchStats` of this pair.
    """
    points1, truth1 = (
        torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v) for v in (points1, truth1)
    )
    points1 = points1.detach().double().cpu().reshape(-1, 2)
    truth1 = truth1.detach().double().cpu().reshape(-1, 2)
    judged = torch.as_tensor(judged).detach().cpu().reshape(-1).bool()
    cells0 = torch.as_tensor(cells0).detach().cpu().reshape(-1).long()
    gt_ids = torch.as_tensor(gt_match_ids).detach().cpu().reshape(-1).long()
    if not (len(points1) == len(truth1) == len(judged) == len(cells0)):
        raise ValueError(
            f"points1 ({len(points1)}), truth1 ({len(truth1)}), judged ({len(judged)}) and cells0 "
            f"({len(cells0)}) must have one length"
        )
    error = torch.linalg.vector_norm(points1 - truth1, dim=-1)  # (N,)
    error = torch.where(judged & torch.isfinite(error), error, torch.full_like(error, float("inf")))
    judged = judged & torch.isfinite(error)
    stats = MatchStats()
    values = {
        "pairs": 1.0,
        "predicted": float(len(points1)),
        "judged": float(judged.sum()),
        "gt_cells": float((gt_ids >= 0).sum()),
        "epe_sum": float(error[judged].sum()) if judged.any() else 0.0,
    }
    for t in PIXEL_THRESHOLDS:
        values[f"correct@{t:g}px"] = float((judged & (error < t)).sum())
    on_grid = (cells0 >= 0) & (cells0 < len(gt_ids))
    good = judged & (error < RECALL_THRESHOLD_PX) & on_grid
    good_cells = cells0[good]
    values["recalled_cells"] = float(torch.unique(good_cells[gt_ids[good_cells] >= 0]).numel())
    for name, value in values.items():
        stats.counts[_COUNTS.index(name)] = value
    bins = (error[judged] / HISTOGRAM_MAX_PX * HISTOGRAM_BINS).floor().clamp(max=HISTOGRAM_BINS).long()
    stats.histogram += torch.bincount(bins, minlength=HISTOGRAM_BINS + 1).double()
    return stats


def student_match_stats(
    points1: torch.Tensor,
    match_ids: torch.Tensor,
    truth1: torch.Tensor,
    truth_valid: torch.Tensor,
    gt_match_ids: torch.Tensor,
) -> MatchStats:
    """Statistics of a batch of fixed-shape student (or teacher) outputs at image0 cell centres.

    Args:
        points1: ``(B, L0, 2)`` predicted image1 position of each image0 cell's match.
        match_ids: ``(B, L0)`` matched image1 cell, ``-1`` = none (selects the predictions).
        truth1: ``(B, L0, 2)`` exact image1 position of each image0 cell centre (``CoarseGroundTruth.points1``).
        truth_valid: ``(B, L0)`` bool, ``truth1`` is known.
        gt_match_ids: ``(B, L0)`` coarse ground truth at the same grid.

    Returns:
        :class:`MatchStats` summed over the batch.
    """
    total = MatchStats()
    cells = torch.arange(match_ids.shape[1], device=match_ids.device)
    for b in range(match_ids.shape[0]):
        keep = match_ids[b] >= 0
        total = total + match_stats(
            points1[b][keep], truth1[b][keep], truth_valid[b][keep], cells[keep], gt_match_ids[b]
        )
    return total


def homography_match_stats(
    match_ids: np.ndarray,
    points0: np.ndarray,
    points1: np.ndarray,
    h_0to1: np.ndarray,
    height: int,
    width: int,
    stride: int,
) -> MatchStats:
    """Statistics of one pair's fixed-shape outputs (an exported graph's) against an exact homography.

    Args:
        match_ids: ``(L0,)`` matched image1 cell, ``-1`` = none.
        points0: ``(L0, 2)`` image0 match positions.
        points1: ``(L0, 2)`` image1 match positions (refined where the model refines).
        h_0to1: ``(3, 3)`` image0 -> image1 homography.
        height: image height (both images).
        width: image width (both images).
        stride: coarse stride of the grid.

    Returns:
        :class:`MatchStats` of this pair.
    """
    ids = torch.as_tensor(np.asarray(match_ids).reshape(-1).astype(np.int64))
    keep = ids >= 0
    H = torch.as_tensor(np.asarray(h_0to1, np.float32))[None]
    p0 = torch.as_tensor(np.asarray(points0, np.float32).reshape(-1, 2))[keep]
    truth, valid = warp_points_homography(p0[None], H, (height, width), (height, width))
    image = torch.zeros(1, 1, height, width)
    gt = coarse_ground_truth({"image0": image, "image1": image, "H_0to1": H}, stride)
    cells = torch.arange(len(ids))[keep]
    p1 = torch.as_tensor(np.asarray(points1, np.float32).reshape(-1, 2))[keep]
    return match_stats(p1, truth[0], valid[0], cells, gt.match_ids[0])


def cell_positions(match_ids: torch.Tensor, grid: CoarseGrid) -> torch.Tensor:
    """``(B, L0, 2)`` image1 cell centres of coarse ``match_ids`` (a teacher's, or a coarse-only model's)."""
    return grid.ids_to_pixels(match_ids)


class MatchStatsMetric(Metric):
    """:class:`MatchStats` as a torchmetrics ``Metric``: per-batch statistics added up, and summed over
    DDP ranks by torchmetrics itself when computed (each rank validates its own share of the pairs).

    ``update`` takes :func:`student_match_stats`'s arguments; ``compute`` gives :meth:`MatchStats.summary`.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("counts", torch.zeros(len(_COUNTS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "histogram", torch.zeros(HISTOGRAM_BINS + 1, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(
        self,
        points1: torch.Tensor,
        match_ids: torch.Tensor,
        truth1: torch.Tensor,
        truth_valid: torch.Tensor,
        gt_match_ids: torch.Tensor,
    ) -> None:
        stats = student_match_stats(points1, match_ids, truth1, truth_valid, gt_match_ids)
        # New tensors, not in-place sums: the states may come from a reset inside inference mode.
        self.counts = self.counts + stats.counts.to(self.counts)
        self.histogram = self.histogram + stats.histogram.to(self.histogram)

    def stats(self) -> MatchStats:
        """The (rank-summed, once computed) statistics so far."""
        return MatchStats(self.counts.detach().cpu(), self.histogram.detach().cpu())

    def compute(self) -> dict[str, float]:
        return self.stats().summary()


def confidence_mae(confidence: torch.Tensor, gt_match_ids: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between the confidence matrix and the binary ground-truth matrix (paper's MAE).

    Args:
        confidence: ``(B, L0, L1)`` dual-softmax confidence.
        gt_match_ids: ``(B, L0)`` ground-truth match in image1, ``-1`` = none.
    """
    target = torch.zeros_like(confidence, dtype=torch.float32)
    rows = gt_match_ids >= 0
    target[rows] = target[rows].scatter(-1, gt_match_ids[rows].unsqueeze(-1), 1.0)
    return (confidence.float() - target).abs().mean()
