"""LoFTR's dual-softmax coarse matching with fixed-shape outputs.

Matches come out per image-0 cell (``match_ids``, ``-1`` = none) instead of LoFTR's variable-length
``(b_ids, i_ids, j_ids)`` lists, so the whole model exports with static shapes. No boolean indexing,
``nonzero``, ``-inf`` / ``1e9`` fills (fp16-safe), training branches or device checks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from loftr_kd.geometry import CoarseGrid


class CoarseMatchOutput(NamedTuple):
    """Student output (see docs/ARCHITECTURE.md).

    Attributes:
        similarity: dual-softmax logits ``(B, L0, L1)``: feature dot product / C / temperature.
        confidence: ``softmax(sim, dim=1) * softmax(sim, dim=2)``, ``(B, L0, L1)``.
        match_ids: ``(B, L0)`` int64 index of the matched image-1 cell, ``-1`` = none.
        match_confidence: ``(B, L0)`` confidence of each match, ``0`` where none.
        candidate_ids: ``(B, L0)`` best image-1 cell of every image-0 row (unmasked; what refinement and
            its loss use).
        points0: ``(B, L0, 2)`` xy pixels of each match in image 0 (its cell centre), ``-1`` where none.
        points1: ``(B, L0, 2)`` xy pixels of each match in image 1: refined (sub-pixel) when the model
            has a refinement stage, else the matched cell's centre; ``-1`` where none.
        match_uncertainty: ``(B, L0)`` standard deviation of ``points1`` in pixels (refinement's spread,
            or ``stride / sqrt(6)`` for a cell centre), ``0`` where none.
        candidate_points1: ``(B, L0, 2)`` ``points1`` of every row's candidate, unmasked.
        candidate_uncertainty: ``(B, L0)`` ``match_uncertainty`` of every row's candidate, unmasked.
        refine_logits: ``(B, L0, K)`` refinement window scores (refining students only; for losses).
        fine_maps: the two backbone maps the refinement read (refining students only), so a loss can run
            :meth:`~loftr_kd.models.refinement.Refinement.forward` on other candidates.
        candidate_points0: ``(B, L0, 2)`` image-0 point of every row, unmasked: its cell centre, or its
            corner query (``refine_query="corner"``), which ``candidate_points1`` is the match of.
        queries0: ``(B, L0)`` int64 position of each image-0 cell's corner query inside its block
            (:func:`~loftr_kd.models.refinement.corner_queries`; ``forward`` of corner-query students only), so
            a loss's :meth:`~loftr_kd.models.student.CoarseLoFTRStudent.refine` does not look for them again
            (``(B, L0, k)`` with ``refine_points=k > 1``).
        more_points0: ``(B, L0, k-1, 2)`` each match's further points in image 0 (``refine_points=k > 1``),
            ``-1`` where no match; ``None`` otherwise. :func:`match_entries` lists them after the first ones.
        more_points1: ``(B, L0, k-1, 2)`` their refined positions in image 1, ``-1`` where no match.
        more_uncertainty: ``(B, L0, k-1)`` their uncertainty in pixels (the first point's: the window they
            share), ``0`` where no match.

    The fields after ``match_confidence`` are filled by the student; ``match_ids`` / ``match_confidence`` are
    the coarse result every model (teacher included) gives.
    """

    similarity: torch.Tensor
    confidence: torch.Tensor
    match_ids: torch.Tensor
    match_confidence: torch.Tensor
    candidate_ids: torch.Tensor | None = None
    points0: torch.Tensor | None = None
    points1: torch.Tensor | None = None
    match_uncertainty: torch.Tensor | None = None
    candidate_points1: torch.Tensor | None = None
    candidate_uncertainty: torch.Tensor | None = None
    refine_logits: torch.Tensor | None = None
    fine_maps: tuple[torch.Tensor, torch.Tensor] | None = None
    candidate_points0: torch.Tensor | None = None
    queries0: torch.Tensor | None = None
    more_points0: torch.Tensor | None = None
    more_points1: torch.Tensor | None = None
    more_uncertainty: torch.Tensor | None = None


class MatchEntries(NamedTuple):
    """A student's published matches, one entry per image0 point (what every backend and export gives).

    Entry ``e`` belongs to image0 cell ``e % L0``: the first ``L0`` entries are the cells' first points
    (``CoarseMatchOutput.points0``), the next ``L0`` their second points, and so on (``refine_points``).
    ``match_ids`` / ``match_confidence`` repeat per point.
    """

    match_ids: torch.Tensor  # (B, k*L0) int64, -1 = none
    match_confidence: torch.Tensor  # (B, k*L0)
    points0: torch.Tensor  # (B, k*L0, 2)
    points1: torch.Tensor  # (B, k*L0, 2)
    match_uncertainty: torch.Tensor  # (B, k*L0)


def match_entries(out: CoarseMatchOutput) -> MatchEntries:
    """The matches of a student's output with its further points per cell (``refine_points``) listed after
    the first ones, point-major (:class:`MatchEntries`); the fields themselves where there are none."""
    if out.more_points0 is None:
        return MatchEntries(
            out.match_ids, out.match_confidence, out.points0, out.points1, out.match_uncertainty
        )
    b, l0, extra = out.more_uncertainty.shape

    def after(first: torch.Tensor, more: torch.Tensor) -> torch.Tensor:  # (B, L0, ...), (B, L0, k-1, ...)
        more = more.transpose(1, 2).reshape(b, extra * l0, *more.shape[3:])  # point-major
        return torch.cat([first, more], dim=1)

    def repeated(values: torch.Tensor) -> torch.Tensor:  # (B, L0) -> (B, k*L0)
        return values.repeat(1, extra + 1)

    return MatchEntries(
        repeated(out.match_ids),
        repeated(out.match_confidence),
        after(out.points0, out.more_points0),
        after(out.points1, out.more_points1),
        after(out.match_uncertainty, out.more_uncertainty),
    )


def similarity_matrix(feat0: torch.Tensor, feat1: torch.Tensor, temperature: float) -> torch.Tensor:
    """LoFTR's dual-softmax logits.

    Each side is divided by ``sqrt(C)`` before the product (as LoFTR does, which keeps fp16 in range),
    so the result is ``feat0 @ feat1^T / C / temperature``.

    Args:
        feat0: ``(B, L0, C)``.
        feat1: ``(B, L1, C)``.
        temperature: dual-softmax temperature.

    Returns:
        Similarity ``(B, L0, L1)``.
    """
    scale = feat0.shape[-1] ** 0.5
    return torch.matmul(feat0 / scale, (feat1 / scale).transpose(1, 2)) / temperature  # (B, L0, L1)


def dual_softmax(similarity: torch.Tensor) -> torch.Tensor:
    """Dual-softmax confidence ``softmax(sim, dim=1) * softmax(sim, dim=2)``.

    Args:
        similarity: ``(B, L0, L1)``.

    Returns:
        Confidence ``(B, L0, L1)`` in ``[0, 1]``.
    """
    return F.softmax(similarity, dim=1) * F.softmax(similarity, dim=2)


def border_mask(height: int, width: int, border: int) -> torch.Tensor:
    """Cells at least ``border`` cells away from every edge (LoFTR's ``mask_border``).

    Args:
        height: grid height ``h``.
        width: grid width ``w``.
        border: number of cells removed on each side (``0`` keeps all).

    Returns:
        Bool mask ``(h * w,)``, row-major (``i = r * w + c``), ``True`` = may match.
    """
    return CoarseGrid(1, height, width).border_mask(border)


def mutual_nearest_matches(
    confidence: torch.Tensor,
    threshold: float,
    valid0: torch.Tensor,
    valid1: torch.Tensor,
    return_candidates: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Fixed-shape coarse matches: mutual nearest neighbours above a threshold, borders removed.

    Cell ``i`` of image 0 matches ``j = argmax_j conf[i, j]`` when ``i`` is also the maximum of column
    ``j``, ``conf[i, j] > threshold``, and neither cell is masked out. This is LoFTR's
    ``get_coarse_match`` rule, except that ties within a row go to the first maximum.

    Args:
        confidence: ``(B, L0, L1)``.
        threshold: minimum confidence (strictly greater).
        valid0: bool ``(L0,)``, cells of image 0 allowed to match (e.g. :func:`border_mask`).
        valid1: bool ``(L1,)``, cells of image 1 allowed to match.

        return_candidates: also return every row's best image-1 cell ``(B, L0)`` (unmasked).

    Returns:
        ``match_ids`` ``(B, L0)`` int64, ``-1`` = no match, and ``match_confidence`` ``(B, L0)`` with
        the confidence's dtype, ``0`` where no match [, candidates].
    """
    row_max, row_arg = confidence.max(dim=2)  # (B, L0), (B, L0) best image-1 cell per image-0 cell
    col_max = confidence.max(dim=1).values  # (B, L1)
    mutual = col_max.gather(1, row_arg) == row_max  # (B, L0) i is also the best of column j
    valid = mutual & (row_max > threshold) & valid0[None, :] & valid1[row_arg]  # (B, L0)
    match_ids = torch.where(valid, row_arg, torch.full_like(row_arg, -1))  # (B, L0)
    match_confidence = torch.where(valid, row_max, torch.zeros_like(row_max))  # (B, L0)
    if return_candidates:
        return match_ids, match_confidence, row_arg
    return match_ids, match_confidence


class CoarseMatching(nn.Module):
    """Similarity, dual-softmax confidence and fixed-shape matches from coarse features.

    The border mask is derived from each call's grids (cheap integer arithmetic, folded to a constant in
    a static export and computed at run time in a dynamic-shape one).

    Args:
        height: coarse grid height ``h`` of the configured input.
        width: coarse grid width ``w``.
        temperature: dual-softmax temperature.
        threshold: minimum match confidence.
        border_removal: border cells removed on each side.
    """

    def __init__(
        self, height: int, width: int, temperature: float, threshold: float, border_removal: int
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.threshold = threshold
        self.border_removal = border_removal
        self.grid = (height, width)

    def _valid(self, grid: CoarseGrid | tuple[int, int], reference: torch.Tensor) -> torch.Tensor:
        """Border mask ``(h*w,)`` of a grid, on ``reference``'s device."""
        if not isinstance(grid, CoarseGrid):
            grid = CoarseGrid(1, *grid)
        return grid.border_mask(self.border_removal, device=reference.device)

    def forward(
        self,
        feat0: torch.Tensor,
        feat1: torch.Tensor,
        grid0: CoarseGrid | tuple[int, int] | None = None,
        grid1: CoarseGrid | tuple[int, int] | None = None,
    ) -> CoarseMatchOutput:
        """Match two sets of coarse features.

        Args:
            feat0: image 0 features ``(B, L0, C)``, row-major over grid ``grid0``.
            feat1: image 1 features ``(B, L1, C)``.
            grid0: image 0's grid (or its ``(h0, w0)``); default: the configured grid.
            grid1: image 1's grid; default: the configured grid.

        Returns:
            :class:`CoarseMatchOutput` with the coarse fields and ``candidate_ids``.
        """
        similarity = similarity_matrix(feat0, feat1, self.temperature)  # (B, L0, L1)
        confidence = dual_softmax(similarity)  # (B, L0, L1)
        valid0 = self._valid(grid0 or self.grid, feat0)  # (L0,)
        valid1 = self._valid(grid1 or self.grid, feat1)  # (L1,)
        match_ids, match_confidence, candidates = mutual_nearest_matches(
            confidence, self.threshold, valid0, valid1, return_candidates=True
        )
        return CoarseMatchOutput(
            similarity, confidence, match_ids, match_confidence, candidate_ids=candidates
        )
