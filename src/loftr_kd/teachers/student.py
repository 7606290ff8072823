"""A trained student, frozen, as the distillation teacher (``teacher=student``)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from loftr_kd.teachers.base import SIMILARITY, FrozenTeacher, TeacherOutput, no_grad_float32

__all__ = ["StudentTeacher", "build_student_teacher"]


class StudentTeacher(FrozenTeacher):
    """A trained student, frozen, as the distillation teacher (``teacher=student``).

    It gives the same ``TeacherOutput`` as :class:`LoFTRTeacher` (similarity logits and dual-softmax
    confidence on its own grid, float32, no grad), so the losses align it to the student exactly as they
    align LoFTR: its grid must be the same as the student's or finer by an integer factor. Without the
    LoFTR checkpoint this is the way to distil real trained weights here — e.g. the published
    Coarse_LoFTR_TRT student (distilled from LoFTR on BlendedMVS) into the ``fast`` preset.

    Args:
        model: the trained student; prepared for inference (fused) in place and frozen.
    """

    provides = frozenset({SIMILARITY})
    name = "student"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.prepare_for_inference(inplace=True)
        self.checkpoint_path: Path | None = None  # set by build_student_teacher, for logs
        self.stride = int(self.model.config.coarse_stride)
        self.freeze()

    def forward(self, image0: Tensor, image1: Tensor) -> TeacherOutput:
        """Similarity and confidence ``(B, L0, L1)`` of the frozen student, in float32."""
        with no_grad_float32(image0.device.type):
            out = self.model(image0.float(), image1.float())
        return TeacherOutput(similarity=out.similarity.float(), confidence=out.confidence.float())


def build_student_teacher(weights: str | Path, input_height: int, input_width: int) -> StudentTeacher:
    """Hydra entry point of ``conf/teacher/student.yaml``: a student checkpoint as a frozen teacher.

    Args:
        weights: a ``save_student`` file, a Lightning checkpoint or a published Coarse_LoFTR_TRT checkpoint
            (anything :func:`loftr_kd.models.student.load_student` reads).
        input_height, input_width: the training size.

    Raises:
        FileNotFoundError: ``weights`` does not exist (a student teacher has no ``auto``).
    """
    from loftr_kd.models.student import load_student

    path = Path(weights)
    if str(weights) in ("", "auto", "None") or not path.exists():
        raise FileNotFoundError(
            f"teacher=student needs teacher.weights=<student checkpoint>; {weights!r} is not a file"
        )
    model = load_student(path, input_height=int(input_height), input_width=int(input_width))
    teacher = StudentTeacher(model)
    teacher.checkpoint_path = path
    return teacher
