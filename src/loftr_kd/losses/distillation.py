"""The distillation term: KL(teacher || student) between temperature-softened coarse similarities, with the
teacher's grid aligned to the student's in 2-D."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from loftr_kd.geometry import CoarseGrid
from loftr_kd.losses.coarse import LOGIT_LIMIT

__all__ = ["KD_MODES", "KDMode", "align_teacher_to_student", "alignment_phase", "distillation_loss"]

KDMode = Literal["dual", "row", "flat"]
KD_MODES = ("dual", "row", "flat")


def alignment_phase(k: int, teacher_stride: int, teacher_origin: float | None = None) -> int:
    """Which of the ``k`` teacher cells along an axis stands for a student cell: the one whose point is
    nearest the student cell's centre (ties: the first).

    The student's cell ``c`` stands for its centre, pixel ``(c + 0.5) * k * s - 0.5`` (``s`` the teacher's
    stride); the teacher's cell ``t`` for pixel ``s * t + teacher_origin``. LoFTR's cells are the points
    ``8 * t`` (``teacher_origin=0``: its supervision and fine stage, and kornia's receptive fields, centre
    there), so of a stride-16 student's cell ``c`` the nearest is LoFTR's ``2c + 1`` (0.5 px away; ``2c`` is
    7.5 px away). A teacher on the project's own convention (``None``: cell centres, ``(s - 1) / 2``) has
    two cells equally near for ``k = 2`` and keeps ``2c``.

    Returns:
        The phase ``p`` in ``[0, k)``: student cell ``c`` is teacher cell ``k * c + p`` on both axes.
    """
    origin = (teacher_stride - 1) / 2 if teacher_origin is None else float(teacher_origin)
    offset = ((k * teacher_stride - 1) / 2 - origin) / teacher_stride
    return min(k - 1, max(0, math.ceil(offset - 0.5)))


def align_teacher_to_student(
    teacher_similarity: torch.Tensor,
    teacher_hw: tuple[int, int],
    student_hw: tuple[int, int],
    phase: int = 0,
) -> torch.Tensor:
    """Subsample the teacher's similarity to the student's coarse grid, in 2-D.

    Student cell ``(r, c)`` corresponds to teacher cell ``(k*r + phase, k*c + phase)`` with
    ``k = ht / hs = wt / ws`` (an integer), on both image axes of the similarity (:func:`alignment_phase`
    says which ``phase`` puts the teacher's cell nearest the student's). Subsampling the *flattened* index
    instead (student cell ``i`` -> teacher cell ``k*k*i``, what Coarse_LoFTR_TRT's nearest interpolation of
    the matrix did) pairs the wrong cells as soon as a row wraps.

    Args:
        teacher_similarity: ``(B, ht*wt, ht*wt)`` teacher similarity (both images on the same grid).
        teacher_hw: ``(ht, wt)`` teacher coarse grid.
        student_hw: ``(hs, ws)`` student coarse grid.
        phase: the teacher cell in ``[0, k)`` of each run of ``k`` that stands for a student cell.

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
    if not 0 <= phase < k:
        raise ValueError(f"alignment phase {phase} outside [0, {k}) for a teacher grid {k}x the student's")
    if k == 1:
        return teacher_similarity
    grid = teacher_similarity.reshape(b, ht, wt, ht, wt)
    p = int(phase)
    return grid[:, p::k, p::k, p::k, p::k].reshape(b, hs * ws, hs * ws)


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
    if mode not in KD_MODES:
        raise ValueError(f"mode must be one of {KD_MODES}, got {mode!r}")

    with torch.autocast(device_type=student_similarity.device.type, enabled=False):
        student = student_similarity.float().clamp(-LOGIT_LIMIT, LOGIT_LIMIT) / temperature
        teacher = teacher_similarity.detach().float().clamp(-LOGIT_LIMIT, LOGIT_LIMIT) / temperature
        if mode == "flat":
            kl = _kl_rows(student.flatten(1), teacher.flatten(1), dim=1)
        elif mode == "row":
            kl = _kl_rows(student, teacher, dim=2)
        else:
            kl = 0.5 * (_kl_rows(student, teacher, dim=2) + _kl_rows(student, teacher, dim=1))
        return kl * temperature**2
