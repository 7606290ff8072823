"""What a ``PairDataModule`` reads, as checked settings: the loader settings every kind of data shares
(:class:`LoaderSettings`) and one source per kind (``conf/data/*.yaml``: ``blendedmvs`` :class:`SceneSource`,
``homography`` :class:`PhotoSource`, ``unlabeled`` :class:`UnlabeledSource`). ``loftr_kd.config_check`` builds
them from a config before any work; the data module builds them again and keeps them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from loftr_kd.errors import ON_BAD_DATA  # re-exported: its former home
from loftr_kd.images import MIN_TRAINING_SIDE

KINDS = ("blendedmvs", "homography", "unlabeled")


@dataclass(frozen=True)
class LoaderSettings:
    """The loader settings every kind of data shares (``conf/data/*.yaml``), each range checked here once.

    ``loftr_kd.config_check`` builds one from the config before any work; :class:`PairDataModule` keeps
    the one it builds. Messages name the config key (``data.batch_size=0: expected >= 1``).
    """

    height: int = 480
    width: int = 640
    batch_size: int = 8
    num_workers: int = 2
    pairs_per_epoch: int = 5000
    val_pairs: int = 200
    seed: int = 0
    on_bad_data: str = "raise"
    val_seed: int | None = None

    def __post_init__(self) -> None:
        lowest = {
            # two coarse cells of a stride-16 student: at one cell nothing can match (F1 0, exit 0 before)
            "height": (
                MIN_TRAINING_SIDE,
                f">= {MIN_TRAINING_SIDE} pixels (two coarse cells of a stride-16 student)",
            ),
            "width": (
                MIN_TRAINING_SIDE,
                f">= {MIN_TRAINING_SIDE} pixels (two coarse cells of a stride-16 student)",
            ),
            "batch_size": (1, ">= 1"),
            "num_workers": (0, ">= 0"),
            "pairs_per_epoch": (1, ">= 1"),
            "val_pairs": (1, ">= 1"),
        }
        for key, (low, what) in lowest.items():
            value = getattr(self, key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < low:
                raise ValueError(f"data.{key}={value!r}: expected {what}")
        if self.on_bad_data not in ON_BAD_DATA:
            raise ValueError(
                f"data.on_bad_data={self.on_bad_data!r}: expected one of {', '.join(ON_BAD_DATA)}"
            )


def kind_settings(kind: str) -> tuple[type, frozenset[str], frozenset[str]]:
    """The source class of ``kind``, its own settings, and the settings only other kinds have (``root``
    is a shared argument, in neither set)."""
    source = _SOURCE_OF_KIND[kind]
    own = frozenset(f.name for f in fields(source)) - {"root"}
    other = frozenset(f.name for s in _SOURCE_OF_KIND.values() for f in fields(s)) - own - {"root"}
    return source, own, other


def _make_source(kind: str, root: Path, options: Mapping[str, Any]) -> SceneSource | PhotoSource:
    """The source of ``kind`` from the kind-specific config keys (``None`` = not set)."""
    source, own, other = kind_settings(kind)
    unknown = sorted(set(options) - own - other)
    if unknown:
        raise ValueError(f"unknown data setting(s) {unknown} for kind {kind!r}; known: {sorted(own)}")
    misplaced = sorted(k for k in set(options) & other if options[k] not in (None, {}, []))
    if misplaced:
        raise ValueError(f"data setting(s) {misplaced} apply to another kind of data, not kind {kind!r}")
    values: dict[str, Any] = {k: v for k, v in options.items() if k in own and v is not None}
    for key in ("train_scenes", "val_scenes"):
        if key in values:
            values[key] = tuple(values[key])
    if "generate" in values:
        values["generate"] = dict(values["generate"]) or None
    if "val_root" in values:
        values["val_root"] = Path(values["val_root"])
    for key in ("homography", "val_homography", "pairs", "verify"):
        if key in values:
            values[key] = dict(values[key])
    if "labels_dir" in values:
        values["labels_dir"] = Path(values["labels_dir"])
    return source(root=root, **values)


def _same_path(a: Path, b: Path) -> bool:
    return a.expanduser().resolve() == b.expanduser().resolve()


@dataclass(frozen=True)
class SceneSource:
    """``kind: blendedmvs``: scenes in the BlendedMVS layout (real BlendedMVS or synthetic).

    Attributes:
        root: data root.
        train_scenes, val_scenes: explicit scene lists; else ``training_list.txt``/``validation_list.txt``
            in ``root``; else a deterministic split (``val_fraction`` of the scenes).
        val_fraction: share of scenes for validation in the fallback split.
        generate: ``{scenes, views, seed, default_root, allow_other_root}``: when ``root`` is new or
            empty, ``prepare_data`` writes synthetic scenes there with
            ``loftr_kd.data.synthetic.generate_dataset`` — only if ``root`` is ``default_root`` (the
            embedded default location; ``None`` means ``root`` itself) or ``allow_other_root`` is true.
            Nothing already in ``root`` is ever deleted or rewritten (see :meth:`PairDataModule.prepare_data`).
    """

    root: Path
    train_scenes: tuple[str, ...] | None = None
    val_scenes: tuple[str, ...] | None = None
    val_fraction: float = 0.1
    generate: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={self.val_fraction!r}: expected between 0 and 1")


@dataclass(frozen=True)
class PhotoSource:
    """``kind: homography``: random homography pairs from any folder of images.

    Attributes:
        root: folder of training images (searched recursively).
        val_root: a separate folder of validation images (default: ``root`` with different homographies).
        homography: extra keyword arguments of :class:`HomographyPairDataset` (``max_zoom``,
            ``max_rotation_deg``, ``max_perspective``, ``max_translation``, ``photometric_strength``,
            ``crop_scale``, ``length``).
        val_homography: the same keywords for the validation pairs only, over ``homography``: train over a
            wider range than you validate on, and keep validation comparable across runs that differ
            in their training range.
    """

    root: Path
    val_root: Path | None = None
    homography: Mapping[str, Any] = field(default_factory=dict)
    val_homography: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UnlabeledSource:
    """``kind: unlabeled``: real pairs without geometry (videos, numbered frames, photos; see
    :mod:`loftr_kd.data.unlabeled`), with a sparse teacher's RANSAC-checked matches as pseudo ground
    truth, labelled once into a cache (:mod:`loftr_kd.data.labels`).

    Attributes:
        root: folder of videos and images.
        labeller: a function building the sparse teacher (``conf/data/unlabeled.yaml``: ``_partial_``),
            called only when pairs are left to label.
        pairs: :class:`~loftr_kd.data.unlabeled.UnlabeledSettings` fields (frame gaps, caps, seed).
        verify: :class:`~loftr_kd.data.labels.VerifySettings` fields (RANSAC model, threshold, inliers).
        labels_dir: where label caches (and decoded video frames) live.
        max_matches: match slots per pair in a batch.
        label_batch_size: pairs per labelling batch.
        val_fraction: share of the labelled pairs kept for validation (never trained on).
    """

    root: Path
    labeller: Any = None
    pairs: Mapping[str, Any] = field(default_factory=dict)
    verify: Mapping[str, Any] = field(default_factory=dict)
    labels_dir: Path | None = None
    max_matches: int = 1024
    label_batch_size: int = 4
    val_fraction: float = 0.05

    def __post_init__(self) -> None:
        from loftr_kd.data.labels import VerifySettings
        from loftr_kd.data.unlabeled import UnlabeledSettings

        UnlabeledSettings(**_tuples(self.pairs))
        VerifySettings(**dict(self.verify))
        if self.max_matches < 8:
            raise ValueError(f"data.max_matches={self.max_matches!r}: expected >= 8")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={self.val_fraction!r}: expected between 0 and 1")


def _tuples(values: Mapping[str, Any]) -> dict[str, Any]:
    """Config lists as tuples (frozen dataclasses hold tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(values).items()}


# Which source owns each kind-specific argument (the rest are loader settings shared by every kind).
_SOURCE_OF_KIND = {"blendedmvs": SceneSource, "homography": PhotoSource, "unlabeled": UnlabeledSource}
