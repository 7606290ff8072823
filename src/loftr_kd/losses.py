"""Losses: focal loss against ground truth, and teacher -> student distillation on the coarse similarity.

Everything is computed in float32 outside autocast, whatever the dtype of the inputs, so the losses are safe
under fp16/bf16 mixed precision (LoFTR's fp16 NaNs came from mask fills overflowing half precision; the KL
loss of Coarse_LoFTR_TRT NaN'd under AMP, its issue #3).

How the terms combine (:func:`total_loss`)::

    total = w_gt * L_gt + w_kd * kd_scale * L_kd          (with a teacher)
    total = L_gt                                          (without one: there is nothing to mix)
    L_gt  = focal_loss(student confidence, ground truth)   (from the student logits, in log space)
    L_kd  = distillation_loss(student similarity, aligned teacher similarity, T)   (already x T^2)

The paper's values (w_gt 0.3, w_kd 0.7, kd_scale 10, T 5) are the defaults of :class:`LossConfig` and of
``conf/loss/default.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from loftr_kd.geometry import CoarseGrid, RefineWindow

__all__ = [
    "FocalConfig",
    "KDMode",
    "LossConfig",
    "LossOutput",
    "align_teacher_to_student",
    "distillation_loss",
    "focal_loss",
    "refinement_loss",
    "total_loss",
]

KDMode = Literal["dual", "row", "flat"]
_KD_MODES = ("dual", "row", "flat")

# Logits are clamped to this magnitude (float32) so that +-inf entries (masked or fp16-overflowed
# similarities) cannot produce inf - inf or 0 * inf = NaN inside log_softmax / kl_div.
_LOGIT_LIMIT = 1.0e30
# Upper bound of log p in the focal loss (p <= 1 - 1e-6, LoFTR's clamp), so log(1 - p) stays finite.
_LOG_P_MAX = math.log1p(-1e-6)


@dataclass(frozen=True)
class FocalConfig:
    """Focal loss settings (LoFTR's coarse defaults).

    ``from_logits`` (default) computes ``log p`` of the positives exactly from the similarity logits
    (``log_softmax`` over rows + over columns) instead of LoFTR's ``log(clamp(p, 1e-6))``: the two agree
    wherever ``p >= 1e-6``, but below it the clamp zeroes the gradient, and a freshly initialised student
    whose logits are saturated then cannot start learning (see :func:`focal_loss`). ``False`` reproduces
    LoFTR's clamped loss exactly.
    """

    alpha: float = 0.25
    gamma: float = 2.0
    pos_weight: float = 1.0
    neg_weight: float = 1.0
    from_logits: bool = True


@dataclass(frozen=True)
class LossConfig:
    """Loss settings; ``conf/loss/default.yaml`` instantiates it (``_target_``). Ground-truth settings
    are :class:`loftr_kd.supervision.SupervisionConfig`.

    Attributes:
        w_gt: weight of the ground-truth (focal) term when a teacher is used.
        w_kd: weight of the distillation term.
        kd_scale: extra amplification of the distillation term (the paper's x10).
        temperature: distillation temperature T (the KL is multiplied by T^2).
        kd_mode: how the similarity is softened, see :func:`distillation_loss`.
        focal: focal loss settings; a mapping (from Hydra) is converted to :class:`FocalConfig`.
        w_refine: weight of the refinement term (students with a refinement stage only).
        refine_inverse_std: weight each refined match by the inverse of its predicted spread (LoFTR's
            fine loss); ``False``: plain mean.
        refine_ce_weight: weight of the refinement's cross-entropy term (0: LoFTR's L2 alone).
        w_refine_kd: weight of the refinement's distillation term: the same loss against the LoFTR
            teacher's own fine matches (:func:`teacher_refine_targets`); used with a LoFTR teacher and a
            refining student only, 0 (default) = off.
        depth_tolerance: the older name of ``supervision.depth_tolerance``, kept so older commands
            work; ``None`` (the default) leaves the ground-truth setting alone. No loss reads it.
    """

    w_gt: float = 0.3
    w_kd: float = 0.7
    kd_scale: float = 10.0
    temperature: float = 5.0
    kd_mode: KDMode = "dual"
    focal: FocalConfig = field(default_factory=FocalConfig)
    w_refine: float = 1.0
    refine_inverse_std: bool = True
    refine_ce_weight: float = 1.0
    depth_tolerance: float | None = None
    w_refine_kd: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.focal, Mapping):
            object.__setattr__(self, "focal", FocalConfig(**dict(self.focal)))
        if self.kd_mode not in _KD_MODES:
            raise ValueError(f"kd_mode must be one of {_KD_MODES}, got {self.kd_mode!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.w_refine < 0:
            raise ValueError(f"w_refine must be >= 0, got {self.w_refine}")
        if self.w_refine_kd < 0:
            raise ValueError(f"w_refine_kd must be >= 0, got {self.w_refine_kd}")

    def loss_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`total_loss` (weights, temperature, focal settings)."""
        return {
            "w_gt": self.w_gt,
            "w_kd": self.w_kd,
            "kd_scale": self.kd_scale,
            "temperature": self.temperature,
            "kd_mode": self.kd_mode,
            **asdict(self.focal),
        }


class LossOutput(NamedTuple):
    """Loss terms of one step: ``total`` (to backpropagate), ``gt`` = L_gt, ``kd`` = L_kd and ``refine``
    = L_refine, unweighted (``refine`` is ``None`` for a coarse-only student)."""

    total: torch.Tensor
    gt: torch.Tensor
    kd: torch.Tensor
    refine: torch.Tensor | None = None
    refine_kd: torch.Tensor | None = None  # refinement against the teacher's fine matches, where used


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
        points0, points1, valid: :class:`~loftr_kd.models.teacher.TeacherFine` fields for the cells of
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


def _bilinear_window_target(offsets: torch.Tensor, window: RefineWindow) -> torch.Tensor:
    """``(..., 2)`` pixel offsets from the cell centre -> ``(..., K)`` soft target over the window positions.

    The four window positions around each offset share its weight bilinearly, so the expectation of the
    target distribution is the offset itself (exact sub-pixel supervision for a classification loss).
    """
    size = window.size
    u = (offsets / window.fine_stride + (size - 1) / 2).clamp(0, size - 1)  # (..., 2) continuous index
    base = u.floor().clamp(max=size - 2)  # (..., 2) so that base + 1 stays inside
    frac = u - base  # (..., 2) in [0, 1]
    target = offsets.new_zeros(*offsets.shape[:-1], window.num_positions)
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
        centres1: ``(B, L0, 2)`` centre of each row's candidate cell.
        truth1: ``(B, L0, 2)`` exact image1 position of each image0 cell centre (``CoarseGroundTruth.points1``).
        valid: ``(B, L0)`` bool, ``truth1`` is known.
        window: the refinement window.
        inverse_std: weight the L2 term by inverse spread.
        ce_weight: weight of the cross-entropy term (0: LoFTR's L2 alone).

    Returns:
        Scalar float32 loss.
    """
    if points1.shape != truth1.shape or points1.shape != centres1.shape or points1.shape[-1] != 2:
        raise ValueError(
            f"points1 {tuple(points1.shape)}, centres1 {tuple(centres1.shape)} and truth1 "
            f"{tuple(truth1.shape)} must all be (B, L0, 2)"
        )
    if logits.shape != (*points1.shape[:-1], window.num_positions):
        raise ValueError(f"logits must be (B, L0, {window.num_positions}), got {tuple(logits.shape)}")
    reach = window.reach
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
        target = _bilinear_window_target(torch.where(reachable.unsqueeze(-1), offsets, 0.0), window)
        ce = -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1)  # (B, L0)
        ce = torch.where(reachable, ce, torch.zeros_like(ce)).sum() / count
        return l2 + ce_weight * ce


def focal_loss(
    confidence: torch.Tensor,
    gt_match_ids: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    pos_weight: float = 1.0,
    neg_weight: float = 1.0,
    *,
    similarity: torch.Tensor | None = None,
) -> torch.Tensor:
    """LoFTR's dense coarse focal loss on the dual-softmax confidence.

    Positives are the entries ``(b, i, gt[b, i])`` with ``gt >= 0``; every other entry is a negative::

        loss = pos_weight * mean_pos(-alpha (1 - p)^gamma log p) + neg_weight * mean_neg(-alpha p^gamma log(1 - p))

    in float32. Without ``similarity`` (LoFTR), ``p`` is clamped to ``[1e-6, 1 - 1e-6]``. With the
    logits, ``log p = log_softmax(sim, 1) + log_softmax(sim, 2)`` exactly and only ``p <= 1 - 1e-6`` is
    kept: LoFTR's lower clamp makes every positive below 1e-6 cost the constant ``alpha * 13.8`` with
    **zero gradient**. Saturated logits at initialisation (logit std ~ 15-25 over a few hundred cells
    is common) put all positives there: the loss sits at exactly 3.45 and the student does not learn until
    weight decay has shrunk its features (measured: 180 of 400 steps lost in one seed of the ``fast``
    student). The gradient of ``-log p`` w.r.t. the logits is bounded (a difference of softmaxes), so the
    exact form is safe however small ``p`` is. The dense positive mask is scattered from
    ``gt_match_ids`` here, on the confidence's device. A batch without any positive (or negative) gives a
    zero term with the graph still connected to ``confidence`` (LoFTR's zero-weight dummy, without a
    data-dependent branch or host sync), so DDP ranks never disagree on which parameters got gradients.

    Args:
        confidence: ``(B, L0, L1)`` dual-softmax confidence in [0, 1], any floating dtype.
        gt_match_ids: ``(B, L0)`` integer index of the ground-truth match in image1, ``-1`` = none.
        alpha: focal alpha (applied to both terms, as LoFTR does).
        gamma: focal gamma.
        pos_weight: weight of the positive term.
        neg_weight: weight of the negative term.
        similarity: ``(B, L0, L1)`` dual-softmax logits that ``confidence`` came from; given, the loss
            is computed from them in log space (``confidence`` is then only checked for shape).

    Returns:
        Scalar float32 loss.
    """
    if confidence.ndim != 3:
        raise ValueError(f"confidence must be (B, L0, L1), got {tuple(confidence.shape)}")
    if tuple(gt_match_ids.shape) != tuple(confidence.shape[:2]):
        raise ValueError(
            f"gt_match_ids must be (B, L0) = {tuple(confidence.shape[:2])}, got {tuple(gt_match_ids.shape)}"
        )
    if gt_match_ids.is_floating_point() or gt_match_ids.dtype == torch.bool:
        raise TypeError(f"gt_match_ids must be an integer tensor, got {gt_match_ids.dtype}")

    if similarity is not None and similarity.shape != confidence.shape:
        raise ValueError(
            f"similarity {tuple(similarity.shape)} and confidence {tuple(confidence.shape)} must have one shape"
        )

    with torch.autocast(device_type=confidence.device.type, enabled=False):
        if similarity is None:
            p = confidence.float().clamp(1e-6, 1 - 1e-6)  # (B, L0, L1)
            log_p = p.log()
        else:
            logits = similarity.float().clamp(-_LOGIT_LIMIT, _LOGIT_LIMIT)  # (B, L0, L1), finite
            log_p = (F.log_softmax(logits, dim=1) + F.log_softmax(logits, dim=2)).clamp(max=_LOG_P_MAX)
            p = log_p.exp()
        gt = gt_match_ids.to(device=p.device, dtype=torch.long)
        has_match = (gt >= 0).unsqueeze(-1)  # (B, L0, 1)
        positive = torch.zeros_like(p, dtype=torch.bool)
        positive.scatter_(2, gt.clamp(min=0).unsqueeze(-1), has_match)  # (B, L0, L1) dense gt on the device

        loss_pos = -alpha * (1 - p).pow(gamma) * log_p
        loss_neg = -alpha * p.pow(gamma) * torch.log1p(-p)
        num_pos = positive.sum()
        num_neg = positive.numel() - num_pos
        zero = torch.zeros((), device=p.device)
        mean_pos = torch.where(positive, loss_pos, zero).sum() / num_pos.clamp(min=1)
        mean_neg = torch.where(positive, zero, loss_neg).sum() / num_neg.clamp(min=1)
        return pos_weight * mean_pos + neg_weight * mean_neg


def align_teacher_to_student(
    teacher_similarity: torch.Tensor, teacher_hw: tuple[int, int], student_hw: tuple[int, int]
) -> torch.Tensor:
    """Subsample the teacher's similarity to the student's coarse grid, in 2-D.

    Student cell ``(r, c)`` corresponds to teacher cell ``(k*r, k*c)`` with ``k = ht / hs = wt / ws`` (an
    integer), on both image axes of the similarity. Subsampling the *flattened* index instead (student cell
    ``i`` -> teacher cell ``k*k*i``, what Coarse_LoFTR_TRT's nearest interpolation of the matrix did) pairs
    the wrong cells as soon as a row wraps.

    Args:
        teacher_similarity: ``(B, ht*wt, ht*wt)`` teacher similarity (both images on the same grid).
        teacher_hw: ``(ht, wt)`` teacher coarse grid.
        student_hw: ``(hs, ws)`` student coarse grid.

    Returns:
        ``(B, hs*ws, hs*ws)`` view-based subsample of the teacher similarity.
    """
    ht, wt = (int(v) for v in teacher_hw)
    hs, ws = (int(v) for v in student_hw)
    b = teacher_similarity.shape[0]
    if teacher_similarity.ndim != 3 or tuple(teacher_similarity.shape[1:]) != (ht * wt, ht * wt):
        raise ValueError(
            f"teacher_similarity must be (B, {ht * wt}, {ht * wt}) for a {ht}x{wt} teacher grid, "
            f"got {tuple(teacher_similarity.shape)}"
        )
    try:
        k = CoarseGrid(1, ht, wt).factor_to(CoarseGrid(1, hs, ws))
    except ValueError as error:
        raise ValueError(
            f"teacher grid {ht}x{wt} is not an integer multiple k of student grid {hs}x{ws} with the same k on "
            "both axes; use an image size divisible by the student stride (e.g. 640x480 for strides 8/16)"
        ) from error
    if k == 1:
        return teacher_similarity
    grid = teacher_similarity.reshape(b, ht, wt, ht, wt)
    return grid[:, ::k, ::k, ::k, ::k].reshape(b, hs * ws, hs * ws)


def _kl_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean over distributions of KL(teacher || student), each distribution being a slice along ``dim``."""
    log_q = F.log_softmax(student_logits, dim=dim)
    log_p = F.log_softmax(teacher_logits, dim=dim)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim)  # one value per distribution
    return kl.mean()


def distillation_loss(
    student_similarity: torch.Tensor,
    teacher_similarity: torch.Tensor,
    temperature: float = 5.0,
    mode: KDMode = "dual",
) -> torch.Tensor:
    """KL(teacher || student) between temperature-softened similarity distributions, times T^2.

    Computed in float32 with ``log_softmax`` + ``kl_div(log_target=True)`` (no ``softmax`` then ``log``,
    no NaN under AMP); logits are clamped to a finite range so +-inf entries stay finite. The teacher is
    detached: gradients reach the student only.

    Modes (``mode``):
      - ``"dual"`` (default): mean of the row-wise KL (each image0 cell's distribution over image1 cells)
        and the column-wise KL (each image1 cell's over image0 cells).
      - ``"row"``: the row-wise KL only.
      - ``"flat"``: the paper's choice, one softmax over each sample's whole flattened ``L0*L1`` matrix, KL
        per sample averaged over the batch.

    Why ``"dual"`` is the default: the student's confidence is softmax-over-rows x softmax-over-columns of
    this very similarity, so row and column distributions are exactly what matching uses, and every cell
    weighs the same. A single softmax over the flattened matrix puts nearly all of its mass on the few most
    confident pairs of the whole image (the teacher's logits are sharp, dual-softmax temperature 0.1, and
    stay so at T = 5), so cells whose best similarity is moderate, e.g. in low texture, get almost no
    distillation signal. The optima agree: the flat KL is 0 iff the logits agree up to one constant; the row
    KL is 0 iff they agree up to a per-row offset, the column KL up to a per-column offset, and both
    together only up to one constant. The dual loss is a mean over cells (nats per distribution), so its
    scale does not grow with the image size, whereas the flat KL does. Use ``"flat"`` to reproduce the
    paper.

    Args:
        student_similarity: ``(B, L0, L1)`` student dual-softmax logits.
        teacher_similarity: ``(B, L0, L1)`` teacher logits already on the student grid
            (:func:`align_teacher_to_student`).
        temperature: softening temperature T.
        mode: ``"dual"``, ``"row"`` or ``"flat"``.

    Returns:
        Scalar float32 loss ``T^2 * KL``.
    """
    if student_similarity.ndim != 3 or student_similarity.shape != teacher_similarity.shape:
        raise ValueError(
            "student and teacher similarity must both be (B, L0, L1) on the same grid (align the teacher "
            f"first), got {tuple(student_similarity.shape)} and {tuple(teacher_similarity.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if mode not in _KD_MODES:
        raise ValueError(f"mode must be one of {_KD_MODES}, got {mode!r}")

    with torch.autocast(device_type=student_similarity.device.type, enabled=False):
        student = student_similarity.float().clamp(-_LOGIT_LIMIT, _LOGIT_LIMIT) / temperature
        teacher = teacher_similarity.detach().float().clamp(-_LOGIT_LIMIT, _LOGIT_LIMIT) / temperature
        if mode == "flat":
            kl = _kl_rows(student.flatten(1), teacher.flatten(1), dim=1)
        elif mode == "row":
            kl = _kl_rows(student, teacher, dim=2)
        else:
            kl = 0.5 * (_kl_rows(student, teacher, dim=2) + _kl_rows(student, teacher, dim=1))
        return kl * temperature**2


def total_loss(
    confidence: torch.Tensor,
    gt_match_ids: torch.Tensor,
    student_similarity: torch.Tensor | None = None,
    teacher_similarity: torch.Tensor | None = None,
    student_hw: tuple[int, int] | None = None,
    teacher_hw: tuple[int, int] | None = None,
    *,
    w_gt: float = 0.3,
    w_kd: float = 0.7,
    kd_scale: float = 10.0,
    temperature: float = 5.0,
    kd_mode: KDMode = "dual",
    alpha: float = 0.25,
    gamma: float = 2.0,
    pos_weight: float = 1.0,
    neg_weight: float = 1.0,
    from_logits: bool = True,
) -> LossOutput:
    """Combined loss of one step: ``w_gt * L_gt + w_kd * kd_scale * L_kd``, or ``L_gt`` without a teacher.

    ``LossConfig(...).loss_kwargs()`` gives every keyword argument. The teacher similarity is aligned to the
    student grid here when its size differs (then ``student_hw`` and ``teacher_hw`` are required).

    Args:
        confidence: ``(B, L0, L1)`` student dual-softmax confidence.
        gt_match_ids: ``(B, L0)`` ground truth at the student stride, ``-1`` = none.
        student_similarity: ``(B, L0, L1)`` student logits; needed with a teacher.
        teacher_similarity: ``(B, Lt0, Lt1)`` teacher logits, or None (no teacher: ``kd`` is 0).
        student_hw: ``(hs, ws)`` student coarse grid.
        teacher_hw: ``(ht, wt)`` teacher coarse grid.
        w_gt: weight of L_gt with a teacher.
        w_kd: weight of L_kd.
        kd_scale: amplification of L_kd (the paper's x10).
        temperature: distillation temperature.
        kd_mode: see :func:`distillation_loss`.
        alpha: focal alpha.
        gamma: focal gamma.
        pos_weight: focal positive weight.
        neg_weight: focal negative weight.
        from_logits: compute the focal loss from ``student_similarity`` in log space when it is given
            (see :class:`FocalConfig`).

    Returns:
        LossOutput(total, gt, kd), float32 scalars; ``gt`` and ``kd`` unweighted (``kd`` includes T^2).
    """
    gt = focal_loss(
        confidence,
        gt_match_ids,
        alpha,
        gamma,
        pos_weight,
        neg_weight,
        similarity=student_similarity if from_logits else None,
    )
    if teacher_similarity is None:
        return LossOutput(total=gt, gt=gt, kd=torch.zeros((), device=gt.device))
    if student_similarity is None:
        raise ValueError("a teacher similarity needs the student similarity too")
    if teacher_similarity.shape[1:] != student_similarity.shape[1:]:
        if student_hw is None or teacher_hw is None:
            raise ValueError(
                f"teacher {tuple(teacher_similarity.shape)} and student {tuple(student_similarity.shape)} "
                "grids differ: pass student_hw and teacher_hw to align them"
            )
        teacher_similarity = align_teacher_to_student(teacher_similarity, teacher_hw, student_hw)
    kd = distillation_loss(student_similarity, teacher_similarity, temperature, kd_mode)
    return LossOutput(total=w_gt * gt + w_kd * kd_scale * kd, gt=gt, kd=kd)
