"""The student search's Hydra/Optuna glue (docs/search.md): ``conf/hparams_search/student_latency.yaml``
names :class:`SearchCallback` (the presets enqueued as the first trials of the study, the report at the end
of the sweep) and :func:`study_storage` (one in-memory Optuna storage shared by the sweeper and the callback).

The trials themselves are :class:`loftr_kd.search.StudentSearch`, the ``search:`` block that ``train()``
builds; this module only talks to Hydra's Optuna sweeper, including its private parser of the search space.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import OmegaConf

from loftr_kd.search import preset_knobs, write_report

log = logging.getLogger("loftr_kd.search")

_STORAGE: list[Any] = []


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


def _is_shared_storage(config: Any) -> bool:
    """Whether the sweeper's storage is :func:`study_storage` (the one the callback can reach)."""
    storage = config.hydra.sweeper.get("storage")
    return bool(storage) and "study_storage" in str(
        storage.get("_target_", "") if hasattr(storage, "get") else storage
    )


class SearchCallback(Callback):
    """Hydra callback of the search: presets first (same study, same budget), the report at the end."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
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
