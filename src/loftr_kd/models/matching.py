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


class CoarseMatchOutput(NamedTuple):
    """Student output (see docs/ARCHITECTURE.md).

    Attributes:
        similarity: dual-softmax logits ``(B, L0, L1)``: feature dot product / C / temperature.
        confidence: ``softmax(sim, dim=1) * softmax(sim, dim=2)``, ``(B, L0, L1)``.
        match_ids: ``(B, L0)`` int64 index of the matched image-1 cell, ``-1`` = none.
        match_confidence: ``(B, L0)`` confidence of each match, ``0`` where none.
    """

    similarity: torch.Tensor
    confidence: torch.Tensor
    match_ids: torch.Tensor
    match_confidence: torch.Tensor


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
    rows = torch.arange(height)
    cols = torch.arange(width)
    keep_rows = (rows >= border) & (rows < height - border)  # (h,)
    keep_cols = (cols >= border) & (cols < width - border)  # (w,)
    return (keep_rows[:, None] & keep_cols[None, :]).reshape(-1)  # (h*w,)


def mutual_nearest_matches(
    confidence: torch.Tensor, threshold: float, valid0: torch.Tensor, valid1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-shape coarse matches: mutual nearest neighbours above a threshold, borders removed.

    Cell ``i`` of image 0 matches ``j = argmax_j conf[i, j]`` when ``i`` is also the maximum of column
    ``j``, ``conf[i, j] > threshold``, and neither cell is masked out. This is LoFTR's
    ``get_coarse_match`` rule, except that ties within a row go to the first maximum.

    Args:
        confidence: ``(B, L0, L1)``.
        threshold: minimum confidence (strictly greater).
        valid0: bool ``(L0,)``, cells of image 0 allowed to match (e.g. :func:`border_mask`).
        valid1: bool ``(L1,)``, cells of image 1 allowed to match.

    Returns:
        ``match_ids`` ``(B, L0)`` int64, ``-1`` = no match, and ``match_confidence`` ``(B, L0)`` with
        the confidence's dtype, ``0`` where no match.
    """
    row_max, row_arg = confidence.max(dim=2)  # (B, L0), (B, L0) best image-1 cell per image-0 cell
    col_max = confidence.max(dim=1).values  # (B, L1)
    mutual = col_max.gather(1, row_arg) == row_max  # (B, L0) i is also the best of column j
    valid = mutual & (row_max > threshold) & valid0[None, :] & valid1[row_arg]  # (B, L0)
    match_ids = torch.where(valid, row_arg, torch.full_like(row_arg, -1))  # (B, L0)
    match_confidence = torch.where(valid, row_max, torch.zeros_like(row_max))  # (B, L0)
    return match_ids, match_confidence


class CoarseMatching(nn.Module):
    """Similarity, dual-softmax confidence and fixed-shape matches from coarse features.

    The border masks for the configured grid are non-persistent buffers (not in checkpoints); other grid
    sizes get masks computed on the fly.

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
        self.register_buffer("valid", border_mask(height, width, border_removal), persistent=False)

    def _valid(self, grid: tuple[int, int], reference: torch.Tensor) -> torch.Tensor:
        """Border mask ``(h*w,)`` for a grid: the buffer when it is the configured one."""
        if tuple(grid) == self.grid:
            return self.valid
        return border_mask(grid[0], grid[1], self.border_removal).to(reference.device)

    def forward(
        self,
        feat0: torch.Tensor,
        feat1: torch.Tensor,
        grid0: tuple[int, int] | None = None,
        grid1: tuple[int, int] | None = None,
    ) -> CoarseMatchOutput:
        """Match two sets of coarse features.

        Args:
            feat0: image 0 features ``(B, L0, C)``, row-major over grid ``grid0``.
            feat1: image 1 features ``(B, L1, C)``.
            grid0: ``(h0, w0)`` of image 0; default: the configured grid.
            grid1: ``(h1, w1)`` of image 1; default: the configured grid.

        Returns:
            :class:`CoarseMatchOutput`.
        """
        similarity = similarity_matrix(feat0, feat1, self.temperature)  # (B, L0, L1)
        confidence = dual_softmax(similarity)  # (B, L0, L1)
        valid0 = self._valid(grid0 or self.grid, feat0)  # (L0,)
        valid1 = self._valid(grid1 or self.grid, feat1)  # (L1,)
        match_ids, match_confidence = mutual_nearest_matches(confidence, self.threshold, valid0, valid1)
        return CoarseMatchOutput(similarity, confidence, match_ids, match_confidence)
