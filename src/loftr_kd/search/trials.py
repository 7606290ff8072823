"""One trial of the student search: build the student, measure, maybe prune, and record it all in
``search_trial.json`` (docs/search.md, "One trial").

``search._target_: loftr_kd.search.StudentSearch`` makes this the trial hook of ``train()``: it calls
:meth:`StudentSearch.begin` before any data is loaded and returns the :class:`Trial`'s value at once when
the student is over the budget; else it trains and hands the end of the run to :meth:`Trial.fail` or
:meth:`Trial.finish`, whose objective is what the sweeper optimises.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loftr_kd.search.latency import measure_latency
from loftr_kd.search.space import SearchSettings

log = logging.getLogger("loftr_kd.search")

RECORD_NAME = "search_trial.json"


class SearchTrialFailed(RuntimeError):
    """A trial that cannot run (invalid architecture, export failure); the sweep records it and goes on.

    Deliberately not a ``ValueError``: the training entry point turns those into exit status 2, which would
    end the whole sweep.
    """


def _write_record(path: Path, record: Mapping[str, Any]) -> None:
    from loftr_kd.files import write_json

    write_json(path, dict(record))


def _first_line(error: BaseException) -> str:
    from loftr_kd.errors import one_line, root_cause

    return one_line(root_cause(error))


def _penalty(latency: Mapping[str, Any], settings: SearchSettings) -> float:
    """Objective of a pruned trial: below any feasible score (F1 >= 0), higher when closer to the budget."""
    excess = (
        latency["ratio"] / settings.budget_factor
        if "ratio" in latency
        else latency["median_ms"] / latency["budget_ms"]
    )
    return -float(excess - 1.0)


def _objective(record: Mapping[str, Any], settings: SearchSettings) -> float | list[float]:
    """What the sweeper sees: quality, the penalty of an over-budget trial, or (quality, latency).

    With ``objective: pareto`` the latency is the ratio to the reference timed interleaved with the trial
    (a multiple of ``budget_reference``, the report's ``×ref`` column) when there is one, as the pruning
    decision and the report use it: the raw median moves with the machine's load from one trial to the
    next. Without a reference it is the median in ms. A pruned trial's quality is its penalty (< 0), so it
    cannot be mistaken for a trained trial of F1 0.
    """
    latency = record["latency"]
    if settings.objective == "pareto":
        speed = float(latency["ratio"]) if "ratio" in latency else float(latency["median_ms"])
        quality = record.get("quality")
        if record["status"] == "pruned":
            return [_penalty(latency, settings), speed]
        return [float(quality) if record["status"] == "trained" and quality is not None else 0.0, speed]
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

    def finish(self, best_score: float | None, summary: Mapping[str, Any]) -> float | list[float]:
        """Record the trained trial's quality and return the objective for the sweeper.

        Args:
            best_score: the best ``optimized_metric`` of the run.
            summary: the run's ``summary.json`` content (``optimized_metric``, ``final_metrics``).

        Raises:
            SearchTrialFailed: the optimised metric was never logged or is not finite.
        """
        if best_score is None or not math.isfinite(float(best_score)):
            error = SearchTrialFailed(
                f"no finite {self.record.get('optimized_metric')} after training ({best_score})"
            )
            self.fail(error)
            raise error
        record = self.record
        record.update(status="trained", quality=float(best_score))
        record["quality_before_training"] = summary.get("optimized_metric", {}).get("before_training")
        record["final_metrics"] = {
            k: v for k, v in summary.get("final_metrics", {}).items() if k.startswith("val/")
        }
        record["objective"] = _objective(record, self.settings)
        if self.rank_zero:
            _write_record(self.path, record)
        return record["objective"]


def finish_trial(trial: Trial, best_score: float | None, summary: Mapping[str, Any]) -> float | list[float]:
    """:meth:`Trial.finish` (the name ``train()`` used before the trial hook)."""
    return trial.finish(best_score, summary)


def _plain_parts(config: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a run config a trial reads, as plain values (a composed OmegaConf config too)."""
    from omegaconf import OmegaConf

    parts = {}
    for key in ("search", "student", "loss", "optimized_metric"):
        value = config.get(key)
        parts[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return parts


def begin_trial(
    config: Mapping[str, Any],
    output_dir: Path,
    build_student: Callable[[], Any] | None = None,
    job: Mapping[str, Any] | None = None,
    settings: SearchSettings | None = None,
) -> Trial:
    """Build the trial's student, measure its latency, decide (docs/search.md, "One trial").

    DDP ranks other than 0 measure nothing: they wait for rank 0's record and follow its decision.

    Args:
        config: the run's resolved config (plain, or a composed OmegaConf config): ``student`` (its knobs
            are recorded), ``loss`` (its ``w_*`` weights), ``optimized_metric`` and, without ``settings``,
            ``search``.
        output_dir: the run directory, where ``search_trial.json`` is written.
        build_student: builds the trial's student (an error is a failed trial); default: Hydra's
            ``instantiate`` of ``config["student"]``.
        job: the sweep job (``num``, ``overrides``, ``student_choice``) recorded with the trial; ``None``
            outside a Hydra sweep.
        settings: the search's settings; default: from ``config["search"]``.

    Returns:
        The :class:`Trial`: ``done`` is the objective to return without training (pruned), else ``None``
        and ``student`` is the model to train.

    Raises:
        SearchTrialFailed: the architecture is invalid or cannot be exported/timed (recorded first).
    """
    from loftr_kd.distributed import is_rank_zero_process
    from loftr_kd.models.student import count_parameters

    parts = _plain_parts(config)
    if settings is None:
        settings = SearchSettings.from_config(parts["search"])
    if build_student is None:

        def build_student() -> Any:
            import hydra

            return hydra.utils.instantiate(parts["student"])

    path = output_dir / RECORD_NAME
    knobs = {k: v for k, v in parts["student"].items() if k != "_target_"}
    job = dict(job) if job else {"num": None, "overrides": [], "student_choice": None}  # not in a sweep
    record: dict[str, Any] = {
        "status": "measuring",
        "reason": None,
        "job": job,
        "student_choice": job.get("student_choice"),
        "knobs": knobs,
        "loss": {k: v for k, v in parts["loss"].items() if k.startswith("w_")},
        "settings": asdict(settings),
        "optimized_metric": str(parts["optimized_metric"]),
    }
    if not is_rank_zero_process():
        return _follow_rank_zero(path, settings, build_student)
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        student = build_student()
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
    # Only the preset trials the sweep enqueued are trained over the budget, not a sampled trial that
    # happens to have a preset's architecture (other loss weights, a repeat).
    exempt = settings.preset_trial and preset in settings.presets
    if latency["over_budget"] and settings.prune and not exempt:
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
            why = "trained for comparison (a preset)" if settings.prune else "trained: search.prune=false"
            record["reason"] = f"over budget ({described} > {budget:.2f} ms); {why}"
        log.info(
            "Search: latency %s, budget %s: training.",
            described,
            "none" if budget is None else f"{budget:.2f} ms",
        )
    _write_record(path, record)
    return trial


def _follow_rank_zero(path: Path, settings: SearchSettings, build_student: Callable[[], Any]) -> Trial:
    """DDP ranks > 0: wait for rank 0's decision (it measured), build the same student."""
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
        trial.student = build_student()
    return trial


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


@dataclass(frozen=True)
class StudentSearch(SearchSettings):
    """The student search as ``train()``'s trial hook: ``search._target_`` of
    ``conf/hparams_search/student_latency.yaml``, its settings the :class:`SearchSettings` fields."""

    def begin(
        self,
        output_dir: Path,
        config: Mapping[str, Any],
        build_student: Callable[[], Any],
        job: Mapping[str, Any] | None = None,
    ) -> Trial:
        """:func:`begin_trial` with these settings: the trial to train, or to end at once (``done``)."""
        return begin_trial(config, output_dir, build_student, job, settings=self)
