"""Type and range checks of a composed training config, run by ``train(cfg)`` before any work.

A wrong value (``trainer.max_epochs=abc``, ``data.batch_size=0``, a misspelt trainer key) is one
:class:`ConfigError` line naming the key, the value and what is expected — not an ``AssertionError``
after validation already ran. Types come from the signatures of the objects the config instantiates
(``pytorch_lightning.Trainer``, the ``data._target_``), so they cannot drift from the code; ranges that
the signatures cannot express are listed here.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import os
import pathlib
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

from omegaconf import DictConfig, OmegaConf

from loftr_kd.rundir import ClaimRunDir


class ConfigError(ValueError):
    """A config value has the wrong type or range; the message names the key."""


# (lowest allowed value, what it means) for integer/float settings; None values pass.
# Lightning's Trainer checks these only once it runs; the data settings are checked by their own dataclasses
# (loftr_kd.data.sources.LoaderSettings, SceneSource).
_RANGES: dict[str, dict[str, tuple[float, str]]] = {
    "trainer": {
        "max_epochs": (-1, "-1 (no limit) or a positive number of epochs"),
        "min_epochs": (0, ">= 0"),
        "max_steps": (-1, "-1 (no limit) or a positive number of steps"),
        "min_steps": (0, ">= 0"),
        "check_val_every_n_epoch": (1, ">= 1"),
        "log_every_n_steps": (1, ">= 1"),
        "accumulate_grad_batches": (1, ">= 1"),
        "gradient_clip_val": (0, ">= 0"),
        "num_sanity_val_steps": (-1, ">= -1"),
    },
    # Lightning's ThroughputMonitor takes it as **kwargs and asserts > 1 only once the run starts
    "callbacks.throughput": {"window_size": (2, "a number of batches >= 2 (the rolling mean's window)")},
    "callbacks.step_checkpoint": {"every_n_train_steps": (0, ">= 0 (0: no step checkpoints)")},
    "callbacks.best_checkpoint": {"save_top_k": (-1, ">= -1")},
}


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in typing.get_args(hint)))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is not None:
        return {list: "a list", tuple: "a list", dict: "a mapping"}.get(
            origin, getattr(origin, "__name__", "?")
        )
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


_PLAIN_TYPES = (bool, int, float, str, type(None))


def _built_from_scalars(hint: Any) -> bool:
    """A hint a plain config value stands for: ``Any``, or a path class (a string is a path)."""
    if hint is Any:
        return True
    if not isinstance(hint, type):
        return hint in (os.PathLike,) or typing.get_origin(hint) is os.PathLike
    return issubclass(hint, (os.PathLike, pathlib.PurePath))


def matches_hint(value: Any, hint: Any) -> bool:
    """Whether a plain config value (None, bool, int, float, str, list, dict) fits a type hint.

    Classes other than the builtins cannot be checked from a plain value and are accepted.
    """
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        arms = typing.get_args(hint)
        if any(_built_from_scalars(arm) for arm in arms):  # Any, a path: a plain value may well be one
            return any(matches_hint(value, arm) for arm in arms)
        plain = [arm for arm in arms if arm in _PLAIN_TYPES or typing.get_origin(arm) is Literal]
        if plain and isinstance(value, (str, int, float, bool)):
            # A scalar from a config is never an instance of the union's other classes (``lr: float |
            # Tensor`` took "abc" as a possible Tensor): the plain arms decide.
            return any(matches_hint(value, arm) for arm in plain)
        return any(matches_hint(value, arm) for arm in arms)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple))
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return True


def check_arguments(
    target: Callable[..., Any], values: Mapping[str, Any], prefix: str, skip: tuple[str, ...] = ()
) -> None:
    """Check ``values`` (plain, resolved) against the keyword arguments of ``target``.

    Raises:
        ConfigError: an unknown key (with the closest known one) or a value of the wrong type.
    """
    signature = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: check names only
        hints = {}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    for key, value in values.items():
        if key.startswith("_") or key in skip:
            continue
        if key not in signature.parameters:
            if accepts_any:
                continue
            close = difflib.get_close_matches(key, list(signature.parameters), n=1)
            hint = f" (did you mean {prefix}.{close[0]}?)" if close else ""
            raise ConfigError(f"{prefix}.{key} is not a setting of {_name(target)}{hint}")
        hint = hints.get(key, signature.parameters[key].annotation)
        if not matches_hint(value, hint):
            raise ConfigError(f"{prefix}.{key}={value!r}: expected {_describe(hint)}")


def _name(target: Callable[..., Any]) -> str:
    owner = getattr(target, "__qualname__", getattr(target, "__name__", "?"))
    return owner.removesuffix(".__init__")


def _check_ranges(group: str, values: Mapping[str, Any]) -> None:
    for key, (low, what) in _RANGES.get(group, {}).items():
        value = values.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value < low or (key == "val_fraction" and value > 1):
            raise ConfigError(f"{group}.{key}={value!r}: expected {what}")


# Optimizer settings whose range a signature cannot express: (test, what is expected).
_OPTIMIZER_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v >= 0, "a learning rate >= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "eps": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: v >= 0, ">= 0"),
}


# Scheduler settings a signature cannot bound (StepLR's step_size=0 trained an epoch, then divided by zero).
_SCHEDULER_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "step_size": (lambda v: v >= 1, "a number of epochs >= 1"),
    "gamma": (lambda v: v > 0, "a factor > 0"),
    "T_max": (lambda v: v >= 1, ">= 1"),
    "total_iters": (lambda v: v >= 0, ">= 0"),
}


def _check_optim_part(
    cfg: DictConfig, part: str, skip: str, ranges: Mapping[str, tuple[Callable[[float], bool], str]]
) -> dict[str, Any]:
    """``optim.<part>`` (the optimizer or the scheduler): known arguments of its ``_target_`` with the right
    types (``skip``: the one given in code), and ``ranges``; returns its plain values ({} when unset)."""
    optim = cfg.get("optim")
    if optim is None or optim.get(part) is None:
        return {}
    values = _plain(optim[part])
    target = values.get("_target_")
    if target:
        check_arguments(_target(str(target)), values, f"optim.{part}", skip=(skip,))
    for key, (ok, what) in ranges.items():
        value = values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
            raise ConfigError(f"optim.{part}.{key}={value!r}: expected {what}")
    return values


def _check_optimizer(cfg: DictConfig) -> None:
    """``optim.optimizer`` and ``optim.scheduler``: arguments, types and sane ranges."""
    values = _check_optim_part(cfg, "optimizer", "params", _OPTIMIZER_RANGES)
    betas = values.get("betas")
    if isinstance(betas, (list, tuple)) and not all(
        isinstance(b, (int, float)) and 0 <= b < 1 for b in betas
    ):
        raise ConfigError(f"optim.optimizer.betas={list(betas)!r}: expected two numbers in [0, 1)")
    _check_optim_part(cfg, "scheduler", "optimizer", _SCHEDULER_RANGES)


def _check_data_ranges(data_class: type | None, data: Mapping[str, Any]) -> None:
    """The loader settings' ranges, checked by the dataclass that owns them (``LoaderSettings``), and the
    source's own (``SceneSource.val_fraction`` ...) for a ``PairDataModule``."""
    from dataclasses import fields

    from loftr_kd.data.datamodule import KINDS, LoaderSettings, PairDataModule, kind_settings

    if data_class is None or not issubclass(data_class, PairDataModule):
        return
    names = {f.name for f in fields(LoaderSettings)}
    try:
        LoaderSettings(**{k: v for k, v in data.items() if k in names and v is not None})
        if data.get("kind") in KINDS:
            source, own, _ = kind_settings(data["kind"])
            checked = {k: v for k, v in data.items() if k in own and isinstance(v, (int, float, str, bool))}
            source(root=".", **checked)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from None


def _check_homography_blocks(where: str, settings: Mapping[str, Any]) -> None:
    """Every ``homography`` / ``val_homography`` block under ``settings`` (a homography source's, or a mix's
    ``sources.<name>.homography``) against :func:`~loftr_kd.data.homography.check_homography_range`."""
    from loftr_kd.data.homography import HOMOGRAPHY_RANGE_KEYS, check_homography_range

    for key, value in settings.items():
        if not isinstance(value, Mapping):
            continue
        if key in ("homography", "val_homography"):
            try:
                check_homography_range(**{k: v for k, v in value.items() if k in HOMOGRAPHY_RANGE_KEYS})
            except ValueError as error:
                raise ConfigError(f"{where}.{key}.{error}") from None
        if key not in ("homography", "val_homography") or not set(value) <= set(HOMOGRAPHY_RANGE_KEYS):
            # A mix's source may itself be called "homography": what is not only a range is looked into.
            _check_homography_blocks(f"{where}.{key}", value)


def _build_once(settings: dict[str, Any], group: str, prefix: str = "") -> None:
    """Check ``settings``' keys and types against its ``_target_``, then build it once (hydra's
    ``get_object``: a class or a function alike), so the target's own validation speaks before any work;
    its ``TypeError`` / ``ValueError`` becomes a :class:`ConfigError` (``prefix`` + its message)."""
    from hydra.utils import get_object

    try:
        check_arguments(_target(str(settings["_target_"])), settings, group)
        get_object(str(settings["_target_"]))(**{k: v for k, v in settings.items() if not k.startswith("_")})
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{prefix}{error}") from None


def _target(path: str) -> Callable[..., Any]:
    from hydra.utils import get_class

    cls = get_class(path)
    return cls.__init__ if inspect.isclass(cls) else cls


def _class_or_none(path: str) -> type | None:
    """The class a ``_target_`` names, or ``None`` when it names a function."""
    from hydra.utils import get_object

    target = get_object(path)
    return target if inspect.isclass(target) else None


def _plain(node: DictConfig) -> dict[str, Any]:
    """Resolved plain values of a config group; keys that do not resolve here are left out."""
    values = {}
    for key in node:
        try:
            value = node[key]
            values[str(key)] = (
                OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            )
        except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra run; checked where used
            continue
    return values


def check_train_config(cfg: DictConfig) -> None:
    """Check the trainer and data settings and the top-level keys of a training config.

    Raises:
        ConfigError: the first problem, as one line naming the key.
    """
    if "recipe" in cfg:  # a multi-stage experiment (conf/experiment/student_default.yaml ...)
        raise ConfigError(
            f"this experiment is a recipe ({cfg.recipe.get('name')}), not one training run: "
            f"run loftr-kd-recipe experiment={cfg.recipe.get('name')}"
        )
    student = cfg.get("student")
    loss = cfg.get("loss")
    if (
        student is not None
        and student.get("refine_query", "centre") != "centre"
        and loss is not None
        and float(loss.get("w_refine_kd", 0.0) or 0.0) > 0
    ):
        raise ConfigError(
            f"student.refine_query={student.refine_query!r} with loss.w_refine_kd={loss.w_refine_kd}: the teacher's "
            f"fine matches are distilled at the student's cell centres, and corner queries have none there; "
            f"set loss.w_refine_kd=0 (the ground truth supervises the queries) or student.refine_query=centre"
        )
    trainer, data = _plain(cfg.trainer), _plain(cfg.data)
    check_arguments(_target(str(trainer.get("_target_", "pytorch_lightning.Trainer"))), trainer, "trainer")
    _check_ranges("trainer", trainer)
    devices = trainer.get("devices")
    if devices == 0 or (isinstance(devices, int) and not isinstance(devices, bool) and devices < -1):
        raise ConfigError(f"trainer.devices={devices!r}: expected a number of devices >= 1, -1 (all) or auto")
    data_target = _target(str(data["_target_"]))
    check_arguments(data_target, data, "data")
    from loftr_kd.data.datamodule import KINDS, PairDataModule, kind_settings

    data_class = _class_or_none(str(data["_target_"]))
    if data_class is not None and issubclass(data_class, PairDataModule) and data.get("kind") in KINDS:
        # The kind's own settings reach PairDataModule as **source_options: check them by their source.
        source, own, other = kind_settings(data["kind"])
        check_arguments(source, {k: v for k, v in data.items() if k in own}, "data")
        known = set(inspect.signature(data_target).parameters) | own
        unknown = [k for k in data if not k.startswith("_") and k not in known | other]
        if unknown:  # (another kind's setting is PairDataModule's own error, naming the kind)
            close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            hint = f" (did you mean data.{close[0]}?)" if close else ""
            raise ConfigError(f"data.{unknown[0]} is not a setting of {_name(data_target)}{hint}")
    _check_data_ranges(data_class, data)
    _check_homography_blocks("data", data)  # a homography source's range, or a mix's sources'
    for key, kind in (("seed", int), ("validate_before_training", bool), ("freeze_batchnorm", bool)):
        value = cfg.get(key)
        if value is not None and not matches_hint(value, kind):
            raise ConfigError(f"{key}={value!r}: expected {_describe(kind)}")
    train_only = cfg.get("train_only")
    if train_only is not None and not (
        (OmegaConf.is_list(train_only) or isinstance(train_only, list))
        and all(isinstance(n, str) for n in train_only)
    ):
        raise ConfigError(
            f"train_only={train_only!r}: expected a list of student module names, e.g. [refinement]"
        )
    check_threads(cfg.get("threads"))
    limit = cfg.get("max_nonfinite_steps")
    if limit is not None and not (matches_hint(limit, int) and limit >= 1):
        raise ConfigError(
            f"max_nonfinite_steps={limit!r}: expected the number (>= 1) of training steps in a row with a "
            f"non-finite loss or gradients that stops the run"
        )
    for key in ("ckpt_path", "init_weights"):
        value = cfg.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a file path")
    _check_optimizer(cfg)
    if cfg.get("loss") is not None:  # the loss's own checks (weights >= 0, temperature > 0) before any work
        _build_once(_plain(cfg.loss), "loss", "loss: ")
    callbacks = cfg.get("callbacks")
    for name in ("throughput", "step_checkpoint", "best_checkpoint"):
        if callbacks is not None and callbacks.get(name) is not None:
            _check_ranges(f"callbacks.{name}", _plain(callbacks[name]))
    if cfg.get("deploy") is not None:  # the end-of-run export: a bad setting is found now, not after training
        from loftr_kd.export.pipeline import ExportSettings

        try:
            export = ExportSettings.from_mapping(_plain(cfg.deploy))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"deploy: {error}") from None
        stride = OmegaConf.select(cfg, "student.coarse_stride", default=None)
        if export.enabled and isinstance(stride, int) and stride > 0:
            for key in ("height", "width"):
                size = getattr(export, key, None)
                if isinstance(size, int) and size % stride:
                    raise ConfigError(
                        f"deploy.{key}={size}: the export size must be a multiple of the student's coarse "
                        f"stride {stride} (the run would train, then fail to export)"
                    )
    hook = trial_hook_config(cfg)
    if hook is not None:  # a sweep's trial hook (hparams_search=student_latency: the student search)
        _build_once(hook, "search")  # its own validation (SearchSettings') speaks before the sweep starts


# A `search:` block saved before it named its hook (`.hydra/config.yaml` of an earlier student search's
# trial, which `make rerun` composes) holds the student search's settings alone.
_SAVED_SEARCH_HOOK = "loftr_kd.search.StudentSearch"


def trial_hook_config(cfg: DictConfig) -> dict[str, Any] | None:
    """``cfg.search``, the sweep's trial hook that ``train()`` builds: plain, resolved, with its
    ``_target_``; ``None`` outside such a sweep."""
    if not cfg.get("search"):
        return None
    return {"_target_": _SAVED_SEARCH_HOOK, **_plain(cfg.search)}


class CheckTrainConfig(ClaimRunDir):
    """Hydra callback of ``conf/train.yaml``: check the training config, then claim the run folder,
    before Hydra creates or writes anything (:class:`loftr_kd.rundir.ClaimRunDir`)."""

    def __init__(self, check: str | None = None, program: str | None = None) -> None:
        super().__init__(check or "loftr_kd.config_check.check_train_config", program or "loftr-kd-train")


def check_threads(threads: Any) -> None:
    """A command's ``threads`` (torch's intra-op threads: training, labelling): an int >= 1, or null.

    Raises:
        ConfigError: anything else, naming the key.
    """
    if threads is not None and not (matches_hint(threads, int) and threads >= 1):
        raise ConfigError(
            f"threads={threads!r}: expected a number of CPU threads >= 1, or null (torch's default)"
        )


__all__ = [
    "CheckTrainConfig",
    "ConfigError",
    "check_arguments",
    "check_threads",
    "check_train_config",
    "matches_hint",
    "trial_hook_config",
]
