"""Losses: every term of a training step and their weights, assembled in one place.

- :mod:`~loftr_kd.losses.coarse`: LoFTR's focal loss against the coarse ground truth (from the logits);
- :mod:`~loftr_kd.losses.distillation`: KL(teacher || student) on the coarse similarity, 2-D aligned;
- :mod:`~loftr_kd.losses.refinement`: the sub-pixel refinement against the truth and a teacher's fine
  matches;
- :mod:`~loftr_kd.losses.combined`: :class:`LossConfig`, :class:`DistillationLoss` (what a step calls) and
  :func:`total_loss` (the coarse terms).
"""

from loftr_kd.losses.coarse import FocalConfig, focal_loss
from loftr_kd.losses.combined import DistillationLoss, LossConfig, LossOutput, total_loss
from loftr_kd.losses.distillation import (
    KD_MODES,
    KDMode,
    align_teacher_to_student,
    alignment_phase,
    distillation_loss,
)
from loftr_kd.losses.refinement import (
    _bilinear_window_target,
    refinement_ids,
    refinement_loss,
    teacher_fine_cells,
    teacher_refine_targets,
)

__all__ = [
    "KD_MODES",
    "DistillationLoss",
    "FocalConfig",
    "KDMode",
    "LossConfig",
    "LossOutput",
    "_bilinear_window_target",
    "align_teacher_to_student",
    "alignment_phase",
    "distillation_loss",
    "focal_loss",
    "refinement_ids",
    "refinement_loss",
    "teacher_fine_cells",
    "teacher_refine_targets",
    "total_loss",
]
