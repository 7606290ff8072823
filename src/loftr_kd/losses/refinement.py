"""The refinement terms: sub-pixel positions against the ground truth, and against a teacher's fine matches
moved to the student's cell centres; and which cell each row's refinement is scored around."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loftr_kd.geometry import CoarseGrid, RefineWindow

__all__ = [
    "refinement_ids",
    "refinement_loss",
    "teacher_fine_cells",
    "teacher_refine_targets",
]


def refinement_ids(
    candidate_ids: torch.Tensor,
    gt_match_ids: torch.Tensor,
    truth1: torch.Tensor,
    truth_valid: torch.Tensor,
    grid: CoarseGrid,
    window: RefineWindow,
) -> torch.Tensor:
    """The image1 cell each row's refinement is scored around: its own candidate where the window around it
    reaches the truth (what inference will see), else the true cell where the ground truth has a match, so
    rows whose coarse match is still wrong teach the refinement too (LoFTR pads ground-truth matches into
    its fine stage the same way, but inside its model).

    Args:
        candidate_ids: ``(B, L0)`` every row's best image1 cell (``CoarseMatchOutput.candidate_ids``).
        gt_match_ids, truth1, truth_valid: the ground truth (``CoarseGroundTruth`` fields).
        grid: the student's grid.
        window: the refinement window.

    Returns:
        ``(B, L0)`` image1 cell ids.
    """
    centres = grid.ids_to_pixels(candidate_ids)
    reachable = truth_valid & ((truth1 - centres).abs().amax(-1) <= window.reach)
    forced = ~reachable & (gt_match_ids >= 0)
    return torch.where(forced, gt_match_ids, candidate_ids)


def teacher_fine_cells(student: CoarseGrid, teacher: CoarseGrid) -> torch.Tensor:
    """``(3, L_student)`` teacher image0 cells whose fine matches give each student cell's target: the
    *anchor* (the teacher cell at LoFTR's pixel ``stride * (x, y)`` nearest the student cell centre) and
    its horizontal and vertical neighbours (towards the centre where possible), for the local affine
    correction of :func:`teacher_refine_targets`."""
    centres = student.centers()  # (L, 2) xy
    x = torch.round(centres[:, 0] / teacher.stride).long().clamp(0, teacher.width - 1)
    y = torch.round(centres[:, 1] / teacher.stride).long().clamp(0, teacher.height - 1)
    nx = torch.where(x > 0, x - 1, x + 1)
    ny = torch.where(y > 0, y - 1, y + 1)
    return torch.stack([y * teacher.width + x, y * teacher.width + nx, ny * teacher.width + x])


def teacher_refine_targets(
    points0: torch.Tensor, points1: torch.Tensor, valid: torch.Tensor, student: CoarseGrid
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's fine matches moved to the student's cell centres: refinement targets ``(B, L, 2)``.

    The teacher refines at its own cell positions (LoFTR: ``8 * (x, y)``), half a pixel or more from the
    student's centres; each target is the anchor's fine match plus the offset to the student centre
    mapped by the local affine map of the anchor and its two neighbours (exact where the true mapping is
    affine over those 8 px).

    Args:
        points0, points1, valid: :class:`~loftr_kd.teachers.TeacherFine` fields for the cells of
            :func:`teacher_fine_cells` (flattened: anchors, then x-neighbours, then y-neighbours), shapes
            ``(B, 3L, 2)``, ``(B, 3L, 2)``, ``(B, 3L)``.
        student: the student's grid.

    Returns:
        ``(targets (B, L, 2), valid (B, L))``: valid where all three fine matches are LoFTR matches and the
        neighbours moved by at most three times their spacing (not across a depth edge).
    """
    b, n3 = valid.shape
    n = student.num_cells
    if n3 != 3 * n:
        raise ValueError(f"expected 3 x {n} teacher fine matches (teacher_fine_cells), got {n3}")
    p0 = points0.float().view(b, 3, n, 2)
    p1 = points1.float().view(b, 3, n, 2)
    ok = valid.view(b, 3, n).all(1)  # (B, L)
    offset = student.centers(device=p0.device).unsqueeze(0) - p0[:, 0]  # (B, L, 2) centre - anchor
    target = p1[:, 0].clone()
    for axis, k in ((0, 1), (1, 2)):  # columns of the local affine map from finite differences
        spacing = p0[:, 0, :, axis] - p0[:, k, :, axis]  # (B, L) +-teacher stride
        step = p1[:, 0] - p1[:, k]  # (B, L, 2)
        target = target + step * (offset[..., axis] / spacing).unsqueeze(-1)
        ok &= step.norm(dim=-1) <= 3 * spacing.abs()
    return target, ok


def _bilinear_window_target(offsets: torch.Tensor, size: int, fine_stride: int) -> torch.Tensor:
    """``(..., 2)`` pixel offsets from the window centre -> ``(..., size**2)`` soft target over the positions
    of a ``size x size`` window of fine pixels ``fine_stride`` apart.

    The four window positions around each offset share its weight bilinearly, so the expectation of the
    target distribution is the offset itself (exact sub-pixel supervision for a classification loss).
    """
    u = (offsets / fine_stride + (size - 1) / 2).clamp(0, size - 1)  # (..., 2) continuous index
    base = u.floor().clamp(max=size - 2)  # (..., 2) so that base + 1 stays inside
    frac = u - base  # (..., 2) in [0, 1]
    target = offsets.new_zeros(*offsets.shape[:-1], size * size)
    base = base.long()
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        weight = (frac[..., 0] if dx else 1 - frac[..., 0]) * (frac[..., 1] if dy else 1 - frac[..., 1])
        index = (base[..., 1] + dy) * size + base[..., 0] + dx
        target.scatter_add_(-1, index.unsqueeze(-1), weight.unsqueeze(-1))
    return target


def refinement_loss(
    points1: torch.Tensor,
    uncertainty: torch.Tensor,
    logits: torch.Tensor,
    centres1: torch.Tensor,
    truth1: torch.Tensor,
    valid: torch.Tensor,
    window: RefineWindow,
    inverse_std: bool = True,
    ce_weight: float = 1.0,
    size: int | None = None,
) -> torch.Tensor:
    """Refinement loss on the matches the window can reach: cross-entropy to a sub-pixel soft target, plus
    LoFTR's L2 of the expected position.

    A row is supervised when its true image1 position is known (``valid``) and lies inside the window
    around its candidate cell (``|truth - centre|_inf <= reach``): elsewhere the refinement cannot be right
    and the coarse loss has to fix the candidate first.

    - Cross-entropy against the bilinear soft target (:func:`_bilinear_window_target`; XFeat classifies
      offsets the same way, with hard bins): a strong, well-conditioned signal from the first step, where
      the L2 of a near-uniform softmax's expectation has almost no gradient.
    - L2 of the expected position, in units of the window reach (LoFTR normalises by the window's half
      size), with ``inverse_std`` weighted by the inverse predicted spread, normalised to mean 1 and
      detached (LoFTR's fine loss: confident matches must be accurate).

    Computed in float32 outside autocast. A batch without any supervised row gives a zero still connected
    to the outputs (no DDP hang).

    Args:
        points1: ``(B, L0, 2)`` refined image1 position of each row's candidate.
        uncertainty: ``(B, L0)`` predicted spread (pixels).
        logits: ``(B, L0, K)`` window scores.
        centres1: ``(B, L0, 2)`` centre of each row's window: its candidate cell's centre, or for corner
            queries the pixel of the candidate cell's block where a translation puts the query.
        truth1: ``(B, L0, 2)`` exact image1 position of each row's image0 point (the cell centres'
            ``CoarseGroundTruth.points1``; the queries' :func:`loftr_kd.supervision.point_ground_truth`).
        valid: ``(B, L0)`` bool, ``truth1`` is known.
        window: the refinement window.
        inverse_std: weight the L2 term by inverse spread.
        ce_weight: weight of the cross-entropy term (0: LoFTR's L2 alone).
        size: fine pixels per window side (``window.size``; corner queries: ``window.query_size``).

    Returns:
        Scalar float32 loss.
    """
    if points1.shape != truth1.shape or points1.shape != centres1.shape or points1.shape[-1] != 2:
        raise ValueError(
            f"points1 {tuple(points1.shape)}, centres1 {tuple(centres1.shape)} and truth1 "
            f"{tuple(truth1.shape)} must all be (B, L0, 2)"
        )
    size = window.size if size is None else size
    if logits.shape != (*points1.shape[:-1], size * size):
        raise ValueError(f"logits must be (B, L0, {size * size}), got {tuple(logits.shape)}")
    reach = (size - 1) / 2 * window.fine_stride
    with torch.autocast(device_type=points1.device.type, enabled=False):
        pred, truth = points1.float(), truth1.float()
        offsets = truth - centres1.float()  # (B, L0, 2)
        reachable = valid & (offsets.abs().amax(-1) <= reach)  # (B, L0)
        count = reachable.sum().clamp(min=1)
        error = ((pred - truth) / reach).pow(2).sum(-1)  # (B, L0)
        if inverse_std:
            weight = 1.0 / uncertainty.detach().float().clamp(min=1e-3)
            mean_weight = torch.where(reachable, weight, torch.zeros_like(weight)).sum() / count
            weight = weight / mean_weight.clamp(min=1e-12)
        else:
            weight = torch.ones_like(error)
        l2 = torch.where(reachable, weight * error, torch.zeros_like(error)).sum() / count
        if ce_weight == 0:
            return l2
        target = _bilinear_window_target(
            torch.where(reachable.unsqueeze(-1), offsets, 0.0), size, window.fine_stride
        )
        ce = -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1)  # (B, L0)
        ce = torch.where(reachable, ce, torch.zeros_like(ce)).sum() / count
        return l2 + ce_weight * ce
