"""Latency-aware student search: one Optuna trial = measure, maybe prune, train, record (docs/search.md).

``hparams_search=student_latency`` runs Hydra's Optuna sweeper over the knobs of ``conf/student/search.yaml``
(:func:`build_search_student`: backbone, stage widths and depths, ``d_model``, heads, attention layers,
coarse stride, refinement and its window) and the main loss weights. Inside each trial ``train()`` calls
:func:`begin_trial` before it loads any data:

1. build the untrained student of the trial (an invalid combination, e.g. ``d_model % nhead != 0``, is a
   *failed* trial with its reason: the job raises :class:`SearchTrialFailed`, the sweeper records it and
   goes on);
2. export it to ONNX at the target size (``search.height`` x ``search.width``) and time it in onnxruntime
   on ``search.threads`` threads: median of ``search.repeats`` runs, warm-up excluded. With
   ``search.budget_reference`` (a preset, ``fast`` by default) that preset is exported and timed
   *interleaved* with the candidate in the same process, and the budget is ``budget_factor`` times its
   median: on a shared or throttled machine both see the same load, so the decision rests on the ratio;
3. over budget: the trial is *pruned* before it trains and returns a penalty below any feasible score;
   else it trains on the configured budget and :func:`finish_trial` returns the objective: the best
   ``optimized_metric`` (pixel-level validation F1 from :mod:`loftr_kd.metrics`), or with
   ``search.objective=pareto`` the pair (quality, latency ms) for a two-objective study.

Every trial writes ``search_trial.json`` into its run directory. :class:`SearchCallback` (a Hydra callback)
enqueues the ``paper`` / ``fast`` presets as the first trials of the same study (Optuna's
``enqueue_trial``, so they are trained on the same budget) and, at the end of the sweep, writes the table of
all trials and the quality-vs-latency plot with the Pareto front into the sweep directory
(:func:`write_report`, also ``loftr-kd-search-report SWEEP_DIR``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("loftr_kd.search")

__all__ = [
    "RECORD_NAME",
    "SearchCallback",
    "SearchSettings",
    "SearchTrialFailed",
    "begin_trial",
    "build_search_student",
    "finish_trial",
    "measure_latency",
    "pareto_front",
    "preset_knobs",
    "search_student_values",
    "study_storage",
    "write_report",
]

RECORD_NAME = "search_trial.json"
OBJECTIVES = ("constrained", "pareto")
REPORT_STEM = "search_report"


class SearchTrialFailed(RuntimeError):
    """A trial that cannot run (invalid architecture, export failure); the sweep records it and goes on.

    Deliberately not a ``ValueError``: the training entry point turns those into exit status 2, which would
    end the whole sweep.
    """


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
        for name, low in (("height", 1), ("width", 1), ("threads", 1), ("repeats", 1), ("warmup", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"search.{name}={value!r}: expected an integer >= {low}")

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> SearchSettings:
        """From the plain ``search`` config node (names and types are checked up front, with the closest
        known name for a typo, by ``loftr_kd.config_check``)."""
        values = {k: v for k, v in dict(node).items() if not str(k).startswith("_")}
        return cls(**values)


# ------------------------------------------------------------------------------------------ the space
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
    per stage up to ``d_model``; the last stage is ``d_model``. The ``fast`` backbone has ``depth`` stride-1 RepVGG blocks
    after each stage's stride-2 conv and ``last_depth`` in the last (1/s) stage; ``resnet_fpn`` has LoFTR's
    fixed two blocks per stage, so the depth knobs do not apply to it. ``attention_layers`` is the number
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


# ------------------------------------------------------------------------------------------ latency
def _export_for_timing(config: Any, height: int, width: int, path: Path) -> Path:
    from loftr_kd.export.onnx import export_onnx
    from loftr_kd.models.student import build_student

    values = {**asdict(config), "input_height": height, "input_width": width}
    model = build_student(**values).eval()
    return export_onnx(model, path, height=height, width=width)


def measure_latency(config: Any, settings: SearchSettings) -> dict[str, Any]:
    """Export the (untrained: speed does not depend on weights) student and time it in onnxruntime.

    The candidate and, with ``budget_reference``, that preset are timed round-robin in one process
    (:func:`loftr_kd.runtime.time_sessions`) on one real image pair
    (:func:`loftr_kd.data.homography.real_image_pairs`, as ``loftr-kd-bench``), batch 1, with
    onnxruntime's thread spinning off in both sessions: a spinning idle session steals the cores of the
    one being timed (on 2 cores it made the same graph look 20 % slower or faster than itself).

    Returns:
        ``median_ms``, ``p90_ms`` of the candidate; ``reference``, ``reference_median_ms`` and ``ratio``
        when a reference is timed; ``budget_ms`` (``None`` without a budget); ``over_budget``.
    """
    import torch

    from loftr_kd.config import preset_values
    from loftr_kd.data.homography import real_image_pairs
    from loftr_kd.models.student import StudentConfig
    from loftr_kd.runtime import ort_session, time_sessions

    height, width = settings.height, settings.width
    image0, image1, _ = real_image_pairs(height, width, 1, seed=7)[0]
    feeds = {"image0": image0[None, None], "image1": image1[None, None]}
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # tracing only; the CPU is onnxruntime's while timing
    try:
        with tempfile.TemporaryDirectory(prefix="loftr_kd_search_") as tmp:
            graphs = {"candidate": _export_for_timing(config, height, width, Path(tmp) / "candidate.onnx")}
            if settings.budget_reference:
                reference = StudentConfig.from_dict(
                    {**preset_values(settings.budget_reference), "input_height": height, "input_width": width}
                )
                graphs["reference"] = _export_for_timing(
                    reference, height, width, Path(tmp) / "reference.onnx"
                )
            sessions = {
                key: (ort_session(path, threads=settings.threads, spinning=False), feeds)
                for key, path in graphs.items()
            }
            timings = time_sessions(sessions, settings.repeats, warmup=settings.warmup)
    finally:
        torch.set_num_threads(threads_before)
    result: dict[str, Any] = {
        "height": height,
        "width": width,
        "threads": settings.threads,
        "repeats": settings.repeats,
        "warmup": settings.warmup,
        "median_ms": timings["candidate"]["median_ms"],
        "p90_ms": timings["candidate"]["p90_ms"],
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    budget = settings.budget_ms
    if "reference" in timings:
        result["reference"] = settings.budget_reference
        result["reference_median_ms"] = timings["reference"]["median_ms"]
        result["ratio"] = result["median_ms"] / result["reference_median_ms"]
        budget = settings.budget_factor * result["reference_median_ms"]
    result["budget_ms"] = budget
    if budget is None:
        result["over_budget"] = False
    elif "ratio" in result:
        result["over_budget"] = result["ratio"] > settings.budget_factor
    else:
        result["over_budget"] = result["median_ms"] > budget
    return result


# ------------------------------------------------------------------------------------------ trials
def _write_record(path: Path, record: Mapping[str, Any]) -> None:
    from loftr_kd.files import write_json

    write_json(path, dict(record))


def _penalty(latency: Mapping[str, Any], settings: SearchSettings) -> float:
    """Objective of a pruned trial: below any feasible score (F1 >= 0), higher when closer to the budget."""
    excess = (
        latency["ratio"] / settings.budget_factor
        if "ratio" in latency
        else latency["median_ms"] / latency["budget_ms"]
    )
    return -float(excess - 1.0)


def _objective(record: Mapping[str, Any], settings: SearchSettings) -> float | list[float]:
    latency = record["latency"]
    if settings.objective == "pareto":
        quality = record.get("quality")
        return [
            float(quality) if record["status"] == "trained" and quality is not None else 0.0,
            float(latency["median_ms"]),
        ]
    if record["status"] == "pruned" or latency.get("over_budget"):
        return _penalty(latency, settings)
    return float(record["quality"])


@dataclass
class Trial:
    """What :func:`begin_trial` found: the student to train, or the value to return without training."""

    record: dict[str, Any]
    path: Path
    settings: SearchSettings
    student: Any = None
    done: Any = None  # the objective to return at once (pruned trial), else None
    rank_zero: bool = True

    def fail(self, error: BaseException) -> None:
        """Record a failure during training (rank 0), so the report lists it with its reason."""
        if self.rank_zero:
            self.record.update(status="failed", reason=f"{type(error).__name__}: {_first_line(error)}")
            _write_record(self.path, self.record)


def _first_line(error: BaseException) -> str:
    from loftr_kd.errors import one_line, root_cause

    return one_line(root_cause(error))


def _job_info(cfg: Any) -> dict[str, Any]:
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
        return {
            "num": int(hydra_cfg.job.num),
            "overrides": list(hydra_cfg.overrides.task),
            "student_choice": hydra_cfg.runtime.choices.get("student"),
        }
    except Exception:  # noqa: BLE001 - not under Hydra (tests compose the config themselves)
        return {"num": None, "overrides": [], "student_choice": None}


def begin_trial(cfg: Any, output_dir: Path) -> Trial:
    """Build the trial's student, measure its latency, decide (see the module docstring).

    Raises:
        SearchTrialFailed: the architecture is invalid or cannot be exported/timed (recorded first).
    """
    import hydra
    from omegaconf import OmegaConf

    from loftr_kd.models.student import count_parameters

    settings = SearchSettings.from_config(OmegaConf.to_container(cfg.search, resolve=True))
    path = output_dir / RECORD_NAME
    knobs = {k: v for k, v in OmegaConf.to_container(cfg.student, resolve=True).items() if k != "_target_"}
    job = _job_info(cfg)
    record: dict[str, Any] = {
        "status": "measuring",
        "reason": None,
        "job": job,
        "student_choice": job.get("student_choice"),
        "knobs": knobs,
        "loss": {
            k: v for k, v in OmegaConf.to_container(cfg.loss, resolve=True).items() if k.startswith("w_")
        },
        "settings": asdict(settings),
        "optimized_metric": str(cfg.get("optimized_metric")),
    }
    from loftr_kd.distributed import is_rank_zero_process

    rank_zero = is_rank_zero_process()
    if not rank_zero:
        return _follow_rank_zero(path, settings, cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        student = hydra.utils.instantiate(cfg.student)
    except Exception as error:  # noqa: BLE001 - an invalid combination of sizes is a failed trial
        reason = _first_line(error)
        record.update(status="failed", reason=f"invalid student: {reason}")
        _write_record(path, record)
        raise SearchTrialFailed(f"invalid student: {reason}") from error
    record["student_config"] = asdict(student.config)
    record["parameters"] = count_parameters(student)
    record["preset"] = _matching_preset(student.config)
    _write_record(path, record)
    try:
        latency = measure_latency(student.config, settings)
    except Exception as error:  # noqa: BLE001
        reason = f"latency measurement failed: {type(error).__name__}: {_first_line(error)}"
        record.update(status="failed", reason=reason)
        _write_record(path, record)
        raise SearchTrialFailed(reason) from error
    record["latency"] = latency
    trial = Trial(record, path, settings, student=student)
    budget = latency.get("budget_ms")
    described = f"{latency['median_ms']:.2f} ms" + (
        f" ({latency['ratio']:.2f}x {latency['reference']} = {latency['reference_median_ms']:.2f} ms)"
        if "ratio" in latency
        else ""
    )
    preset = record["preset"]
    if preset is not None and preset == settings.budget_reference:
        latency["over_budget"] = False  # the reference itself: its ratio is 1 up to timing noise
    if latency["over_budget"] and settings.prune and preset not in settings.presets:
        record.update(
            status="pruned",
            reason=f"over budget before training: {described} > {budget:.2f} ms "
            f"at {settings.width}x{settings.height}, {settings.threads} threads",
        )
        trial.done = _objective(record, settings)
        record["objective"] = trial.done
        log.info("Search: trial pruned — %s", record["reason"])
    else:
        record["status"] = "training"
        if latency["over_budget"]:
            record["reason"] = (
                f"over budget ({described} > {budget:.2f} ms); trained for comparison (a preset)"
            )
        log.info(
            "Search: latency %s, budget %s: training.",
            described,
            "none" if budget is None else f"{budget:.2f} ms",
        )
    _write_record(path, record)
    return trial


def _follow_rank_zero(path: Path, settings: SearchSettings, cfg: Any) -> Trial:
    """DDP ranks > 0: wait for rank 0's decision (it measured), build the same student."""
    import hydra

    deadline = time.monotonic() + settings.rank_wait_s
    while True:
        record = json.loads(path.read_text()) if path.is_file() else {}
        if record.get("status") not in (None, "measuring"):
            break
        if time.monotonic() > deadline:
            raise SearchTrialFailed(
                f"rank 0 wrote no latency decision to {path} in {settings.rank_wait_s:.0f} s"
            )
        time.sleep(0.5)
    if record["status"] == "failed":
        raise SearchTrialFailed(str(record.get("reason")))
    trial = Trial(record, path, settings, rank_zero=False)
    if record["status"] == "pruned":
        trial.done = record.get("objective")
    else:
        trial.student = hydra.utils.instantiate(cfg.student)
    return trial


def finish_trial(trial: Trial, best_score: float | None, summary: Mapping[str, Any]) -> float | list[float]:
    """Record the trained trial's quality and return the objective for the sweeper.

    Raises:
        SearchTrialFailed: the optimised metric was never logged or is not finite.
    """
    if best_score is None or not math.isfinite(float(best_score)):
        error = SearchTrialFailed(
            f"no finite {trial.record.get('optimized_metric')} after training ({best_score})"
        )
        trial.fail(error)
        raise error
    record = trial.record
    record.update(status="trained", quality=float(best_score))
    record["quality_before_training"] = summary.get("optimized_metric", {}).get("before_training")
    record["final_metrics"] = {
        k: v for k, v in summary.get("final_metrics", {}).items() if k.startswith("val/")
    }
    record["objective"] = _objective(record, trial.settings)
    if trial.rank_zero:
        _write_record(trial.path, record)
    return record["objective"]


def _matching_preset(
    config: Any, names: Sequence[str] = ("paper", "fast", "paper_refine", "fast_refine")
) -> str | None:
    """The preset whose architecture this is (ignoring the input size and ``paper``'s two quirks)."""
    from loftr_kd.config import preset_values
    from loftr_kd.models.student import StudentConfig

    ignore = {"input_height", "input_width", "pe_temp_bug_fix", "keep_unused_fpn"}
    mine = {k: v for k, v in asdict(config).items() if k not in ignore}
    for name in names:
        try:
            values = preset_values(name)
        except FileNotFoundError:
            continue
        theirs = asdict(
            StudentConfig.from_dict(
                {**values, "input_height": config.input_height, "input_width": config.input_width}
            )
        )
        if all(
            theirs[k] == v
            for k, v in mine.items()
            if not (config.refine == "none" and k.startswith("refine_"))
        ):
            return name
    return None


# ------------------------------------------------------------------------------------------ study
_STORAGE: list[Any] = []


def study_storage(reset: bool = False):
    """One in-memory Optuna storage per process, shared by the sweeper and :class:`SearchCallback`.

    ``hydra.sweeper.storage: {_target_: loftr_kd.search.study_storage}``: the callback enqueues the presets
    into the study before the sweeper loads it (``load_if_exists``), and reads the finished trials after.
    """
    import optuna

    if reset or not _STORAGE:
        _STORAGE[:] = [optuna.storages.InMemoryStorage()]
    return _STORAGE[0]


def _sweeper_distributions(config: Any) -> dict[str, Any]:
    """The sweeper's own parse of ``hydra.sweeper.params`` plus the command line's sweep overrides."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from omegaconf import OmegaConf

    params = [f"{k!s}={v}" for k, v in (config.hydra.sweeper.params or {}).items()]
    params += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    distributions, fixed = create_params_from_overrides(params)
    return {k: v for k, v in distributions.items() if k not in fixed}


def _contains(distribution: Any, value: Any) -> bool:
    """Whether an Optuna distribution holds ``value`` (enqueuing one it does not hold ends the sweep)."""
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def _preset_trial_params(name: str, config: Any, distributions: Mapping[str, Any]) -> dict[str, Any]:
    """Values of every searched parameter for a preset: its knobs, the config's defaults for the rest."""
    from omegaconf import OmegaConf

    knobs = preset_knobs(name)
    params = {}
    for key, distribution in distributions.items():
        if key.startswith("student."):
            value = knobs.get(key.removeprefix("student."), OmegaConf.select(config, key))
        else:
            value = OmegaConf.select(config, key)
        if not _contains(distribution, value):
            raise ValueError(f"{key}={value!r} is outside the search space {distribution}")
        params[key] = value
    return params


def _open_study(config: Any):
    import optuna
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    sweeper = config.hydra.sweeper
    storage = sweeper.get("storage")
    storage = instantiate(storage) if OmegaConf.is_dict(storage) else storage
    direction = sweeper.get("direction")
    directions = list(direction) if OmegaConf.is_list(direction) else [direction]
    return optuna.create_study(
        study_name=sweeper.get("study_name"), storage=storage, directions=directions, load_if_exists=True
    )


def _is_shared_storage(config: Any) -> bool:
    storage = config.hydra.sweeper.get("storage")
    return bool(storage) and "study_storage" in str(
        storage.get("_target_", "") if hasattr(storage, "get") else storage
    )


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[assignment,misc]


class SearchCallback(_HydraCallback):
    """Hydra callback of the search: presets first (same study, same budget), the report at the end."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        study_storage(reset=True)
        presets = list(OmegaConf.select(config, "search.presets", default=[]) or [])
        extra = list(OmegaConf.select(config, "search.enqueue", default=[]) or [])
        if not (presets or extra) or not _is_shared_storage(config):
            return
        distributions = _sweeper_distributions(config)
        study = _open_study(config)
        for name in presets:
            try:
                params = _preset_trial_params(name, config, distributions)
            except (ValueError, FileNotFoundError) as why:
                log.warning("Search: preset %s is not enqueued: %s", name, why)
                continue
            study.enqueue_trial(params)
            log.info("Search: preset %s enqueued as a trial: %s", name, params)
        for params in extra:
            params = OmegaConf.to_container(params) if OmegaConf.is_config(params) else dict(params)
            problems = [
                f"{k} is not searched"
                if k not in distributions
                else f"{k}={v!r} is outside {distributions[k]}"
                for k, v in params.items()
                if k not in distributions or not _contains(distributions[k], v)
            ]
            if problems:
                log.warning("Search: trial %s is not enqueued: %s", params, "; ".join(problems))
                continue
            study.enqueue_trial(params)
            log.info("Search: trial enqueued: %s", params)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            study = _open_study(config) if _is_shared_storage(config) else None
            paths = write_report(sweep_dir, study=study)
            log.info("Search: report written to %s", ", ".join(str(p) for p in paths.values()))
        except Exception as error:  # noqa: BLE001 - a report problem must not hide the finished sweep
            log.error("Search: the report could not be written (%s: %s)", type(error).__name__, error)


# ------------------------------------------------------------------------------------------ report
def load_records(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every ``search_trial.json`` below ``sweep_dir`` (trials in job order), with its run directory."""
    records = []
    for path in sorted(Path(sweep_dir).rglob(RECORD_NAME)):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            record = {"status": "failed", "reason": f"unreadable record: {error}", "job": {}}
        record["run_dir"] = str(path.parent)
        records.append(record)

    def order(r: dict[str, Any]) -> tuple:
        num = (r.get("job") or {}).get("num")
        return (num is None, num if num is not None else 0, r["run_dir"])

    return sorted(records, key=order)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(latency, quality)`` points (lower latency, higher quality)."""
    front = []
    for i, (lat, q) in enumerate(points):
        dominated = any(
            (l2 <= lat and q2 >= q) and (l2 < lat or q2 > q) for j, (l2, q2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _normalised_latency(records: Sequence[dict[str, Any]]) -> float | None:
    """Median reference latency over the sweep (each trial's ratio times it = comparable ms)."""
    import numpy as np

    refs = [
        r["latency"]["reference_median_ms"]
        for r in records
        if "reference_median_ms" in (r.get("latency") or {})
    ]
    return float(np.median(refs)) if refs else None


def _rows(records: Sequence[dict[str, Any]], study: Any) -> list[dict[str, Any]]:
    reference_ms = _normalised_latency(records)
    states = {}
    if study is not None:
        for t in study.trials:
            states[t.number] = (t.state.name, t.values)
    rows = []
    for r in records:
        lat = r.get("latency") or {}
        cfg = r.get("student_config") or {}
        latency = lat.get("median_ms")
        if reference_ms is not None and "ratio" in lat:
            latency = lat["ratio"] * reference_ms
        num = (r.get("job") or {}).get("num")
        state, values = states.get(num, (None, None))
        rows.append(
            {
                "trial": num,
                "status": r.get("status"),
                "preset": r.get("preset"),
                "backbone": cfg.get("backbone", (r.get("knobs") or {}).get("backbone")),
                "stride": cfg.get("coarse_stride", (r.get("knobs") or {}).get("coarse_stride")),
                "widths": cfg.get("block_dims"),
                "depths": cfg.get("block_depths"),
                "d_model": cfg.get("d_model", (r.get("knobs") or {}).get("d_model")),
                "nhead": cfg.get("nhead", (r.get("knobs") or {}).get("nhead")),
                "attention_pairs": len(cfg["layer_names"]) // 2 if cfg.get("layer_names") else None,
                "refine": _refine_label(cfg),
                "w_kd": (r.get("loss") or {}).get("w_kd"),
                "w_refine": (r.get("loss") or {}).get("w_refine"),
                "parameters": r.get("parameters"),
                "latency_ms": latency,
                "measured_ms": lat.get("median_ms"),
                "ratio": lat.get("ratio"),
                "budget_ms": lat.get("budget_ms"),
                "quality": r.get("quality"),
                "optuna_state": state,
                "optuna_values": values,
                "reason": r.get("reason"),
                "run_dir": r.get("run_dir"),
            }
        )
    # Hydra's Optuna sweeper (Optuna 2.x) can ask for a point it has already tried: say so in the table.
    seen: dict[str, Any] = {}
    for row, r in zip(rows, records):
        config = dict(r.get("student_config") or {})
        if config.get("refine") == "none":  # the refinement's sizes do not exist then
            config = {k: v for k, v in config.items() if not k.startswith("refine_")}
        key = json.dumps([config, r.get("loss")], sort_keys=True, default=str)
        if r.get("student_config") and key in seen:
            row["same_as"] = seen[key]
        else:
            seen.setdefault(key, row["trial"])
    return rows


def _refine_label(cfg: Mapping[str, Any]) -> str | None:
    if not cfg:
        return None
    if cfg.get("refine", "none") == "none":
        return "none"
    return f"{cfg['refine']} /{cfg.get('refine_fine_stride')} m{cfg.get('refine_margin')}"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return "·".join(str(v) for v in value)
    return str(value).replace("|", "/")


def _markdown(rows: Sequence[dict[str, Any]], front: Sequence[int], meta: Mapping[str, Any]) -> str:
    lines = [
        "# Student search",
        "",
        f"Latency: onnxruntime, {meta.get('size')}, {meta.get('threads')} threads, median of "
        f"{meta.get('repeats')} runs after {meta.get('warmup')} warm-up runs; "
        + (
            f"budget {meta['budget']}; latency_ms is each trial's ratio to {meta['reference']} times "
            f"{meta['reference']}'s median over the sweep ({_fmt(meta.get('reference_ms'), 2)} ms)."
            if meta.get("reference")
            else f"budget {meta.get('budget')}."
        ),
        f"Quality: best {meta.get('metric')} of the trial's training run. Pareto front: *.",
        "",
        "| trial | status | preset | backbone | stride | widths | depths | d_model | heads | attn pairs | refine "
        "| w_kd | w_refine | params | latency ms | ×ref | quality | reason |",
        "| ---: | --- | --- | --- | ---: | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: "
        "| ---: | ---: | --- |",
    ]
    for i, r in enumerate(rows):
        star = " *" if i in front else ""
        lines.append(
            f"| {_fmt(r['trial'])}{star} | {r['status']} | {_fmt(r['preset'])} | {_fmt(r['backbone'])} | "
            f"{_fmt(r['stride'])} | {_fmt(r['widths'])} | {_fmt(r['depths'])} | {_fmt(r['d_model'])} | "
            f"{_fmt(r['nhead'])} | {_fmt(r['attention_pairs'])} | {_fmt(r['refine'])} | {_fmt(r['w_kd'], 2)} | "
            f"{_fmt(r['w_refine'], 2)} | {_fmt(r['parameters'])} | {_fmt(r['latency_ms'], 2)} | "
            f"{_fmt(r['ratio'], 2)} | {_fmt(r['quality'])} | {_fmt(_note(r))} |"
        )
    counts = {s: sum(r["status"] == s for r in rows) for s in ("trained", "pruned", "failed")}
    others = len(rows) - sum(counts.values())
    lines += [
        "",
        f"{len(rows)} trials: {counts['trained']} trained, {counts['pruned']} pruned before training (over "
        f"budget), {counts['failed']} failed" + (f", {others} unfinished" if others else "") + ".",
    ]
    return "\n".join(lines) + "\n"


def _note(row: Mapping[str, Any]) -> str | None:
    """The reason of a pruned/failed trial, and whether it repeats an earlier trial's student."""
    parts = [row["reason"]] if row.get("reason") else []
    if row.get("same_as") is not None:
        parts.append(f"same student and loss weights as trial {row['same_as']}")
    return "; ".join(parts) or None


def _plot(rows: Sequence[dict[str, Any]], front: Sequence[int], meta: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    trained = [i for i, r in enumerate(rows) if r["status"] == "trained" and r["latency_ms"] is not None]
    ax.scatter(
        [rows[i]["latency_ms"] for i in trained],
        [rows[i]["quality"] for i in trained],
        c="tab:blue",
        label="trained trial",
        zorder=3,
    )
    for i in trained:
        ax.annotate(
            str(rows[i]["trial"]),
            (rows[i]["latency_ms"], rows[i]["quality"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    if front:
        ax.plot(
            [rows[i]["latency_ms"] for i in front],
            [rows[i]["quality"] for i in front],
            "-o",
            color="tab:orange",
            label="Pareto front",
            zorder=4,
            mfc="none",
            ms=10,
        )
    pruned = [r for r in rows if r["status"] == "pruned" and r["latency_ms"] is not None]
    if pruned:
        ax.scatter(
            [r["latency_ms"] for r in pruned],
            [0.0] * len(pruned),
            marker="x",
            c="tab:gray",
            label="pruned (over budget, not trained)",
            zorder=2,
        )
    for r in rows:
        if r["preset"] in ("paper", "fast") and r["status"] == "trained":
            ax.scatter([r["latency_ms"]], [r["quality"]], marker="*", s=260, c="tab:red", zorder=5)
            ax.annotate(
                f"{r['preset']} preset",
                (r["latency_ms"], r["quality"]),
                fontsize=9,
                color="tab:red",
                xytext=(6, -12),
                textcoords="offset points",
            )
    for name, latency in (meta.get("preset_latency") or {}).items():
        ax.axvline(latency, color="tab:red", ls=":", lw=1)
        ax.annotate(
            f"{name} preset (latency)",
            (latency, 0.02),
            rotation=90,
            fontsize=8,
            color="tab:red",
            xytext=(2, 0),
            textcoords="offset points",
        )
    if meta.get("budget_line") is not None:
        ax.axvline(
            meta["budget_line"], color="tab:green", ls="--", lw=1.2, label=f"budget ({meta['budget']})"
        )
    shown = [r["latency_ms"] for r in rows if r["latency_ms"]]
    if shown and max(shown) > 5 * min(shown):
        ax.set_xscale("log")  # pruned students can be many times the budget
    ax.set_xlabel(f"latency, ms (onnxruntime, {meta.get('size')}, {meta.get('threads')} threads)")
    ax.set_ylabel(str(meta.get("metric")))
    ax.set_title("Student search: quality vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(sweep_dir: str | os.PathLike, study: Any = None) -> dict[str, Path]:
    """Table (``search_report.md`` / ``.json``) and plot (``search_report.png``) of every trial in a sweep.

    Failed or pruned trials are listed with their reason. Presets that were trained in the sweep are
    marked; otherwise the ``paper`` / ``fast`` presets' latency (measured here, untrained) is marked.
    """
    from loftr_kd.files import write_json, write_text

    sweep_dir = Path(sweep_dir)
    records = load_records(sweep_dir)
    if not records:
        raise FileNotFoundError(f"{sweep_dir}: no {RECORD_NAME} below it (not a student search?)")
    rows = _rows(records, study)
    trained = [i for i, r in enumerate(rows) if r["status"] == "trained" and r["latency_ms"] is not None]
    front_local = pareto_front([(rows[i]["latency_ms"], rows[i]["quality"]) for i in trained])
    front = [trained[j] for j in front_local]
    settings = next((r["settings"] for r in records if r.get("settings")), {})
    reference_ms = _normalised_latency(records)
    reference = settings.get("budget_reference")
    factor = settings.get("budget_factor", 1.0)
    if reference and reference_ms is not None:
        budget, budget_line = (
            f"{factor:g} x {reference} = {factor * reference_ms:.2f} ms",
            factor * reference_ms,
        )
    elif settings.get("budget_ms"):
        budget, budget_line = f"{settings['budget_ms']:g} ms", settings["budget_ms"]
    else:
        budget, budget_line = "none", None
    meta: dict[str, Any] = {
        "size": f"{settings.get('width')}x{settings.get('height')}",
        "threads": settings.get("threads"),
        "repeats": settings.get("repeats"),
        "warmup": settings.get("warmup"),
        "reference": reference if reference_ms is not None else None,
        "reference_ms": reference_ms,
        "budget": budget,
        "budget_line": budget_line,
        "metric": next((r.get("optimized_metric") for r in records if r.get("optimized_metric")), "quality"),
    }
    trained_presets = {r["preset"] for r in rows if r["status"] == "trained"}
    missing = [p for p in ("paper", "fast") if p not in trained_presets]
    if missing and settings:
        meta["preset_latency"] = _preset_latency(missing, settings, reference_ms)
    payload = {"meta": meta, "pareto_front": [rows[i]["trial"] for i in front], "trials": rows}
    stem = sweep_dir / REPORT_STEM
    return {
        "md": write_text(stem.with_suffix(".md"), _markdown(rows, front, meta)),
        "json": write_json(stem.with_suffix(".json"), payload),
        "png": _plot(rows, front, meta, stem.with_suffix(".png")),
    }


def _preset_latency(
    names: Sequence[str], settings: Mapping[str, Any], reference_ms: float | None
) -> dict[str, float]:
    """Latency of presets not trained in the sweep (untrained, same measurement), on the plot's scale."""
    from loftr_kd.config import preset_values
    from loftr_kd.models.student import StudentConfig

    known = {f for f in SearchSettings.__dataclass_fields__}
    measure = SearchSettings(**{**{k: v for k, v in settings.items() if k in known}, "presets": ()})
    out = {}
    for name in names:
        try:
            config = StudentConfig.from_dict(
                {**preset_values(name), "input_height": measure.height, "input_width": measure.width}
            )
            latency = measure_latency(config, measure)
        except Exception as error:  # noqa: BLE001 - a marker is not worth failing the report
            log.warning("Search: could not time preset %s for the plot: %s", name, error)
            continue
        value = latency["median_ms"]
        if reference_ms is not None and "ratio" in latency:
            value = latency["ratio"] * reference_ms
        out[name] = value
    return out
