"""The loss of one training step, assembled in one place: ground truth, distillation, refinement and
their weights (:class:`DistillationLoss`), from :class:`LossConfig`.

How the terms combine::

    total = w_gt * L_gt + w_kd * kd_scale * L_kd          (with a teacher that provides a similarity)
    total = L_gt                                          (without one: there is nothing to mix)
          + w_refine * L_refine + w_refine_kd * L_refine_kd      (students with a refinement stage)
    L_gt  = focal_loss(student confidence, ground truth)   (from the student logits, in log space)
    L_kd  = distillation_loss(student similarity, aligned teacher similarity, T)   (already x T^2)

The paper's values (w_gt 0.3, w_kd 0.7, kd_scale 10, T 5) are the defaults of :class:`LossConfig` and of
``conf/loss/default.yaml``. Everything is computed in float32 outside autocast, whatever the dtype of the
inputs, so the losses are safe under fp16/bf16 mixed precision (LoFTR's fp16 NaNs came from mask fills
overflowing half precision; the KL loss of Coarse_LoFTR_TRT NaN'd under AMP, its issue #3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from loftr_kd.geometry import CoarseGrid, RefineWindow
from loftr_kd.losses.coarse import FocalConfig, focal_loss
from loftr_kd.losses.distillation import (
    KD_MODES,
    KDMode,
    align_teacher_to_student,
    alignment_phase,
    distillation_loss,
)
from loftr_kd.losses.refinement import (
    refinement_ids,
    refinement_loss,
    teacher_fine_cells,
    teacher_refine_targets,
)

__all__ = ["DistillationLoss", "LossConfig", "LossOutput", "total_loss"]


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
        if self.kd_mode not in KD_MODES:
            raise ValueError(f"kd_mode must be one of {KD_MODES}, got {self.kd_mode!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        # a negative weight would train against its term
        for name in ("w_gt", "w_kd", "kd_scale", "w_refine", "w_refine_kd"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

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
    teacher_phase: int = 0,
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
        teacher_phase: which teacher cell of each ``k`` stands for a student cell
            (:func:`~loftr_kd.losses.distillation.alignment_phase`).

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
        teacher_similarity = align_teacher_to_student(
            teacher_similarity, teacher_hw, student_hw, teacher_phase
        )
    kd = distillation_loss(student_similarity, teacher_similarity, temperature, kd_mode)
    return LossOutput(total=w_gt * gt + w_kd * kd_scale * kd, gt=gt, kd=kd)


class DistillationLoss(nn.Module):
    """Every loss term of one step and their weights (no parameters): what the LightningModule calls.

    It also says what a step needs besides the student's output: which cells the refinement is scored
    around (:meth:`refinement_ids`, to run the student's refinement there) and what to ask of the teacher
    (:meth:`teacher_request`), from what the teacher declares it provides.

    Args:
        config: weights and settings.
        window: the student's refinement window (``None``: a coarse-only student).
    """

    def __init__(self, config: LossConfig, window: RefineWindow | None = None) -> None:
        super().__init__()
        self.config = config
        self.window = window

    @property
    def distils_refinement(self) -> bool:
        """The refinement also learns from a teacher's fine matches (``w_refine_kd > 0``, a refining student)."""
        return self.window is not None and self.config.w_refine_kd > 0

    def teacher_request(
        self,
        teacher: nn.Module | None,
        grid: CoarseGrid,
        teacher_grid: CoarseGrid | None,
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        """Keyword arguments for the teacher's forward: ``fine_cells`` when its fine matches are distilled
        into the refinement and it provides them (the cells next to each student cell centre)."""
        from loftr_kd.teachers.base import FINE

        if teacher is None or teacher_grid is None or not self.distils_refinement:
            return {}
        if FINE not in getattr(teacher, "provides", ()):
            return {}
        return {"fine_cells": teacher_fine_cells(grid, teacher_grid).reshape(-1).to(device)}

    def refinement_ids(self, out: Any, gt: Any, grid: CoarseGrid) -> torch.Tensor | None:
        """``(B, L0)`` the cell each row's refinement is scored around (:func:`refinement_ids`), ``None``
        for a coarse-only student."""
        if self.window is None:
            return None
        return refinement_ids(out.candidate_ids, gt.match_ids, gt.points1, gt.valid, grid, self.window)

    def forward(
        self,
        out: Any,
        gt: Any,
        grid: CoarseGrid,
        teacher_out: Any | None = None,
        teacher_grid: CoarseGrid | None = None,
        refine_ids: torch.Tensor | None = None,
        refined: Any | None = None,
        refine_truth: tuple[torch.Tensor, torch.Tensor] | None = None,
        teacher_origin: float | None = None,
    ) -> LossOutput:
        """The loss terms of one step.

        Args:
            out: the student's ``CoarseMatchOutput``.
            gt: ``CoarseGroundTruth`` at the student's stride.
            grid: the student's grid (image0).
            teacher_out: the teacher's ``TeacherOutput`` (``None``: no teacher).
            teacher_grid: the teacher's grid, where it provides a similarity.
            refine_ids: ``(B, L0)`` cells of :meth:`refinement_ids`, for a refining student.
            refined: the student's refinement around ``refine_ids`` (``CoarseLoFTRStudent.refine``).
            refine_truth: ``(points1 (B, L0, 2), valid (B, L0))`` the truth at ``refined.points0`` where the
                refinement has its own image0 points (corner queries:
                :func:`loftr_kd.supervision.point_ground_truth`); else the cell centres' ``gt`` is used.
            teacher_origin: the pixel of the teacher's cell 0 (:attr:`loftr_kd.teachers.FrozenTeacher.cell_origin`:
                LoFTR 0; ``None``: the cell centre), which says which teacher cell stands for a student cell
                (:func:`~loftr_kd.losses.distillation.alignment_phase`).

        Returns:
            :class:`LossOutput`: ``total`` to backpropagate and every unweighted term.
        """
        similarity = None if teacher_out is None else teacher_out.similarity
        aligned = teacher_grid is not None and similarity is not None
        phase = 0
        if aligned and teacher_grid.stride < grid.stride and grid.stride % teacher_grid.stride == 0:
            phase = alignment_phase(grid.stride // teacher_grid.stride, teacher_grid.stride, teacher_origin)
        terms = total_loss(
            out.confidence,
            gt.match_ids,
            out.similarity,
            similarity,
            student_hw=grid.shape,
            teacher_hw=teacher_grid.shape if aligned else None,
            teacher_phase=phase,
            **self.config.loss_kwargs(),
        )
        if refined is None or self.window is None:
            return terms
        settings = {"inverse_std": self.config.refine_inverse_std, "ce_weight": self.config.refine_ce_weight}
        # each window's centre, as the refinement placed it (corner queries: where a translation puts the query)
        centres = grid.ids_to_pixels(refine_ids) if refined.centres1 is None else refined.centres1
        truth, valid = gt.points1, gt.valid
        if refined.points0 is not None:
            # corner queries: the truth is the query's, not the cell centre's
            if refine_truth is None:
                raise ValueError(
                    "a refinement with its own image0 points (corner queries) needs refine_truth"
                )
            truth, valid = refine_truth
            settings["size"] = self.window.query_size
        fields = (refined.points1, refined.uncertainty, refined.logits, centres)
        refine = refinement_loss(*fields, truth, valid, self.window, **settings)
        total = terms.total + self.config.w_refine * refine
        refine_kd = None
        fine = None if teacher_out is None else teacher_out.fine
        if fine is not None and self.distils_refinement:
            if refined.points0 is not None:
                raise ValueError(
                    "w_refine_kd distils a teacher's fine matches at the student's cell centres; corner queries "
                    "have none there (set loss.w_refine_kd=0 or student.refine_query=centre)"
                )
            targets, valid = teacher_refine_targets(fine.points0, fine.points1, fine.valid, grid)
            refine_kd = refinement_loss(*fields, targets, valid, self.window, **settings)
            total = total + self.config.w_refine_kd * refine_kd
        return terms._replace(total=total, refine=refine, refine_kd=refine_kd)
