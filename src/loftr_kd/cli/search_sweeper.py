"""The student search's Hydra/Optuna glue (docs/search.md): ``conf/hparams_search/student_latency.yaml``
names :class:`SearchCallback` (the presets enqueued as the first trials of the study, the report at the end
of the sweep), :func:`study_storage` (one in-memory Optuna storage shared by the sweeper and the callback;
a database URL in ``hydra.sweeper.storage`` works too and keeps the study for a later sweep) and
:func:`mark_preset_trial` (the enqueued preset trials carry ``search.preset_trial=True``).

The trials themselves are :class:`loftr_kd.search.StudentSearch`, the ``search:`` block that ``train()``
builds; this module only talks to Hydra's Optuna sweeper, including its private parser of the search space.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import OmegaConf

from loftr_kd.search import preset_knobs, write_report

log = logging.getLogger("loftr_kd.search")

_STORAGE: list[Any] = []

# The override that tells an enqueued preset trial from a sampled one with the same architecture.
PRESET_MARK = "search.preset_trial"


def study_storage(reset: bool = False):
    """One in-memory Optuna storage per process, shared by the sweeper and :class:`SearchCallback`.

    ``hydra.sweeper.storage: {_target_: loftr_kd.cli.search_sweeper.study_storage}``: the callback enqueues
    the presets into the study before the sweeper loads it (``load_if_exists``), and reads the finished
    trials after.
    """
    import optuna  # the `sweep` extra, as the sweeper

    if reset or not _STORAGE:
        _STORAGE[:] = [optuna.storages.InMemoryStorage()]
    return _STORAGE[0]


def mark_preset_trial(config: Any, trial: Any) -> None:
    """``hydra.sweeper.custom_search_space``: a trial enqueued as a preset gets ``search.preset_trial=True``.

    The sweeper calls this for every trial it asks for; only the trials :class:`SearchCallback` enqueued
    as presets hold the mark in their fixed parameters, so only they suggest it (one fixed choice: TPE
    never samples it) and the job's overrides carry it to :class:`loftr_kd.search.SearchSettings`.
    """
    if (trial.system_attrs.get("fixed_params") or {}).get(PRESET_MARK) is True:
        trial.suggest_categorical(PRESET_MARK, [True])


def _marks_presets(config: Any) -> bool:
    """Whether the sweeper calls :func:`mark_preset_trial` (else an enqueued preset is a plain trial)."""
    return str(config.hydra.sweeper.get("custom_search_space") or "").endswith(".mark_preset_trial")


def _sweeper_distributions(config: Any) -> dict[str, Any]:
    """The sweeper's own parse of ``hydra.sweeper.params`` plus the command line's sweep overrides."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

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
    """The sweep's study, from the sweeper's storage, name and direction(s)."""
    import optuna

    sweeper = config.hydra.sweeper
    storage = sweeper.get("storage")
    storage = instantiate(storage) if OmegaConf.is_dict(storage) else storage
    direction = sweeper.get("direction")
    directions = list(direction) if OmegaConf.is_list(direction) else [direction]
    return optuna.create_study(
        study_name=sweeper.get("study_name"), storage=storage, directions=directions, load_if_exists=True
    )


def _reachable_storage(config: Any) -> bool:
    """Whether the callback can open the sweeper's study: :func:`study_storage` or a database URL (a
    null storage is an in-memory study private to the sweeper)."""
    return bool(config.hydra.sweeper.get("storage"))


def _queued_or_done(trials: Sequence[Any], params: Mapping[str, Any]) -> Any:
    """The trial of the study that already holds ``params`` (finished or waiting to run), else ``None``.

    A trial left ``RUNNING`` by an interrupted sweep, or one that failed, does not count: it runs again.
    """
    from optuna.trial import TrialState

    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            values = trial.params
        elif trial.state == TrialState.WAITING:
            values = trial.system_attrs.get("fixed_params") or {}
        else:
            continue
        if all(k in values and values[k] == v for k, v in params.items()):
            return trial
    return None


def _enqueue_once(study: Any, held: Sequence[Any], params: dict[str, Any], label: str) -> None:
    """Enqueue ``params`` as a trial of ``study`` unless one of its trials ``held`` already has them."""
    earlier = _queued_or_done(held, params)
    if earlier is not None:
        log.info(
            "Search: %s is not enqueued again: the study holds it (trial %d, %s)",
            label,
            earlier.number,
            earlier.state.name.lower(),
        )
        return
    study.enqueue_trial(params)
    log.info("Search: %s enqueued as a trial: %s", label, params)


class SearchCallback(Callback):
    """Hydra callback of the search: presets first (same study, same budget), the report at the end.

    With a database storage the study outlives the sweep: the same command (same storage, same
    ``study_name``) continues it in a new sweep folder. Presets and ``search.enqueue`` trials the study
    already holds (finished, or still waiting) are not enqueued again.
    """

    # numbers of the trials the study held before this sweep began (a continued study), see write_report
    _earlier: frozenset[int] = frozenset()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from optuna.trial import TrialState

        study_storage(reset=True)
        self._earlier = frozenset()
        presets = list(OmegaConf.select(config, "search.presets", default=[]) or [])
        extra = list(OmegaConf.select(config, "search.enqueue", default=[]) or [])
        if not _reachable_storage(config):
            if presets or extra:
                log.warning(
                    "Search: hydra.sweeper.storage is null (a study only the sweeper can reach): "
                    "search.presets and search.enqueue are not enqueued"
                )
            return
        study = _open_study(config)
        held = study.trials
        self._earlier = frozenset(t.number for t in held if t.state != TrialState.WAITING)
        if held:
            states = ", ".join(
                f"{sum(t.state == s for t in held)} {s.name.lower()}"
                for s in TrialState
                if any(t.state == s for t in held)
            )
            log.info(
                "Search: study %s already holds %d trials (%s): this sweep continues it with "
                "hydra.sweeper.n_trials more",
                study.study_name,
                len(held),
                states,
            )
        if not (presets or extra):
            return
        distributions = _sweeper_distributions(config)
        marked = _marks_presets(config)
        if presets and not marked:
            log.warning(
                "Search: hydra.sweeper.custom_search_space is not %s.mark_preset_trial: the presets are "
                "enqueued as plain trials and pruned like any other when over the budget",
                __name__,
            )
        for name in presets:
            try:
                params = _preset_trial_params(name, config, distributions)
            except (ValueError, FileNotFoundError) as why:
                log.warning("Search: preset %s is not enqueued: %s", name, why)
                continue
            if marked:
                params[PRESET_MARK] = True
            _enqueue_once(study, held, params, f"preset {name}")
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
            _enqueue_once(study, held, params, f"trial {params}")

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            study = _open_study(config) if _reachable_storage(config) else None
            paths = write_report(sweep_dir, study=study, earlier_trials=self._earlier)
            log.info("Search: report written to %s", ", ".join(str(p) for p in paths.values()))
        except Exception as error:  # noqa: BLE001 - a report problem must not hide the finished sweep
            log.error("Search: the report could not be written (%s: %s)", type(error).__name__, error)
