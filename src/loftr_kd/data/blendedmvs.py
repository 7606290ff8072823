"""BlendedMVS scene index (validated when built) and the depth pair dataset.

Scenes follow the BlendedMVS layout (see :mod:`loftr_kd.data.blendedmvs_io`). Pairs are every reference
view of ``cams/pair.txt`` with each of its source views, in both directions, deduplicated.

Bad data never crashes training hours in: everything checkable without decoding (files present, camera
files parse, ``pair.txt`` names existing views, depth size from the PFM header equals the image size) is
checked when the index is built. Problems only visible on load (truncated image or PFM payload, empty
depth) are caught in ``__getitem__``. With ``on_bad_data="raise"`` each raises a
:class:`BlendedMVSFormatError` naming the file; with ``"skip"`` it is logged, counted
(:attr:`BlendedMVSPairDataset.bad_data_counts`) and replaced by another pair.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from loftr_kd.data.blendedmvs_io import (
    IMAGE_DIR,
    BlendedMVSFormatError,
    Camera,
    cam_path,
    depth_path,
    image_path,
    pair_path,
    read_cam,
    read_image_gray,
    read_image_size,
    read_pair_file,
    read_pfm,
    read_pfm_header,
)
from loftr_kd.data.transforms import resize_depth_with_intrinsics, resize_with_intrinsics
from loftr_kd.errors import ON_BAD_DATA
from loftr_kd.geometry import relative_pose
from loftr_kd.images import featureless_reason

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
TRAINING_LIST = "training_list.txt"
VALIDATION_LIST = "validation_list.txt"
_MAX_REPLACEMENTS = 20


# --------------------------------------------------------------------------------------------------
# Scene selection
# --------------------------------------------------------------------------------------------------


def is_scene_dir(path: PathLike) -> bool:
    """A directory with ``cams/pair.txt`` is a scene."""
    return pair_path(path).is_file()


def find_scenes(root: PathLike) -> list[str]:
    """Sorted names of the scene directories directly under ``root``."""
    root = Path(root)
    if not root.is_dir():
        return []
    # Hidden folders are temporaries (an interrupted generator's ``.synth_000.tmp-*``), never scenes.
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_scene_dir(p)
    )


def read_scene_list(path: PathLike) -> list[str]:
    """Scene names of a BlendedMVS list file (one per line; blank lines and ``#`` comments ignored)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise BlendedMVSFormatError(f"{path}: cannot read scene list ({e.strerror})") from e
    names = [line.split("#", 1)[0].strip() for line in lines]
    return [n for n in names if n]


def split_scenes(
    root: PathLike,
    train_scenes: Sequence[str] | None = None,
    val_scenes: Sequence[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
) -> tuple[list[str], list[str], str]:
    """Choose training and validation scenes.

    Priority: explicit lists; else ``training_list.txt`` / ``validation_list.txt`` in ``root`` (as
    BlendedMVS ships them); else a deterministic random split (``seed``) of all scenes under ``root``
    with ``val_fraction`` of them (at least one when there are two or more) for validation.
    An explicit ``train_scenes`` without ``val_scenes`` validates on the remaining scenes.

    Returns:
        (train scene names, val scene names, a word on where they came from).
    """
    root = Path(root)
    if train_scenes is not None or val_scenes is not None:
        train = list(train_scenes) if train_scenes is not None else None
        val = list(val_scenes) if val_scenes is not None else None
        if train is None or val is None:
            others = [s for s in find_scenes(root) if s not in set(train or val or [])]
            train = others if train is None else train
            val = others if val is None else val
        return train, val, "config"
    train_file, val_file = root / TRAINING_LIST, root / VALIDATION_LIST
    if train_file.is_file():
        val = read_scene_list(val_file) if val_file.is_file() else []
        return read_scene_list(train_file), val, f"{TRAINING_LIST}/{VALIDATION_LIST}"
    scenes = find_scenes(root)
    if len(scenes) < 2:
        return scenes, [], "all scenes (too few for a validation split)"
    num_val = max(1, round(len(scenes) * val_fraction))
    order = np.random.default_rng(seed).permutation(len(scenes))
    val = sorted(scenes[i] for i in order[:num_val])
    train = [s for s in scenes if s not in set(val)]
    return train, val, f"deterministic split (seed {seed}, {val_fraction:.0%} val)"


# --------------------------------------------------------------------------------------------------
# Index
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewRecord:
    """Files and camera of one view (validated)."""

    image: Path
    depth: Path
    camera: Camera
    height: int
    width: int


@dataclass(frozen=True)
class PairRecord:
    """An ordered pair of views of one scene (view0 → view1)."""

    scene: str
    view0: int
    view1: int

    @property
    def pair_id(self) -> str:
        """``scene/view0-view1`` (the contract's ``scene/ref_id-src_id``)."""
        return f"{self.scene}/{self.view0}-{self.view1}"


@dataclass
class IndexReport:
    """What the index skipped (``on_bad_data="skip"``); ``messages`` holds one line per problem."""

    skipped_scenes: int = 0
    skipped_views: int = 0
    skipped_pairs: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Number of problems found."""
        return self.skipped_scenes + self.skipped_views + self.skipped_pairs


class _Problems:
    """Raise or record-and-warn, depending on ``on_bad_data``."""

    def __init__(self, on_bad_data: str, report: IndexReport) -> None:
        if on_bad_data not in ON_BAD_DATA:
            raise ValueError(f"on_bad_data must be one of {ON_BAD_DATA}, got {on_bad_data!r}")
        self.skip = on_bad_data == "skip"
        self.report = report

    def __call__(self, message: str, kind: str) -> None:
        if not self.skip:
            raise BlendedMVSFormatError(message)
        setattr(self.report, f"skipped_{kind}", getattr(self.report, f"skipped_{kind}") + 1)
        self.report.messages.append(message)
        log.warning("skipping bad data (%s): %s", kind[:-1], message)


def _check_view(scene_dir: Path, view: int) -> ViewRecord:
    """Validate one view without decoding it; raises BlendedMVSFormatError naming the file."""
    image = image_path(scene_dir, view)
    depth = depth_path(scene_dir, view)
    cam = cam_path(scene_dir, view)
    for path, what in ((image, "image"), (depth, "depth map"), (cam, "camera file")):
        if not path.is_file():
            raise BlendedMVSFormatError(f"{path}: missing {what} of view {view}")
    camera = read_cam(cam)
    header = read_pfm_header(depth)
    if header.channels != 1:
        raise BlendedMVSFormatError(f"{depth}: depth map must be single-channel 'Pf', got 3 channels")
    height, width = read_image_size(image)
    if (header.height, header.width) != (height, width):
        raise BlendedMVSFormatError(
            f"{depth}: depth map is {header.width}x{header.height} but image {image.name} is {width}x{height}"
        )
    return ViewRecord(image, depth, camera, height, width)


@dataclass
class BlendedMVSIndex:
    """Validated views and pairs of a set of scenes.

    Attributes:
        root: data set root.
        scenes: scene names that contributed at least one pair.
        views: ``{(scene, view_id): ViewRecord}``.
        pairs: ordered pairs, both directions, deduplicated, in a stable order.
        report: what was skipped (all zero when ``on_bad_data="raise"``).
    """

    root: Path
    scenes: list[str]
    views: dict[tuple[str, int], ViewRecord]
    pairs: list[PairRecord]
    report: IndexReport

    @classmethod
    def build(cls, root: PathLike, scenes: Sequence[str], on_bad_data: str = "raise") -> BlendedMVSIndex:
        """Index and validate ``scenes`` under ``root``.

        Raises:
            BlendedMVSFormatError: (``on_bad_data="raise"``) the first problem, naming the file.
        """
        root = Path(root)
        report = IndexReport()
        problem = _Problems(on_bad_data, report)
        views: dict[tuple[str, int], ViewRecord] = {}
        pairs: list[PairRecord] = []
        kept_scenes: list[str] = []
        for scene in scenes:
            scene_dir = root / scene
            if not scene_dir.is_dir():
                problem(f"{scene_dir}: scene directory listed but missing", "scenes")
                continue
            try:
                table = read_pair_file(pair_path(scene_dir))
            except BlendedMVSFormatError as e:
                problem(str(e), "scenes")
                continue
            bad: set[int] = set()
            ids = sorted(set(table) | {src for sources in table.values() for src, _ in sources})
            for view in ids:
                try:
                    views[(scene, view)] = _check_view(scene_dir, view)
                except BlendedMVSFormatError as e:
                    problem(f"{e} (named in {pair_path(scene_dir)})", "views")
                    bad.add(view)
            seen: set[tuple[int, int]] = set()
            scene_pairs = []
            for ref, sources in table.items():
                for src, _score in sources:
                    if src == ref:
                        continue
                    for a, b in ((ref, src), (src, ref)):
                        if (a, b) in seen:
                            continue
                        seen.add((a, b))
                        if a in bad or b in bad:
                            report.skipped_pairs += 1
                            continue
                        scene_pairs.append(PairRecord(scene, a, b))
            if scene_pairs:
                kept_scenes.append(scene)
                pairs += scene_pairs
            else:
                log.warning("scene %s has no usable pairs", scene_dir)
        return cls(root, kept_scenes, views, pairs, report)


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


class BlendedMVSPairDataset(Dataset):
    """Depth pairs of BlendedMVS-layout scenes at a fixed training size.

    Args:
        root: data set root holding ``<scene>/...`` directories.
        scenes: scene names to use.
        height, width: training size; images, depth and K are resized to it.
        on_bad_data: ``"raise"`` or ``"skip"`` (log, count and replace bad pairs).
        index: a prebuilt :class:`BlendedMVSIndex` (otherwise built and validated here).

    Items follow the batch contract of ``docs/ARCHITECTURE.md``: ``image0/1`` (1, H, W) float32 in
    [0, 1], ``depth0/1`` (H, W) float32 (0 = unknown), ``K0/1`` (3, 3), ``T_0to1``/``T_1to0`` (4, 4),
    ``pair_id`` ``"scene/view0-view1"``.
    """

    def __init__(
        self,
        root: PathLike,
        scenes: Sequence[str],
        height: int = 480,
        width: int = 640,
        on_bad_data: str = "raise",
        index: BlendedMVSIndex | None = None,
    ) -> None:
        if on_bad_data not in ON_BAD_DATA:
            raise ValueError(f"on_bad_data must be one of {ON_BAD_DATA}, got {on_bad_data!r}")
        self.size_hw = (int(height), int(width))
        self.on_bad_data = on_bad_data
        self.index = index if index is not None else BlendedMVSIndex.build(root, scenes, on_bad_data)
        self.pairs = self.index.pairs
        # Shared with DataLoader workers (inherited at fork/spawn) so the main process sees their counts.
        self._load_skips = multiprocessing.get_context().Value("i", 0)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def skipped_on_load(self) -> int:
        """Pairs replaced because a file failed to load (summed over DataLoader workers)."""
        return int(self._load_skips.value)

    @property
    def bad_data_counts(self) -> dict[str, int]:
        """Counts for the epoch summary: index-time skips and load-time replacements."""
        report = self.index.report
        return {
            "skipped_scenes": report.skipped_scenes,
            "skipped_views": report.skipped_views,
            "skipped_pairs": report.skipped_pairs,
            "replaced_on_load": self.skipped_on_load,
        }

    def _load_view(self, scene: str, view: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        record = self.index.views[(scene, view)]
        image = read_image_gray(record.image)
        if image.shape != (record.height, record.width):
            raise BlendedMVSFormatError(
                f"{record.image}: decoded size {image.shape[::-1]} differs from its header "
                f"{(record.width, record.height)}"
            )
        blank = featureless_reason(image)
        if blank:
            raise BlendedMVSFormatError(f"{record.image}: {blank}")
        depth = read_pfm(record.depth)
        if depth.shape != image.shape:
            raise BlendedMVSFormatError(
                f"{record.depth}: depth map is {depth.shape[::-1]} but image is {image.shape[::-1]}"
            )
        image, K = resize_with_intrinsics(image, record.camera.intrinsic, self.size_hw)
        depth, _ = resize_depth_with_intrinsics(depth, None, self.size_hw)
        depth = np.ascontiguousarray(depth, dtype=np.float32)
        depth[~((depth > 0) & (depth < np.inf))] = 0  # holes, nan, inf and negative depth -> unknown
        if not depth.any():
            raise BlendedMVSFormatError(f"{record.depth}: depth map is empty (no positive finite value)")
        # Scale in numpy: torch's threaded elementwise ops are slow on small tensors under CPU contention.
        return image.astype(np.float32) * np.float32(1.0 / 255.0), depth, K

    def load_pair(self, i: int) -> dict:
        """Load pair ``i`` without the skip logic (raises BlendedMVSFormatError naming the file)."""
        pair = self.pairs[i]
        image0, depth0, K0 = self._load_view(pair.scene, pair.view0)
        image1, depth1, K1 = self._load_view(pair.scene, pair.view1)
        E0 = self.index.views[(pair.scene, pair.view0)].camera.extrinsic
        E1 = self.index.views[(pair.scene, pair.view1)].camera.extrinsic
        T_0to1 = relative_pose(E0, E1)
        return {
            "image0": torch.from_numpy(image0)[None],  # (1, H, W)
            "image1": torch.from_numpy(image1)[None],
            "depth0": torch.from_numpy(depth0),  # (H, W)
            "depth1": torch.from_numpy(depth1),
            "K0": torch.from_numpy(K0.astype(np.float32)),  # (3, 3)
            "K1": torch.from_numpy(K1.astype(np.float32)),
            "T_0to1": torch.from_numpy(T_0to1.astype(np.float32)),  # (4, 4)
            "T_1to0": torch.from_numpy(np.linalg.inv(T_0to1).astype(np.float32)),
            "pair_id": pair.pair_id,
        }

    def __getitem__(self, i: int) -> dict:
        if self.on_bad_data == "raise":
            return self.load_pair(i)
        # Replacements are deterministic in i, so a run is reproducible even with bad files.
        rng = np.random.default_rng(i)
        candidate = i
        for _ in range(_MAX_REPLACEMENTS):
            try:
                return self.load_pair(candidate)
            except (BlendedMVSFormatError, OSError) as e:
                with self._load_skips.get_lock():
                    self._load_skips.value += 1
                log.warning("skipping pair %s: %s", self.pairs[candidate].pair_id, e)
                candidate = int(rng.integers(len(self.pairs)))
        raise BlendedMVSFormatError(
            f"{self.index.root}: {_MAX_REPLACEMENTS} consecutive pairs failed to load "
            f"(last: {self.pairs[candidate].pair_id}); the data set looks broken"
        )


def count_images(scene_dir: PathLike) -> int:
    """Number of non-masked images in a scene (for summaries)."""
    folder = Path(scene_dir) / IMAGE_DIR
    return sum(1 for p in folder.glob("*.jpg") if not p.stem.endswith("_masked"))
