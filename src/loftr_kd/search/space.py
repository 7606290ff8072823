"""The search space: :class:`SearchSettings` (``search:`` of ``conf/hparams_search/student_latency.yaml``)
and the scalar knobs of ``conf/student/search.yaml`` that Optuna samples (docs/search.md)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OBJECTIVES = ("constrained", "pareto")


@dataclass(frozen=True)
class SearchSettings:
    """What a trial measures and how it decides (``search:`` in ``conf/hparams_search/student_latency.yaml``).

    Attributes:
        objective: ``constrained`` (best quality under the budget) or ``pareto`` (quality and latency).
        budget_ms: absolute latency budget in ms (e.g. 20); used when ``budget_reference`` is null.
        budget_reference: student preset (``conf/student/<name>.yaml``) timed with every candidate; the
            budget is ``budget_factor`` times its median latency on the trial's machine.
        budget_factor: multiple of the reference's latency allowed.
        prune: stop an over-budget trial before it trains.
        height, width: input size the latency is measured at.
        threads: onnxruntime intra-op threads.
        repeats: timed runs (median reported); ``warmup`` runs before them are not timed.
        warmup: untimed runs first.
        presets: presets enqueued as the first trials of the study (trained on the same budget).
        enqueue: more trials to run first, after the presets: mappings of searched parameter to value
            (Optuna's ``enqueue_trial``; parameters left out are sampled).
        rank_wait_s: DDP ranks other than 0 wait this long for rank 0's latency decision.
        preset_trial: this run is one of the preset trials the sweep enqueued (``search.preset_trial=True``
            is part of those trials' overrides, :func:`loftr_kd.cli.search_sweeper.mark_preset_trial`):
            only such a trial is trained when over the budget, not any trial that happens to have a
            preset's architecture.
    """

    objective: str = "constrained"
    budget_ms: float | None = None
    budget_reference: str | None = "fast"
    budget_factor: float = 1.0
    prune: bool = True
    height: int = 480
    width: int = 640
    threads: int = 2
    repeats: int = 20
    warmup: int = 3
    presets: tuple[str, ...] = ("paper", "fast")
    enqueue: tuple[dict[str, Any], ...] = ()
    rank_wait_s: float = 1800.0
    preset_trial: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "presets", tuple(self.presets or ()))
        object.__setattr__(self, "enqueue", tuple(dict(e) for e in (self.enqueue or ())))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"search.objective={self.objective!r}: expected one of {', '.join(OBJECTIVES)}")
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ValueError(f"search.budget_ms={self.budget_ms!r}: expected a positive number of ms or null")
        if not self.budget_factor > 0:
            raise ValueError(f"search.budget_factor={self.budget_factor!r}: expected > 0")
        if self.objective == "constrained" and self.budget_ms is None and not self.budget_reference:
            raise ValueError(
                "search.objective=constrained needs a budget: set search.budget_ms or search.budget_reference"
            )
        if not isinstance(self.preset_trial, bool):
            raise ValueError(f"search.preset_trial={self.preset_trial!r}: expected true or false")
        for name, low in (("height", 1), ("width", 1), ("threads", 1), ("repeats", 1), ("warmup", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"search.{name}={value!r}: expected an integer >= {low}")

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> SearchSettings:
        """From the plain ``search`` config node (names and types are checked up front, with the closest
        known name for a typo, by ``loftr_kd.config_check``); keys such as ``_target_`` are left out."""
        values = {k: v for k, v in dict(node).items() if not str(k).startswith("_")}
        return cls(**values)


def search_student_values(
    *,
    backbone: str = "fast",
    coarse_stride: int = 16,
    width: int = 16,
    depth: int = 1,
    last_depth: int = 1,
    d_model: int = 32,
    nhead: int = 1,
    attention_layers: int = 2,
    **fields: Any,
) -> dict[str, Any]:
    """:class:`~loftr_kd.models.student.StudentConfig` fields from the search's scalar knobs.

    Stage widths start at ``min(width, d_model)`` (the stem's channels, also the first stage's) and double
    per stage up to ``d_model``; the last stage is ``d_model``. The ``fast`` backbone has ``depth`` stride-1
    RepVGG blocks after each stage's stride-2 conv and ``last_depth`` in the last (1/s) stage;
    ``resnet_fpn`` has LoFTR's fixed two blocks per stage, so the depth knobs do not apply to it. ``attention_layers`` is the number
    of (self, cross) pairs. Every other keyword is a ``StudentConfig`` field passed through as it is.
    Defaults are the ``fast`` preset.
    """
    for name, value in (("width", width), ("d_model", d_model), ("attention_layers", attention_layers)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    width = min(width, d_model)  # stage widths grow up to d_model, never beyond
    stages = int(math.log2(coarse_stride)) - (1 if backbone == "fast" else 0)
    if stages < 1:
        raise ValueError(f"coarse_stride {coarse_stride} is too small for the {backbone} backbone")
    dims = tuple(min(width * 2**i, d_model) for i in range(stages - 1)) + (d_model,)
    values = dict(
        backbone=backbone,
        coarse_stride=coarse_stride,
        initial_dim=width,
        block_dims=dims,
        block_depths=(depth,) * (stages - 1) + (last_depth,) if backbone == "fast" else None,
        d_model=d_model,
        d_ffn=d_model,
        nhead=nhead,
        layer_names=("self", "cross") * attention_layers,
    )
    return {**fields, **values}


def build_search_student(**knobs: Any):
    """The Hydra ``_target_`` of ``conf/student/search.yaml``: a student from the search's knobs."""
    from loftr_kd.models.student import build_student

    return build_student(**search_student_values(**knobs))


def preset_knobs(name: str, config_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The knob values (and pass-through fields) of a student preset, so it can be a trial of the search.

    Raises:
        ValueError: the preset is not expressible with the knobs (e.g. unequal attention pattern).
    """
    from loftr_kd.config import preset_values

    values = preset_values(name, config_dir)
    dims = list(values["block_dims"])
    layers = list(values.get("layer_names", ("self", "cross") * 2))
    depths = values.get("block_depths") or ([1] * len(dims) if values.get("backbone") == "fast" else None)
    knobs = {
        "backbone": values.get("backbone", "resnet_fpn"),
        "coarse_stride": values.get("coarse_stride", 16),
        "width": values.get("initial_dim", 8),
        "depth": int(depths[0]) if depths and len(depths) > 1 else 1,
        "last_depth": int(depths[-1]) if depths else 1,
        "d_model": values["d_model"],
        "nhead": values.get("nhead", 1),
        "attention_layers": len(layers) // 2,
    }
    rebuilt = search_student_values(**knobs)
    for key in ("block_dims", "layer_names", "initial_dim", "block_depths"):
        want = values.get(key)
        want = tuple(want) if isinstance(want, (list, tuple)) else want
        if key == "block_depths" and want is None and knobs["backbone"] == "fast":
            want = rebuilt[key]
        if key == "layer_names" and want is None:
            want = rebuilt[key]
        if rebuilt[key] != want:
            raise ValueError(f"preset {name!r} is not expressible with the search knobs ({key}: {want})")
    if values.get("d_ffn", values["d_model"]) != values["d_model"]:
        raise ValueError(f"preset {name!r} is not expressible with the search knobs (d_ffn != d_model)")
    passthrough = {k: v for k, v in values.items() if k.startswith("refine")}
    return {**knobs, **passthrough}
