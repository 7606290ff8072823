"""Weight averaging of student checkpoints: a uniform "model soup" (Wortsman et al., 2022), i.e. stochastic
weight averaging (Izmailov et al., 2018) over saved checkpoints instead of over steps.

Every ingredient must be the same architecture fine-tuned from one initialisation (the epochs of a run, or
runs of one stage with other seeds): averaging unrelated networks gives noise. The average is taken with
``torch.optim.swa_utils.AveragedModel`` over parameters and buffers. BatchNorm statistics are averaged too;
where the runs held them (``freeze_batchnorm``, as the default's stage 3 does) they are identical and the
average is exact, otherwise :class:`AverageReport` says how far they differ (``torch.optim.swa_utils.update_bn``
over training data is then the proper fix).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from torch.optim.swa_utils import AveragedModel

from loftr_kd.models.student import CoarseLoFTRStudent, load_student

__all__ = ["AverageReport", "average_students"]

# config fields that may differ between ingredients: they change how the weights are run, not the weights
_RUNTIME_FIELDS = (
    "input_height",
    "input_width",
    "max_height",
    "max_width",
    "match_threshold",
    "refine_query",
)


@dataclass(frozen=True)
class AverageReport:
    """What :func:`average_students` averaged.

    Attributes:
        count: number of checkpoints.
        max_parameter_change: largest absolute difference between a parameter of the average and of the
            first checkpoint (0 means the checkpoints were identical).
        max_batchnorm_spread: largest absolute difference of a BatchNorm running statistic from the first
            checkpoint's (0 when the statistics were held).
    """

    count: int
    max_parameter_change: float
    max_batchnorm_spread: float


def _architecture(model: CoarseLoFTRStudent) -> dict:
    """The config fields that define the weights' shapes and meaning."""
    return {k: v for k, v in asdict(model.config).items() if k not in _RUNTIME_FIELDS}


def average_students(
    paths: Sequence[str | os.PathLike],
) -> tuple[CoarseLoFTRStudent, AverageReport]:
    """Uniform average of the weights of student checkpoints (any format :func:`load_student` reads).

    Args:
        paths: two or more checkpoints of one architecture. The first one's runtime settings (input size,
            match threshold) are kept.

    Returns:
        The averaged student (eval mode, CPU, gradients off) and an :class:`AverageReport`.

    Raises:
        ValueError: fewer than two paths, or checkpoints of different architectures (the differing config
            fields and files named).
    """
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(paths)}")
    first_path = Path(paths[0])
    first = load_student(first_path).requires_grad_(False)
    reference = _architecture(first)
    averaged = AveragedModel(first, use_buffers=True)  # a deep copy: `first` stays the first checkpoint
    averaged.update_parameters(first)  # the copy counts only once updated (n_averaged starts at 0)
    running = {k: v.clone() for k, v in first.state_dict().items() if "running_" in k}
    spread = 0.0
    for path in paths[1:]:
        model = load_student(path)
        differing = {k: (reference[k], v) for k, v in _architecture(model).items() if reference.get(k) != v}
        if differing:
            raise ValueError(
                f"{path} is not the same student as {first_path}: {differing} (field: (first, this)); "
                "only checkpoints of one architecture can be averaged"
            )
        for key, value in model.state_dict().items():
            if key in running:
                spread = max(spread, float((value - running[key]).abs().max()))
        averaged.update_parameters(model)
    student = averaged.module.eval().requires_grad_(False)
    change = max(
        float((a - b).abs().max()) for a, b in zip(student.parameters(), first.parameters(), strict=True)
    )
    return student, AverageReport(len(paths), change, spread)
