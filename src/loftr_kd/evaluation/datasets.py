"""The benchmarks' data: HPatches-layout homography pairs, relative-pose pair lists (read and written),
and the images of both, read by :func:`loftr_kd.images.read_image` and resized as the protocol says."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from loftr_kd.images import MIN_TRAINING_SIDE, read_image

__all__ = [
    "HomographyPair",
    "PosePair",
    "load_hpatches",
    "load_pose_pairs",
    "pose_pairs_from_scenes",
    "read_image",
    "resize_short_side",
    "write_pose_pairs",
]

_IMAGE_SUFFIXES = (".ppm", ".png", ".jpg", ".jpeg", ".pgm", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class HomographyPair:
    """One HPatches pair: image ``1`` of a sequence against image ``index``; ``H`` maps 1 -> index."""

    sequence: str
    index: int
    path0: Path
    path1: Path
    H: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.sequence}/1-{self.index}"


@dataclass(frozen=True)
class PosePair:
    """One relative-pose pair: intrinsics of both images and ``X_cam1 = T_0to1 @ X_cam0``."""

    path0: Path
    path1: Path
    K0: np.ndarray
    K1: np.ndarray
    T_0to1: np.ndarray
    scene: str | None = None  # a scene set's scene: its images share names with the other scenes'

    @property
    def name(self) -> str:
        pair = f"{self.path0.name}-{self.path1.name}"
        return f"{self.scene}/{pair}" if self.scene else pair


def _find_image(directory: Path, stem: str) -> Path | None:
    for suffix in _IMAGE_SUFFIXES:
        path = directory / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def load_hpatches(root: str | Path, sequences: Iterable[str] | None = None) -> list[HomographyPair]:
    """Pairs of an HPatches-layout folder: ``<seq>/1.ppm ... 6.ppm`` and ``<seq>/H_1_2 ... H_1_6``.

    Raises:
        FileNotFoundError: no sequence folder (with image 1 and at least one ``H_1_k``) under ``root``.
        ValueError: a homography file that is not a 3x3 matrix of numbers, or not an invertible one.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"HPatches root {root} is not a directory")
    names = (
        sorted(sequences) if sequences is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    )
    pairs = []
    for name in names:
        directory = root / name
        first = _find_image(directory, "1")
        h_paths = sorted(directory.glob("H_1_*"), key=lambda p: p.name)
        if first is None:
            if h_paths:  # a pair set with a file lost: its pairs would silently go missing from the report
                raise FileNotFoundError(
                    f"{directory} has {h_paths[0].name} but no image 1 (1.png, 1.ppm ...)"
                )
            continue
        entries = {p.name for p in directory.iterdir()}
        for other in sorted(directory / n for n in entries if Path(n).stem.isdigit() and Path(n).stem != "1"):
            if other.suffix.lower() in _IMAGE_SUFFIXES and f"H_1_{other.stem}" not in entries:
                raise FileNotFoundError(
                    f"{other} has no homography H_1_{other.stem} next to it in {directory}"
                )
        for h_path in h_paths:
            index = int(h_path.name.split("_")[-1])
            other = _find_image(directory, str(index))
            if other is None:
                raise FileNotFoundError(f"{h_path} has no image {index} next to it in {directory}")
            try:
                H = np.loadtxt(h_path, dtype=np.float64)
            except ValueError as err:
                raise ValueError(f"cannot read the homography {h_path}: {err}") from err
            if H.shape != (3, 3):
                raise ValueError(f"{h_path} must hold a 3x3 matrix, got shape {H.shape}")
            # A homography is defined up to scale: judge the matrix scaled to a largest entry of 1.
            scale = np.abs(H).max() if np.isfinite(H).all() else 0.0
            if scale == 0 or abs(np.linalg.det(H / scale)) < 1e-12:
                # every method would score 0 (or nan) against it, and the report would look like a result
                raise ValueError(f"{h_path} is not an invertible homography (NaN/inf or a singular matrix)")
            pairs.append(HomographyPair(name, index, first, other, H))
    if not pairs:
        raise FileNotFoundError(f"no HPatches sequence (<seq>/1.ppm with H_1_k files) under {root}")
    return pairs


def load_pose_pairs(pair_list: str | Path, image_root: str | Path | None = None) -> list[PosePair]:
    """Pairs of a SuperGlue/LoFTR-style list: one line per pair with 38 values

    ``path0 path1 rot0 rot1 K0(9, row-major) K1(9) T_0to1(16)``; paths relative to ``image_root``
    (default: the list's folder). EXIF rotations must be 0. Blank lines and ``#`` comments are skipped.
    """
    pair_list = Path(pair_list)
    if not pair_list.is_file():
        raise FileNotFoundError(f"pair list {pair_list} not found")
    image_root = Path(image_root) if image_root is not None else pair_list.parent
    pairs = []
    for number, line in enumerate(pair_list.read_text().splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        where = f"{pair_list}:{number}"
        if len(tokens) != 38:
            raise ValueError(
                f"{where}: expected 38 values (path0 path1 rot0 rot1 K0 K1 T_0to1), got {len(tokens)}"
            )
        try:
            values = np.array(tokens[2:], dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        if not np.isfinite(values).all():
            raise ValueError(f"{where}: NaN or infinite values in rot/K/T")
        if values[0] != 0 or values[1] != 0:
            raise ValueError(f"{where}: EXIF rotations are not supported; rotate the images and fix K/T")
        K0, K1 = (camera_matrix(f"{where}: {name}", values[i : i + 9]) for name, i in (("K0", 2), ("K1", 11)))
        T_0to1 = relative_motion(where, values[20:36])
        path0, path1 = image_root / tokens[0], image_root / tokens[1]
        for path in (path0, path1):
            if not path.is_file():
                raise FileNotFoundError(f"{where}: image {path} not found")
        pairs.append(PosePair(path0, path1, K0, K1, T_0to1))
    if not pairs:
        raise ValueError(f"pair list {pair_list} holds no pairs")
    return pairs


def camera_matrix(where: str, values: Iterable[float]) -> np.ndarray:
    """A pinhole camera matrix from 9 row-major values, scaled to ``K[2, 2] = 1`` (the same camera).

    The pose benchmark normalises points with fx, fy, cx and cy only: a last row other than ``(0, 0, k)``
    or a skew would be ignored and score an exact pose as tens of degrees off.

    Raises:
        ValueError: ``where``: not such a matrix (what is wrong named).
    """
    K = np.asarray(list(values), np.float64).reshape(3, 3)
    if K[2, 0] != 0 or K[2, 1] != 0 or not K[2, 2] > 0:
        raise ValueError(
            f"{where}: not a camera matrix: its last row must be (0, 0, k > 0), got {K[2].tolist()}"
        )
    K = K / K[2, 2]
    if K[1, 0] != 0 or K[0, 1] != 0:
        entry = "K[0, 1]" if K[0, 1] != 0 else "K[1, 0]"
        raise ValueError(
            f"{where}: a skewed camera matrix ({entry} = {K[0, 1] or K[1, 0]:g}) is not supported"
        )
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(
            f"{where}: not a camera matrix: focal lengths must be > 0, got {K[0, 0]:g}, {K[1, 1]:g}"
        )
    return K


def relative_motion(where: str, values: Iterable[float], tolerance: float = 1e-2) -> np.ndarray:
    """``T_0to1`` from 16 row-major values, checked to be a rigid motion with a baseline.

    The rotation is allowed ``tolerance`` of rounding (stored camera files hold a few digits). A pair
    without translation has no epipolar geometry: every method would fail it (its translation error is
    undefined), so it is refused rather than scored.

    Raises:
        ValueError: ``where``: not a rigid motion, or no translation.
    """
    T = np.asarray(list(values), np.float64).reshape(4, 4)
    R, t = T[:3, :3], T[:3, 3]
    if not np.allclose(T[3], [0, 0, 0, 1]):
        raise ValueError(f"{where}: T_0to1's last row must be (0, 0, 0, 1), got {T[3].tolist()}")
    if np.abs(R @ R.T - np.eye(3)).max() > tolerance or abs(np.linalg.det(R) - 1) > tolerance:
        raise ValueError(f"{where}: T_0to1's 3x3 block is not a rotation (R R^T != I or det(R) != 1)")
    if np.linalg.norm(t) <= 1e-9 * max(1.0, np.abs(T).max()):
        raise ValueError(f"{where}: T_0to1 has no translation; a pair without a baseline cannot score a pose")
    return T


def write_pose_pairs(path: str | Path, pairs: Iterable[PosePair], image_root: str | Path) -> None:
    """Write pairs in the format ``load_pose_pairs`` reads (paths relative to ``image_root``)."""
    lines = []
    for pair in pairs:
        numbers = np.r_[0, 0, pair.K0.ravel(), pair.K1.ravel(), pair.T_0to1.ravel()]
        rel0, rel1 = (Path(p).relative_to(image_root).as_posix() for p in (pair.path0, pair.path1))
        lines.append(" ".join([rel0, rel1, *(f"{v:.10g}" for v in numbers)]))
    Path(path).write_text("\n".join(lines) + "\n")


# An evaluation image must hold two coarse cells of the default student without being upscaled into them.
MIN_EVALUATION_SIDE = MIN_TRAINING_SIDE


def read_benchmark_image(path: str | Path) -> np.ndarray:
    """A benchmark pair's image (:func:`loftr_kd.images.read_image`), refused when its shorter side is below
    :data:`MIN_EVALUATION_SIDE`: resized to the protocol's size it would be scored as if it were a photo.

    Raises:
        ValueError: the image is too small, naming it and its size.
    """
    image = read_image(path)
    height, width = image.shape[:2]
    if min(height, width) < MIN_EVALUATION_SIDE:
        raise ValueError(
            f"{path}: image is {width}x{height} pixels, too small to evaluate on (the shorter side needs "
            f"{MIN_EVALUATION_SIDE} px)"
        )
    return image


def resize_short_side(image: np.ndarray, short_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Image resized so its shorter side is ``short_side`` (None: unchanged) and the 3x3 scaling."""
    if not short_side:
        return image, np.eye(3)
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    new_w, new_h = round(w * scale), round(h * scale)
    resized = cv2.resize(
        image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )
    sx, sy = new_w / w, new_h / h
    return resized, np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])


def pose_pairs_from_scenes(
    root: str | Path, scenes: Iterable[str] | None = None, max_pairs: int | None = None, seed: int = 0
) -> list[PosePair]:
    """Relative-pose pairs of BlendedMVS-layout scenes (real BlendedMVS or synthetic), from their cameras.

    Args:
        root: the data set.
        scenes: scene names; ``None``: the validation scenes (``validation_list.txt``, else the same
            split training uses), never trained on.
        max_pairs: at most this many pairs, drawn deterministically from ``seed`` over all scenes.
        seed: the draw.

    Returns:
        One :class:`PosePair` per ordered pair of ``cams/pair.txt``, with ``T_0to1`` from the two
        cameras' extrinsics (``loftr_kd.geometry.relative_pose``).
    """
    from loftr_kd.data.blendedmvs import BlendedMVSIndex, split_scenes
    from loftr_kd.geometry import relative_pose

    root = Path(root)
    if scenes is None:
        _, scenes, _ = split_scenes(root)
    index = BlendedMVSIndex.build(root, list(scenes))
    records = index.pairs
    if max_pairs is not None and len(records) > max_pairs:
        chosen = np.sort(np.random.default_rng([seed, 5]).choice(len(records), max_pairs, replace=False))
        records = [records[i] for i in chosen]
    pairs = []
    for record in records:
        view0, view1 = (index.views[(record.scene, v)] for v in (record.view0, record.view1))
        where = f"{root / record.scene} views {record.view0} and {record.view1}"
        K0, K1 = (
            camera_matrix(f"{where}: {v.image.name}'s camera", v.camera.intrinsic.ravel())
            for v in (view0, view1)
        )
        try:
            T_0to1 = relative_pose(view0.camera.extrinsic, view1.camera.extrinsic)
        except np.linalg.LinAlgError:
            raise ValueError(f"{where}: {view0.image.name}'s extrinsic is a singular matrix") from None
        T_0to1 = relative_motion(where, np.asarray(T_0to1).ravel())
        pairs.append(PosePair(view0.image, view1.image, K0, K1, T_0to1, scene=record.scene))
    return pairs
