"""What every frozen teacher gives, and declares that it gives.

A teacher is a frozen ``nn.Module`` (no gradients, always in eval mode, float32 even under autocast)
whose ``forward(image0, image1, **request) -> TeacherOutput`` fills the fields it :attr:`~FrozenTeacher.provides`:

- ``similarity`` / ``confidence``: dense coarse matrices on the teacher's grid (``stride``) — LoFTR,
  a trained student, XFeat's dense descriptors; distilled by the KL term after 2-D grid alignment;
- ``fine``: sub-pixel matches of requested image0 cells (``fine_cells=``) — LoFTR's fine stage;
  distilled into the student's refinement;
- ``matches``: sparse matches with a confidence (pseudo ground truth for pairs without geometry) —
  LightGlue over DISK/ALIKED/XFeat keypoints.

The losses ask for what they need from what a teacher provides (:class:`loftr_kd.losses.DistillationLoss`),
never from its class.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from loftr_kd.geometry import CoarseGrid
from loftr_kd.models.matching import mutual_nearest_matches

__all__ = [
    "FINE",
    "MATCHES",
    "SIMILARITY",
    "FrozenTeacher",
    "TeacherFine",
    "TeacherMatches",
    "TeacherOutput",
    "check_image_batch",
    "teacher_coarse_matches",
]

SIMILARITY, FINE, MATCHES = "similarity", "fine", "matches"


class TeacherFine(NamedTuple):
    """Fine matches of requested image0 cells (LoFTR's fine stage), float32, no grad.

    Attributes:
        points0: ``(B, N, 2)`` xy pixels of the requested image0 cells, LoFTR's ``stride * (x, y)``.
        points1: ``(B, N, 2)`` refined image1 position of each cell's coarse match (its row's best).
        valid: ``(B, N)`` bool: that coarse match is a teacher match (mutual nearest, confidence above the
            teacher's threshold, off its border) -- elsewhere ``points1`` means nothing.
    """

    points0: Tensor
    points1: Tensor
    valid: Tensor


class TeacherMatches(NamedTuple):
    """Sparse matches of a teacher, padded to a fixed count per pair, float32, no grad.

    Attributes:
        keypoints0: ``(B, N, 2)`` xy pixels in image0 (integer pixel centres, the project's frame).
        keypoints1: ``(B, N, 2)`` xy pixels in image1.
        confidence: ``(B, N)`` the teacher's match score in [0, 1].
        valid: ``(B, N)`` bool: a real match (the rest is padding).
    """

    keypoints0: Tensor
    keypoints1: Tensor
    confidence: Tensor
    valid: Tensor

    def as_batch(self) -> dict[str, Tensor]:
        """The batch keys of pseudo ground truth (``loftr_kd.supervision``'s matches path)."""
        return {
            "matches0": self.keypoints0,
            "matches1": self.keypoints1,
            "match_confidence": self.confidence,
            "match_valid": self.valid,
        }


class TeacherOutput(NamedTuple):
    """What a teacher gives for a batch of pairs; the fields it does not provide are ``None``.

    Attributes:
        similarity: dual-softmax logits ``(B, L0, L1)`` on the teacher's grid.
        confidence: ``softmax(similarity, 1) * softmax(similarity, 2)``, ``(B, L0, L1)``.
        fine: fine matches of the requested cells (``forward(..., fine_cells=)``).
        matches: sparse pseudo ground-truth matches.
    """

    similarity: Tensor | None = None
    confidence: Tensor | None = None
    fine: TeacherFine | None = None
    matches: TeacherMatches | None = None


class FrozenTeacher(nn.Module):
    """Base of the teachers: frozen, and in eval mode whatever Lightning asks.

    Subclasses set :attr:`provides` (a subset of ``{"similarity", "fine", "matches"}``), :attr:`name` and,
    when they provide a similarity, :attr:`stride` (their grid's cell size in pixels) and, when their cells
    are not centred, :attr:`cell_origin`.
    """

    provides: frozenset[str] = frozenset()
    stride: int | None = None
    # The pixel (on both axes) cell 0 of the similarity stands for: cell t is pixel ``stride * t +
    # cell_origin``. None: the project's own convention, the cell centre ``(stride - 1) / 2`` (a trained
    # student, XFeat); LoFTR's cells are the points ``8 * t`` (0). The distillation pairs each student cell
    # with the teacher cell nearest its centre by it (loftr_kd.losses.distillation.alignment_phase).
    cell_origin: float | None = None
    name: str = "teacher"  # for the run's log

    def freeze(self) -> None:
        """No gradients, eval mode (call at the end of ``__init__``)."""
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stay in eval mode whatever ``mode`` says (Lightning calls ``.train()`` on every submodule)."""
        return super().train(False)


def check_image_batch(image: Tensor, name: str, stride: int) -> Tensor:
    """Check a ``(B, 1, H, W)`` float image batch and drop rows/columns beyond a multiple of ``stride``."""
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] != 1:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{name} must be a (B, 1, H, W) grayscale tensor, got {shape}")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got {image.dtype}")
    height, width = image.shape[-2:]
    if height < stride or width < stride:
        raise ValueError(f"{name} of {height}x{width} is smaller than one {stride}x{stride} teacher cell")
    return image[..., : height - height % stride, : width - width % stride]


def teacher_coarse_matches(
    confidence: Tensor, grid: CoarseGrid, threshold: float, border_cells: int, student_stride: int
) -> Tensor:
    """A teacher's coarse matches under the student's rule (threshold, border removal scaled from the
    student's grid to the teacher's), for validation figures comparable with the student's.

    Returns:
        ``(B, L0)`` matched image1 cell ids, ``-1`` = none.
    """
    border = border_cells * student_stride // grid.stride
    valid = grid.border_mask(border, device=confidence.device)
    return mutual_nearest_matches(confidence, threshold, valid, valid)[0]


def no_grad_float32(device_type: str):
    """The context every teacher computes in: no gradients, autocast off (float32 targets whatever AMP)."""
    from contextlib import ExitStack

    stack = ExitStack()
    stack.enter_context(torch.no_grad())
    stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
    return stack
