"""Named sets of real photographs that ship inside installed packages, for homography training and
held-out evaluation, found offline (nothing is downloaded).

One place decides which photo is for training and which is held out: the synthetic scene textures,
``loftr-kd-photos`` and the model card all read :data:`HELDOUT` from here, so a held-out photo never
reaches training through another door.

Sources (a photo is found where its package installed it):

- ``scikit-image``: ``skimage/data/*`` (a project dependency).
- ``matplotlib``: ``mpl-data/sample_data/*`` (a project dependency).
- Debian ``plasma-workspace-wallpapers``: ``/usr/share/wallpapers/<Name>/contents/images/*`` (largest).
- Debian ``mate-backgrounds``: ``/usr/share/backgrounds/mate/nature/<Name>.jpg``.
- Debian ``lomiri-wallpapers-16.04`` / ``lomiri-wallpapers-20.04``: ``/usr/share/backgrounds/<Name>.jpg``
  (photographs of scenes: landscapes, rooms, objects; only in the ``train-more`` set).

Only photographs are listed (no drawings, renders or screenshots). OpenCV's sample images and the
classical benchmarks (HPatches, Oxford affine, ...) are deliberately absent: they are what others
score us on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from loftr_kd.images import MIN_TRAINING_SIDE

PathLike = str | os.PathLike

PLASMA_ROOT = Path("/usr/share/wallpapers")
MATE_ROOT = Path("/usr/share/backgrounds/mate/nature")
LOMIRI_ROOT = Path("/usr/share/backgrounds")
LOMIRI_PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")


@dataclass(frozen=True)
class Photo:
    """One photograph: where it comes from and how to find it."""

    name: str  # file stem written by :func:`collect_photos`
    package: str  # what installs it: "scikit-image", "matplotlib" or a Debian package name
    file: str  # file name (scikit-image, matplotlib, MATE, Lomiri) or wallpaper folder (Plasma)

    @property
    def install_hint(self) -> str:
        if self.package in ("scikit-image", "matplotlib"):
            return f"pip install {self.package}"
        return f"apt-get install {self.package}"

    def locate(self) -> Path | None:
        """The installed file, or None when its package is not installed."""
        if self.package == "scikit-image":
            try:
                import skimage
            except ImportError:
                return None
            path = Path(skimage.__file__).parent / "data" / self.file
        elif self.package == "matplotlib":
            try:
                import matplotlib
            except ImportError:
                return None
            path = Path(matplotlib.get_data_path()) / "sample_data" / self.file
        elif self.package == "plasma-workspace-wallpapers":
            images = PLASMA_ROOT / self.file / "contents" / "images"
            candidates = sorted(images.glob("*.*"), key=lambda p: p.stat().st_size) if images.is_dir() else []
            path = candidates[-1] if candidates else images / "missing"
        elif self.package == "mate-backgrounds":
            path = MATE_ROOT / self.file
        elif self.package in LOMIRI_PACKAGES:
            path = LOMIRI_ROOT / self.file
        else:
            raise ValueError(f"unknown photo package {self.package!r}")
        return path if path.is_file() else None


def _skimage(*files: str) -> tuple[Photo, ...]:
    return tuple(Photo(Path(f).stem, "scikit-image", f) for f in files)


# Held out: never trained on, in any form (homography pairs, synthetic scene textures).
HELDOUT: tuple[Photo, ...] = _skimage("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")

# The pip-only training set (what the first refined student was trained on).
TRAIN_PIP: tuple[Photo, ...] = _skimage(
    "camera.png",
    "coins.png",
    "motorcycle_left.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "moon.png",
    "hubble_deep_field.jpg",
)

# Photographs from Debian's desktop-background packages (textured ones; flat skies and renders left out).
TRAIN_DEBIAN: tuple[Photo, ...] = tuple(
    Photo(f"plasma_{name.lower()}", "plasma-workspace-wallpapers", name)
    for name in (
        "BytheWater",
        "ColdRipple",
        "ColorfulCups",
        "EveningGlow",
        "FallenLeaf",
        "Grey",
        "OneStandsOut",
        "Path",
    )
) + tuple(
    Photo(f"mate_{name.lower()}", "mate-backgrounds", f"{name}.jpg")
    for name in (
        "Aqua",
        "Blinds",
        "Dune",
        "FreshFlower",
        "Garden",
        "GreenMeadow",
        "LadyBird",
        "RainDrops",
        "Storm",
        "TwoWings",
        "Wood",
        "YellowFlower",
    )
)

TRAIN_WIDE: tuple[Photo, ...] = (
    TRAIN_PIP
    + _skimage("motorcycle_right.png")
    + (Photo("grace_hopper", "matplotlib", "grace_hopper.jpg"),)
    + TRAIN_DEBIAN
)

# Photographs of whole scenes (landscapes, a room, animals, objects) from the Lomiri wallpaper packages: the
# training photos above are mostly close-up textures, the held-out photos are scenes. Renders, drawings and
# flat gradients of the same packages are left out.
TRAIN_LOMIRI: tuple[Photo, ...] = tuple(
    Photo(f"lomiri_{stem.split('_by_')[0].lower().replace('-', '_')}", package, f"{stem}.jpg")
    for package, stem in (
        ("lomiri-wallpapers-16.04", "Bridge_by_Sander_Klootwijk"),
        ("lomiri-wallpapers-16.04", "Dragonfly_by_Bolly"),
        ("lomiri-wallpapers-20.04", "Kleiber_by_Lukas_Baubkus"),
        ("lomiri-wallpapers-16.04", "Picture_0B_by_freespace"),
        ("lomiri-wallpapers-16.04", "Picture_1A_by_freespace"),
        ("lomiri-wallpapers-16.04", "Wine_by_Jakkub_Mede"),
        ("lomiri-wallpapers-16.04", "aitzgorri_by_Aitzol_Berasategi"),
        ("lomiri-wallpapers-16.04", "friends_by_Aitzol_Berasategi"),
        ("lomiri-wallpapers-16.04", "life_by_Aitzol_Berasategi"),
        ("lomiri-wallpapers-16.04", "picosdeeuropa_by_Aitzol_Berasategi"),
        ("lomiri-wallpapers-16.04", "seeding_by_Clements_Engelhardt"),
        ("lomiri-wallpapers-16.04", "sunset_by_Aitzol_Berasategi"),
        ("lomiri-wallpapers-16.04", "free_by_Peter_Nerlich"),
    )
)

# The wide set plus the scene photographs (stage 3 of the default recipe trains on it).
TRAIN_MORE: tuple[Photo, ...] = TRAIN_WIDE + TRAIN_LOMIRI

PHOTO_SETS: dict[str, tuple[Photo, ...]] = {
    "train": TRAIN_WIDE,
    "train-more": TRAIN_MORE,
    "train-pip": TRAIN_PIP,
    "heldout": HELDOUT,
}

HELDOUT_FILES = frozenset(p.file for p in HELDOUT)


def photo_set(name: str) -> tuple[Photo, ...]:
    """A named set of :data:`PHOTO_SETS`, with a clear error for an unknown name."""
    try:
        return PHOTO_SETS[name]
    except KeyError:
        raise ValueError(f"unknown photo set {name!r}; known: {', '.join(PHOTO_SETS)}") from None


def collect_photos(
    photos: Sequence[Photo], out_dir: PathLike, *, max_side: int = 1600, allow_missing: bool = False
) -> list[dict]:
    """Write ``photos`` to ``out_dir`` as PNG (long side at most ``max_side``), with a manifest.

    Returns the manifest rows (also written to ``out_dir/photos.json``): name, package, source path,
    sha256 of the source file, written size.

    Raises:
        FileNotFoundError: a photo's package is not installed (the message names the package and how to
            install it), unless ``allow_missing`` and some photos are.
        ValueError: a source file does not decode as an image.
    """
    from loftr_kd.files import write_json

    located = [(photo, photo.locate()) for photo in photos]
    missing = [photo for photo, source in located if source is None]
    if missing and (not allow_missing or len(missing) == len(photos)):  # allowed, but not all: no data set
        packages = sorted({p.install_hint for p in missing})
        raise FileNotFoundError(
            f"{len(missing)} of {len(photos)} photos are not installed "
            f"({', '.join(p.name for p in missing[:6])}{', ...' if len(missing) > 6 else ''}); "
            f"install them with: {'; '.join(packages)} (or pass allow_missing)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Written into a staging folder beside it and moved in at the end: an interrupted run (Ctrl-C, SIGTERM,
    # an error) left part of a set in `out`, which training and --images would have taken as the set.
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        rows = _write_photos(located, staging, max_side)
        for row in rows:
            os.replace(staging / f"{row['name']}.png", out / f"{row['name']}.png")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_json(out / "photos.json", {"photos": rows, "missing": [p.name for p in missing]})
    return rows


def _write_photos(located: list[tuple[Any, Path | None]], out: Path, max_side: int) -> list[dict[str, Any]]:
    """:func:`collect_photos`'s PNGs, written into ``out``; their ``photos.json`` rows."""
    from loftr_kd.files import write_bytes

    rows = []
    for photo, source in located:
        if source is None:
            continue
        data = source.read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{source}: does not decode as an image")
        scale = max_side / max(image.shape[:2])
        if scale < 1.0:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            if min(size) < MIN_TRAINING_SIDE:  # written, it would be refused by every reader of the set
                needed = int(np.ceil(MIN_TRAINING_SIDE * max(image.shape[:2]) / min(image.shape[:2])))
                raise ValueError(
                    f"max_side={max_side} makes {photo.name} {size[0]}x{size[1]} pixels, below the "
                    f"{MIN_TRAINING_SIDE}-pixel shorter side training needs; use at least {needed}"
                )
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise ValueError(f"{source}: could not be re-encoded as PNG")
        write_bytes(out / f"{photo.name}.png", png.tobytes())
        rows.append(
            {
                "name": photo.name,
                "package": photo.package,
                "source": str(source),
                "sha256": hashlib.sha256(data).hexdigest(),
                "height": int(image.shape[0]),
                "width": int(image.shape[1]),
            }
        )
    return rows


__all__ = [
    "HELDOUT",
    "HELDOUT_FILES",
    "PHOTO_SETS",
    "TRAIN_DEBIAN",
    "TRAIN_LOMIRI",
    "TRAIN_MORE",
    "TRAIN_PIP",
    "TRAIN_WIDE",
    "Photo",
    "collect_photos",
    "photo_set",
]
