"""Where loftr-kd finds its own files, and where it writes.

- **Its own files** -- the Hydra configs (``conf/``) and the shipped weights (``weights/``) -- come from the
  repository checkout when the package runs from one (``pip install -e``, ``PYTHONPATH=src``), else from
  the installed package (``loftr_kd/conf``, ``loftr_kd/weights``: package data of the wheel).
- **What a run makes** -- ``data/`` and ``outputs/`` -- goes under the *work folder*: the current folder, or
  ``$LOFTR_KD_ROOT`` where that is set. :data:`DATA_DIR` and :data:`OUTPUTS_DIR` are read when asked for,
  so they follow the current folder.
- **Caches** (the ONNX export of a checkpoint) go to the user's cache folder (:func:`cache_dir`), never
  beside the weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT = PACKAGE_DIR.parents[1]
# Running from a checkout: src/loftr_kd with conf/ and pyproject.toml two levels up.
IN_CHECKOUT = (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "conf").is_dir()
# The checkout, or the installed package folder (which holds conf/ and weights/ as package data).
REPO_ROOT = _CHECKOUT if IN_CHECKOUT else PACKAGE_DIR
CONFIG_DIR = REPO_ROOT / "conf"
WEIGHTS_DIR = REPO_ROOT / "weights"

# The student shipped with the project (weights/MODEL_CARD.md): the checkpoint (torch backend, training,
# export) and, beside it with the same stem, its dynamic-shape ONNX export (the onnx backend's default:
# loading it needs neither torch nor an export).
DEFAULT_STUDENT_WEIGHTS = WEIGHTS_DIR / "student_paper_refine.pt"

_WORK_DIRS = {"DATA_DIR": "data", "OUTPUTS_DIR": "outputs"}


def work_dir() -> Path:
    """The folder runs write ``data/`` and ``outputs/`` under: ``$LOFTR_KD_ROOT``, else the current folder."""
    return Path(os.environ.get("LOFTR_KD_ROOT") or Path.cwd())


def cache_dir() -> Path:
    """The user's cache folder of loftr-kd: ``$LOFTR_KD_CACHE``, else ``$XDG_CACHE_HOME/loftr-kd``, else
    ``~/.cache/loftr-kd``."""
    if os.environ.get("LOFTR_KD_CACHE"):
        return Path(os.environ["LOFTR_KD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "loftr-kd"


def default_student_weights(backend: str = "torch") -> Path:
    """The shipped student for a Matcher backend: the ``.onnx`` beside :data:`DEFAULT_STUDENT_WEIGHTS` for
    ``onnx``, the checkpoint itself otherwise."""
    return DEFAULT_STUDENT_WEIGHTS.with_suffix(".onnx") if backend == "onnx" else DEFAULT_STUDENT_WEIGHTS


def __getattr__(name: str) -> Any:
    # DATA_DIR / OUTPUTS_DIR follow the current folder (or $LOFTR_KD_ROOT) at the time they are read.
    if name in _WORK_DIRS:
        return work_dir() / _WORK_DIRS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
