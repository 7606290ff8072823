"""Hydra/OmegaConf glue shared by the entry points: the ``${loftr_kd_root:}``, ``${loftr_kd_weights:}`` and
``${loftr_kd_repo:}`` resolvers (``conf/paths/default.yaml``, :mod:`loftr_kd.paths`) and reading a student
preset (``conf/student/<name>.yaml``) without composing a whole config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from loftr_kd.paths import CONFIG_DIR, REPO_ROOT, WEIGHTS_DIR, work_dir

__all__ = ["CONFIG_DIR", "preset_values", "register_resolvers"]


# Logged metrics where lower is better (the rest, F1, precision, AUC, are higher-is-better).
_LOWER_IS_BETTER = ("loss", "epe", "error", "mae", "latency", "time", "nonfinite")


def metric_mode(name: str) -> str:
    """``"min"`` for a metric where lower is better (a loss, an end-point error, a time), else ``"max"``:
    the best checkpoint's ``mode`` for ``optimized_metric`` (``${loftr_kd_metric_mode:...}``)."""
    leaf = str(name).rsplit("/", 1)[-1].lower()
    return "min" if any(word in leaf for word in _LOWER_IS_BETTER) else "max"


def register_resolvers() -> None:
    """Register the path resolvers (idempotent); call before composing configs.

    ``${loftr_kd_root:}`` is the work folder (data/ and outputs/: the current folder or ``$LOFTR_KD_ROOT``),
    ``${loftr_kd_weights:}`` the shipped weights, ``${loftr_kd_repo:}`` the checkout (or the installed package).
    """
    resolvers = {
        "loftr_kd_metric_mode": metric_mode,
        "loftr_kd_root": lambda: str(work_dir()),
        "loftr_kd_weights": lambda: str(WEIGHTS_DIR),
        "loftr_kd_repo": lambda: str(REPO_ROOT),
    }
    for name, resolve in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolve)


register_resolvers()


def preset_values(name: str, config_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The :class:`StudentConfig` fields of a preset ``conf/student/<name>.yaml``, without Hydra.

    A preset may start from others through a Hydra ``defaults`` list (``- paper`` then ``- _self_``), as
    ``paper_refine.yaml`` does; those are merged first. Interpolations such as ``${data.height}`` are left
    out (the caller sets the input size).

    Args:
        name: preset file stem.
        config_dir: folder holding ``student/``; default: the repository's ``conf/``.

    Returns:
        Plain field values (no ``_target_``, no ``defaults``).
    """
    path = Path(config_dir or CONFIG_DIR) / "student" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no student preset {path}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    values: dict[str, Any] = {}
    own = {k: v for k, v in raw.items() if not k.startswith("_") and k != "defaults"}
    for entry in raw.get("defaults", []) or []:
        if entry == "_self_":
            values.update(own)
            own = {}
        elif isinstance(entry, str):
            values.update(preset_values(entry, config_dir))
    values.update(own)
    return {k: v for k, v in values.items() if not (isinstance(v, str) and v.startswith("${"))}
