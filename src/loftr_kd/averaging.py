"""Weight averaging of student checkpoints: a uniform "model soup" (Wortsman et al., 2022), i.e. stochastic
weight averaging (Izmailov et al., 2018) over saved checkpoints instead of over steps.

Every ingredient must be the same architecture fine-tuned from one initialisation (the epochs of a run, or
runs of one stage with other seeds): averaging unrelated networks gives noise. The average is taken with
``torch.optim.swa_utils.AveragedModel`` over parameters and buffers. BatchNorm statistics are averaged too;
where the runs held them (``freeze_batchnorm``, as the default's stage 3 does) they are identical and the
average is exact, otherwise :class:`AverageReport` says how far they differ (``torch.optim.swa_utils.update_bn``
over training data is then the proper fix). ``num_batches_tracked`` (an integer) is not averaged: the
average carries the largest count among the ingredients, the batches the longest-trained one's statistics
summarise (the last epoch's, for the epochs of one run).

Inference settings may differ between the ingredients (input size, ``match_threshold``, ``refine_query``,
``refine_points``, ``border_removal``: what ``load_student`` and a recipe's ship step change without touching
the weights); the average carries the first checkpoint's, and :class:`AverageReport` names those that
differed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from loftr_kd.models.student import CoarseLoFTRStudent, load_student

__all__ = ["AverageReport", "average_students"]

# config fields that may differ between ingredients: they change how the weights are run, not the weights
# (load_student's keyword arguments and loftr_kd.recipe.SHIP_SETTINGS set them on any checkpoint)
_RUNTIME_FIELDS = (
    "input_height",
    "input_width",
    "max_height",
    "max_width",
    "match_threshold",
    "refine_query",
    "refine_points",
    "border_removal",
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
        differing_settings: the inference settings (``_RUNTIME_FIELDS``) that were not the same in every
            checkpoint: name -> each checkpoint's value, in order; the average carries the first.
    """

    count: int
    max_parameter_change: float
    max_batchnorm_spread: float
    differing_settings: dict[str, tuple] = field(default_factory=dict)


def _architecture(model: CoarseLoFTRStudent) -> dict:
    """The config fields that define the weights' shapes and meaning."""
    return {k: v for k, v in asdict(model.config).items() if k not in _RUNTIME_FIELDS}


def average_students(
    paths: Sequence[str | os.PathLike],
) -> tuple[CoarseLoFTRStudent, AverageReport]:
    """Uniform average of the weights of student checkpoints (any format :func:`load_student` reads).

    Args:
        paths: two or more checkpoints of one architecture. The first one's inference settings (input size,
            match threshold, refinement queries and points, border removal) are kept.

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
    counts = {k: v.clone() for k, v in first.state_dict().items() if k.endswith("num_batches_tracked")}
    settings = {k: [getattr(first.config, k)] for k in _RUNTIME_FIELDS}
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
            if key in counts:
                counts[key] = torch.maximum(counts[key], value)
        for key, values in settings.items():
            values.append(getattr(model.config, key))
        averaged.update_parameters(model)
    student = averaged.module.eval().requires_grad_(False)
    state = student.state_dict()  # shares the buffers' storage
    for key, count in counts.items():  # an integer: the mean would be truncated and count nothing
        state[key].copy_(count)
    change = max(
        float((a - b).abs().max()) for a, b in zip(student.parameters(), first.parameters(), strict=True)
    )
    differing_settings = {k: tuple(v) for k, v in settings.items() if len(set(map(repr, v))) > 1}
    return student, AverageReport(len(paths), change, spread, differing_settings)
