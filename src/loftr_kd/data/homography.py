"""Homography pairs from any folder of images (exact ground truth without depth or poses).

Both images of a pair are rendered from the same source photo: ``image0`` is a random crop at a random
scale, ``image1`` the same crop seen through a random homography (zoom up to ``max_zoom`` either way,
rotation up to ``max_rotation_deg``, perspective, translation) — rendered from the *source*, so the
parts of ``image1`` outside ``image0`` show real content instead of black borders wherever the photo
extends. ``H_0to1`` maps image0 pixels to image1 pixels (pixel centres at integer coordinates, the
``cv2.warpPerspective`` convention). Photometric changes (brightness, contrast, gamma, noise, blur) are
applied to each image independently; JPEG artefacts too. Everything is deterministic given ``(seed, index)``.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from loftr_kd.data.blendedmvs_io import BlendedMVSFormatError, read_image_gray, read_image_size
from loftr_kd.errors import ON_BAD_DATA
from loftr_kd.files import temporary_folder
from loftr_kd.images import featureless_reason, too_small_reason

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


def find_images(root: PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """All images under ``root`` (recursive, sorted), skipping BlendedMVS ``*_masked`` images."""
    root = Path(root)
    if root.is_file():
        raise NotADirectoryError(f"{root}: is a file; data.root needs a folder of images")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder does not exist")
    exts = {e.lower() for e in extensions}
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in exts and p.is_file() and not p.stem.endswith("_masked")
    )


def _translation(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _fraction_inside(warped: np.ndarray, height: int, width: int) -> float:
    """Share of warped homogeneous points inside the frame; -1 when the horizon crosses the frame."""
    if (warped[2] <= 1e-6).any():
        return -1.0
    x, y = warped[0] / warped[2], warped[1] / warped[2]
    inside = (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)
    return float(inside.mean())


HOMOGRAPHY_RANGE_KEYS = ("max_zoom", "max_rotation_deg", "max_perspective", "max_translation")


def check_homography_range(
    max_zoom: float = 3.0,
    max_rotation_deg: float = 60.0,
    max_perspective: float = 0.2,
    max_translation: float = 0.2,
) -> None:
    """The range :func:`sample_homography` draws from (a zoom below 1 was a bare "math domain error" and a
    NaN rotation NaN homographies, at the first item).

    Raises:
        ValueError: naming the setting and its range.
    """
    ranges = {
        "max_zoom": (max_zoom, lambda v: v >= 1, ">= 1 (the zoom is drawn in [1/max_zoom, max_zoom])"),
        "max_rotation_deg": (max_rotation_deg, lambda v: 0 <= v <= 180, "degrees in [0, 180]"),
        "max_perspective": (max_perspective, lambda v: 0 <= v < 1, "in [0, 1)"),
        "max_translation": (max_translation, lambda v: 0 <= v <= 1, "a fraction of the image in [0, 1]"),
    }
    for name, (value, ok, what) in ranges.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
            raise ValueError(f"{name}={value!r}: expected {what}")


def sample_homography(
    rng: np.random.Generator,
    height: int,
    width: int,
    max_zoom: float = 3.0,
    max_rotation_deg: float = 60.0,
    max_perspective: float = 0.2,
    max_translation: float = 0.2,
    min_overlap: float = 0.25,
    max_tries: int = 50,
) -> np.ndarray:
    """Random homography of an ``height×width`` frame onto itself, about the image centre.

    ``H = T(c + t) @ s·R(θ) @ P @ T(-c)`` with log-uniform zoom ``s ∈ [1/max_zoom, max_zoom]``,
    ``θ ∈ ±max_rotation_deg``, perspective ``P = [[1,0,0],[0,1,0],[p/(W/2), q/(H/2), 1]]`` with
    ``|p|, |q| ≤ max_perspective`` and translation ``t`` up to ``max_translation`` of the frame.
    Redrawn until at least ``min_overlap`` of a grid of points of one image lands inside the other
    (and the horizon stays outside both).

    Returns:
        (3, 3) float64 image0 pixel → image1 pixel.
    """
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    ys, xs = np.mgrid[0:height:16, 0:width:16]
    grid = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5, np.ones(xs.size)])
    H = np.eye(3)
    for _ in range(max_tries):
        scale = math.exp(rng.uniform(-math.log(max_zoom), math.log(max_zoom)))
        angle = math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
        p, q = rng.uniform(-max_perspective, max_perspective, size=2)
        t = rng.uniform(-max_translation, max_translation, size=2) * (width, height)
        c, s = math.cos(angle), math.sin(angle)
        similarity = np.array([[scale * c, -scale * s, 0.0], [scale * s, scale * c, 0.0], [0.0, 0.0, 1.0]])
        perspective = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [p / (width / 2), q / (height / 2), 1.0]])
        H = _translation(*(centre + t)) @ similarity @ perspective @ _translation(*(-centre))
        # Overlap seen from either image: a 3x zoom shows only 1/9 of image0, but all of image1.
        overlaps = [_fraction_inside(M @ grid, height, width) for M in (H, np.linalg.inv(H))]
        if min(overlaps) >= 0 and max(overlaps) >= min_overlap:
            return H
    log.debug("no homography with overlap >= %.2f after %d tries; using the last one", min_overlap, max_tries)
    return H


def render(source: np.ndarray, G: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """``cv2.warpPerspective(source, G)`` with anti-aliasing: shrinks go through a Gaussian pyramid.

    The pyramid level changes only which copy of the source is sampled, not the geometry: ``pyrDown``'s
    5-tap kernel is centred on source pixel ``2 x_down``, so ``x_down = 0.5 x``, compensated in ``G``.
    """
    height, width = size_hw
    # Local scale of G at the output centre, from the Jacobian of the inverse map.
    G_inv = np.linalg.inv(G)
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0, 1.0])
    u = G_inv @ centre
    jac = (G_inv[:2, :2] * u[2] - np.outer(u[:2], G_inv[2, :2])) / u[2] ** 2
    shrink = math.sqrt(max(abs(np.linalg.det(jac)), 1e-12))  # source pixels per output pixel
    down = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]])
    while shrink >= 2.0 and min(source.shape[:2]) >= 32:
        source = cv2.pyrDown(source)
        G = G @ np.linalg.inv(down)
        shrink /= 2.0
    return cv2.warpPerspective(
        source, G, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def photometric(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random blur, gamma, contrast, brightness, Gaussian noise and JPEG artefacts on a float image in [0, 1]."""
    if strength <= 0:
        return image
    if rng.random() < 0.3:
        sigma = rng.uniform(0.3, 1.5 * strength)
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    gamma = math.exp(rng.uniform(-0.4, 0.4) * strength)
    image = np.power(np.clip(image, 0.0, 1.0), gamma)
    contrast = math.exp(rng.uniform(-0.3, 0.3) * strength)
    brightness = rng.uniform(-0.15, 0.15) * strength
    image = (image - 0.5) * contrast + 0.5 + brightness
    noise = rng.uniform(0.0, 0.03 * strength)
    image = image + rng.normal(0.0, noise, size=image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    if rng.random() < 0.4:  # JPEG block and ringing artefacts, as in photos from phones and the web
        quality = int(rng.uniform(max(10.0, 95.0 - 65.0 * strength), 95.0))
        image = jpeg_round_trip(image, quality)
    return image


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (float in [0, 1], gray or BGR) encoded as JPEG at ``quality`` and decoded again."""
    ok, data = cv2.imencode(
        ".jpg", np.round(image * 255.0).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return decoded.astype(np.float32) / 255.0


class HomographyPairDataset(Dataset):
    """Random homography pairs from every image under ``root``.

    Item ``i`` uses source image ``i % num_images`` and random numbers from ``(seed, i)``, so the data set
    is a deterministic virtual set of ``length`` pairs (default 1000 per image); the epoch sampler draws
    from it.

    Args:
        root: folder searched recursively for images (jpg, png, ppm, ...).
        height, width: training size of both images.
        seed: base seed.
        length: number of virtual pairs (default ``1000 * num_images``).
        max_zoom, max_rotation_deg, max_perspective, max_translation: homography range (see
            :func:`sample_homography`).
        photometric_strength: 0 disables photometric changes, 1 is the default range.
        crop_scale: image0 is a crop whose scale over the frame-filling size is drawn in ``[1, crop_scale]``.
        images: explicit image list instead of scanning ``root``.
        on_bad_data: ``"raise"`` or ``"skip"``: unreadable or too small images (shorter side below
            ``loftr_kd.images.MIN_TRAINING_SIDE``) are dropped when the set is built (header check), and
            images that fail to decode or are blank/featureless are replaced by the next image on load;
            each is logged and counted (:attr:`bad_data_counts`).

    Items: ``image0``, ``image1`` (1, H, W) float32 in [0, 1]; ``H_0to1`` (3, 3) float32; ``pair_id``.
    """

    def __init__(
        self,
        root: PathLike,
        height: int = 480,
        width: int = 640,
        seed: int = 0,
        length: int | None = None,
        max_zoom: float = 3.0,
        max_rotation_deg: float = 60.0,
        max_perspective: float = 0.2,
        max_translation: float = 0.2,
        photometric_strength: float = 1.0,
        crop_scale: float = 1.5,
        images: Sequence[PathLike] | None = None,
        on_bad_data: str = "raise",
    ) -> None:
        if on_bad_data not in ON_BAD_DATA:
            raise ValueError(f"on_bad_data must be 'raise' or 'skip', got {on_bad_data!r}")
        try:
            check_homography_range(max_zoom, max_rotation_deg, max_perspective, max_translation)
        except ValueError as error:
            raise ValueError(f"homography range of {self.__class__.__name__}: {error}") from None
        self.root = Path(root)
        self.on_bad_data = on_bad_data
        candidates = [Path(p) for p in images] if images is not None else find_images(self.root)
        # Header check of every image now, not hours into training.
        self.images, self.skipped_images = [], 0
        for path in candidates:
            try:
                small = too_small_reason(*read_image_size(path))
                if small:
                    raise BlendedMVSFormatError(f"{path}: {small}")
            except BlendedMVSFormatError as e:
                if on_bad_data == "raise":
                    raise BlendedMVSFormatError(
                        f"{e} (data.on_bad_data=skip leaves such images out)"
                    ) from None
                self.skipped_images += 1
                log.warning("skipping bad image: %s", e)
                continue
            self.images.append(path)
        if not self.images:
            raise FileNotFoundError(
                f"{self.root}: no usable images found (extensions {', '.join(IMAGE_EXTENSIONS)})"
            )
        # Shared with DataLoader workers so the main process sees their counts.
        self._load_skips = multiprocessing.get_context().Value("i", 0)
        self.size_hw = (int(height), int(width))
        self.seed = int(seed)
        self.length = int(length) if length is not None else 1000 * len(self.images)
        self.max_zoom = float(max_zoom)
        self.max_rotation_deg = float(max_rotation_deg)
        self.max_perspective = float(max_perspective)
        self.max_translation = float(max_translation)
        self.photometric_strength = float(photometric_strength)
        self.crop_scale = float(crop_scale)

    def __len__(self) -> int:
        return self.length

    @property
    def bad_data_counts(self) -> dict[str, int]:
        """Images dropped when built and pairs whose image failed to load (replaced by the next image)."""
        return {"skipped_images": self.skipped_images, "replaced_on_load": int(self._load_skips.value)}

    def _load_source(self, i: int) -> tuple[Path, np.ndarray]:
        k = i % len(self.images)
        for attempt in range(len(self.images) if self.on_bad_data == "skip" else 1):
            path = self.images[(k + attempt) % len(self.images)]
            try:
                image = read_image_gray(path)
                blank = featureless_reason(image)
                if blank:
                    raise BlendedMVSFormatError(f"{path}: {blank}")
                return path, image
            except BlendedMVSFormatError as e:
                if self.on_bad_data == "raise":
                    raise BlendedMVSFormatError(f"{e} (homography source image)") from e
                with self._load_skips.get_lock():
                    self._load_skips.value += 1
                log.warning("skipping bad image: %s", e)
        raise BlendedMVSFormatError(f"{self.root}: no source image could be loaded")

    def _source_to_image0(self, rng: np.random.Generator, source_hw: tuple[int, int]) -> np.ndarray:
        """Random crop of the source at a random scale that fills the frame: source px → image0 px."""
        height, width = self.size_hw
        fill = max(height / source_hw[0], width / source_hw[1])
        scale = fill * rng.uniform(1.0, self.crop_scale)
        # Offsets keep the crop inside the (scaled) source.
        free_x = max(source_hw[1] * scale - width, 0.0)
        free_y = max(source_hw[0] * scale - height, 0.0)
        ox, oy = rng.uniform(0, free_x), rng.uniform(0, free_y)
        # x0 = (xs + 0.5) * scale - 0.5 - ox
        return np.array(
            [[scale, 0.0, 0.5 * scale - 0.5 - ox], [0.0, scale, 0.5 * scale - 0.5 - oy], [0, 0, 1.0]]
        )

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} pairs")
        path, source = self._load_source(i)
        rng = np.random.default_rng([self.seed, i])
        height, width = self.size_hw
        G0 = self._source_to_image0(rng, source.shape[:2])
        H_0to1 = sample_homography(
            rng,
            height,
            width,
            self.max_zoom,
            self.max_rotation_deg,
            self.max_perspective,
            self.max_translation,
        )
        G1 = H_0to1 @ G0
        image0 = render(source, G0, self.size_hw).astype(np.float32) / 255.0
        image1 = render(source, G1, self.size_hw).astype(np.float32) / 255.0
        image0 = photometric(image0, rng, self.photometric_strength)
        image1 = photometric(image1, rng, self.photometric_strength)
        try:
            name = path.relative_to(self.root).as_posix()
        except ValueError:
            name = path.name
        return {
            "image0": torch.from_numpy(np.ascontiguousarray(image0))[None],  # (1, H, W)
            "image1": torch.from_numpy(np.ascontiguousarray(image1))[None],
            "H_0to1": torch.from_numpy(H_0to1).float(),  # (3, 3)
            "pair_id": f"{name}#{i}",
        }


def write_hpatches_layout(dataset: HomographyPairDataset, out_dir: PathLike, count: int) -> list[Path]:
    """Write ``count`` pairs of ``dataset`` as HPatches-layout sequences (``<seq>/1.png, 2.png, H_1_2``).

    Turns any folder of photos into a registration benchmark for ``loftr-kd-evaluate homography.root=``
    with exact homographies (the same zoom/rotation/photometric ranges as training pairs).
    """
    out = Path(out_dir)
    written = []
    for i in range(int(count)):
        item = dataset[i]
        sequence = out / f"h_{i:04d}"
        sequence.mkdir(parents=True, exist_ok=True)
        for name, key in (("1.png", "image0"), ("2.png", "image1")):
            image = (item[key][0].numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
            cv2.imwrite(str(sequence / name), image)
        np.savetxt(sequence / "H_1_2", item["H_0to1"].numpy().astype(np.float64))
        written.append(sequence)
    return written


def write_photo_set_pairs(
    set_name: str, out_dir: PathLike, count: int, *, seed: int, height: int = 480, width: int = 640
) -> list[Path]:
    """``count`` HPatches-layout pairs of a named photo set (:mod:`loftr_kd.data.photos`) in a new folder.

    The pairs are those of ``loftr-kd-photos --set NAME --out P`` followed by ``loftr-kd-homographies
    --images P`` (the photos go to a temporary folder first, written as ``loftr-kd-photos`` writes them), so
    ``set_name="heldout", count=120, seed=2026`` gives the README's held-out pairs. The folder appears
    complete or not at all.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty (nothing in it is touched).
        FileNotFoundError: a photo of the set is not installed.
    """
    import shutil
    import tempfile

    from loftr_kd.data.photos import collect_photos, photo_set

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} already exists and is not empty; pairs are written only into a new folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_folder(out.parent, prefix=f".{out.name}.partial-")
    try:
        with tempfile.TemporaryDirectory() as photos:
            collect_photos(photo_set(set_name), photos)
            dataset = HomographyPairDataset(photos, height=height, width=width, seed=seed)
            write_hpatches_layout(dataset, partial, count)
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return sorted(out.glob("h_*"))


def real_image_pairs(
    height: int, width: int, n: int = 4, *, seed: int = 0, max_angle_deg: float = 20.0, max_scale: float = 1.3
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Real photos (scikit-image's bundled set, offline) paired with a random homography warp.

    Returns:
        ``n`` tuples ``(image0, image1, H_0to1)``: images (height, width) float32 in [0, 1], and the
        3x3 homography mapping image0 pixels to image1 pixels.
    """
    import cv2
    import skimage.data

    names = ["camera", "astronaut", "coffee", "chelsea", "rocket", "brick", "coins", "moon"]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = getattr(skimage.data, names[i % len(names)])()
        if img.ndim == 3:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
        image0 = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        angle = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg))
        scale = np.exp(rng.uniform(-np.log(max_scale), np.log(max_scale)))
        cx, cy = (width - 1) / 2, (height - 1) / 2
        c, s = scale * np.cos(angle), scale * np.sin(angle)
        centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
        back = np.array(
            [
                [1, 0, cx + rng.uniform(-0.05, 0.05) * width],
                [0, 1, cy + rng.uniform(-0.05, 0.05) * height],
                [0, 0, 1],
            ]
        )
        similarity = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        perspective = np.eye(3)
        perspective[2, :2] = rng.uniform(-2e-4, 2e-4, 2) * 640 / max(width, height)
        h_0to1 = back @ perspective @ similarity @ centre
        h_0to1 /= h_0to1[2, 2]
        image1 = cv2.warpPerspective(image0, h_0to1, (width, height), flags=cv2.INTER_LINEAR)
        out.append((image0, image1.astype(np.float32), h_0to1.astype(np.float32)))
    return out
