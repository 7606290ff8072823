"""Benchmark against exact ground truth: the matches of data-module batches (depth or homography pairs)
scored by :mod:`loftr_kd.metrics` (precision at 1 / 3 / 5 px, recall of ground-truth cells, end-point
error), as in validation."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from loftr_kd.evaluation.matching import MatcherFn, timed_matches
from loftr_kd.geometry import DEFAULT_DEPTH_TOLERANCE, CoarseGrid, warp_points_depth, warp_points_homography
from loftr_kd.metrics import MatchStats, match_stats
from loftr_kd.supervision import coarse_ground_truth

__all__ = ["evaluate_coarse"]


def _true_positions(batch: dict, b: int, keypoints0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact image1 positions and visibility of image0 keypoints of sample ``b`` (depth or homography)."""
    points = torch.from_numpy(np.asarray(keypoints0, np.float32).reshape(1, -1, 2))
    hw1 = tuple(batch["image1"].shape[-2:])
    item = {k: v[b : b + 1].float().cpu() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if "H_0to1" in item:
        points1, valid = warp_points_homography(points, item["H_0to1"], hw1)
    else:
        points1, valid = warp_points_depth(
            points,
            item["depth0"],
            item["depth1"],
            item["K0"],
            item["K1"],
            item["T_0to1"],
            DEFAULT_DEPTH_TOLERANCE,
        )
    return points1[0].numpy(), valid[0].numpy()


def evaluate_coarse(
    matcher: MatcherFn, batches: Iterable[dict], stride: int, max_pairs: int | None = None
) -> dict:
    """Pixel-level precision/recall/end-point error of a matcher on batches of depth or homography pairs.

    Each batch is a data-module batch (``image0/1`` in [0, 1], plus ``H_0to1`` or depth, intrinsics
    and pose). The exact image1 position of every predicted keypoint0 comes from the same warp as the
    training ground truth, the coarse ground truth (for recall) from ``coarse_ground_truth`` at
    ``stride``; the figures are those of :mod:`loftr_kd.metrics` (the same as validation's), plus
    ``precision`` (= ``precision@5px``), ``epe_px`` (mean) and ``num_matches`` for older reports.
    """
    total = MatchStats()
    # matches whose coarse cell is right, at the cell centre and at the returned (refined) position
    cells_coarse, cells_refined = MatchStats(), MatchStats()
    pairs = 0
    for batch in batches:
        gt = coarse_ground_truth(batch, stride)
        images0, images1 = batch["image0"].cpu().numpy(), batch["image1"].cpu().numpy()
        grid = CoarseGrid.for_image(images0.shape[2], images0.shape[3], stride, exact=False)

        def cells_of(points: np.ndarray, grid: CoarseGrid = grid) -> torch.Tensor:
            return grid.cell_of(torch.from_numpy(np.ascontiguousarray(points, np.float32)))

        for b in range(images0.shape[0]):
            if max_pairs is not None and pairs >= max_pairs:
                break
            result, _ = timed_matches(matcher, images0[b, 0], images1[b, 0])
            truth, valid = _true_positions(batch, b, result["keypoints0"])
            cells0 = cells_of(result["keypoints0"])
            total = total + match_stats(result["keypoints1"], truth, valid, cells0, gt.match_ids[b])
            coarse1 = result.get("coarse_keypoints1")
            if coarse1 is not None and len(coarse1) == len(truth):
                right = valid & (cells_of(coarse1) == cells_of(truth)).numpy()
                # at the cell centres: image1's against the truth of image0's own cell centre (with corner
                # queries image0's returned point is elsewhere in its cell; otherwise it is that centre, and
                # its truth is the one above)
                coarse0 = result.get("coarse_keypoints0")
                same = coarse0 is None or np.array_equal(coarse0, result["keypoints0"])
                truth_c, valid_c = (truth, right) if same else _true_positions(batch, b, coarse0)
                right_c = right & valid_c
                cells_coarse = cells_coarse + match_stats(coarse1, truth_c, right_c, cells0, gt.match_ids[b])
                cells_refined = cells_refined + match_stats(
                    result["keypoints1"], truth, right_c, cells0, gt.match_ids[b]
                )
            pairs += 1
        if max_pairs is not None and pairs >= max_pairs:
            break
    summary = total.summary()
    if cells_coarse.count("judged"):
        summary["correct_cells"] = {
            "num_matches": cells_coarse.count("judged"),
            **{f"coarse_{k}": v for k, v in cells_coarse.summary().items() if k.startswith("epe")},
            **{f"refined_{k}": v for k, v in cells_refined.summary().items() if k.startswith("epe")},
        }
    summary.update(
        num_pairs=pairs,
        epe_px=summary["epe_mean_px"],
        num_matches=summary["matches_per_pair"],
    )
    return summary
