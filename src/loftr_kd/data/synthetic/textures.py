"""Surface textures of the synthetic scenes: crops of the photographs bundled with scikit-image mixed
with procedural ones (noise, stripes, checkers, bricks), with mip pyramids so sampling does not alias."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import cv2
import numpy as np

TEXTURE_SIZE = 512  # power of two: every mip level halves exactly

# Photographs bundled inside scikit-image (loaded from its package folder, never downloaded). The
# held-out evaluation photos (loftr_kd.data.photos.HELDOUT) are not among them: a texture crop is training too.
_PHOTOS = (
    "brick.png",
    "camera.png",
    "cell.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "text.png",
)

# --------------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------------


@functools.cache
def _photo(name: str) -> np.ndarray | None:
    """A photograph bundled with scikit-image as uint8 BGR, or None when it is not installed."""
    try:
        import skimage
    except ImportError:
        return None
    path = Path(skimage.__file__).parent / "data" / name
    if not path.is_file():
        return None
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is not None:
        image.setflags(write=False)  # shared by every scene of the process
    return image


@functools.lru_cache(maxsize=1)
def available_photos() -> tuple[str, ...]:
    """Names of the bundled photographs that load offline."""
    return tuple(name for name in _PHOTOS if _photo(name) is not None)


def _random_color(rng: np.random.Generator) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0.1, 0.8) * 255, rng.uniform(0.25, 0.95) * 255]]])
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _value_noise(
    rng: np.random.Generator, size: int, octaves: int = 6, persistence: float = 0.6
) -> np.ndarray:
    """Fractal value noise in [0, 1], (size, size) float32."""
    out = np.zeros((size, size), dtype=np.float32)
    amplitude, total = 1.0, 0.0
    cells = int(rng.integers(2, 5))
    for _ in range(octaves):
        grid = rng.random((cells, cells), dtype=np.float32)
        out += amplitude * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amplitude
        amplitude *= persistence
        cells = min(cells * 2, size)
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def _two_tone(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a, b = _random_color(rng), _random_color(rng)
    if np.abs(a - b).sum() < 90:  # keep contrast
        b = 255.0 - a
    return a * (1.0 - mask[..., None]) + b * mask[..., None]


def _procedural_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """One of: fractal noise, stripes, checker, bricks — with fine grain so no region is flat."""
    kind = rng.choice(["noise", "stripes", "checker", "bricks"])
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "noise":
        tex = _two_tone(_value_noise(rng, size), rng)
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(8, 48)
        phase = (x * math.cos(angle) + y * math.sin(angle)) * (2 * np.pi / period)
        mask = np.clip(np.sin(phase) * rng.uniform(1, 4), -1, 1) * 0.5 + 0.5
        mask = np.clip(mask + 0.3 * (_value_noise(rng, size, 4) - 0.5), 0, 1)
        tex = _two_tone(mask, rng)
    elif kind == "checker":
        angle = rng.uniform(0, np.pi / 2)
        cell = rng.uniform(12, 64)
        xr = x * math.cos(angle) + y * math.sin(angle)
        yr = -x * math.sin(angle) + y * math.cos(angle)
        mask = ((np.floor(xr / cell) + np.floor(yr / cell)) % 2).astype(np.float32)
        tex = _two_tone(cv2.GaussianBlur(mask, (0, 0), 0.8), rng)
    else:
        brick_w, brick_h = rng.uniform(32, 96), rng.uniform(14, 36)
        mortar = rng.uniform(2, 5)
        row = np.floor(y / brick_h)
        xs = x + (row % 2) * brick_w / 2
        col = np.floor(xs / brick_w)
        in_mortar = ((y % brick_h) < mortar) | ((xs % brick_w) < mortar)
        brick_color, mortar_color = _random_color(rng), _random_color(rng)
        jitter = rng.uniform(0.75, 1.25, size=(int(size / brick_h) + 2, int(size / brick_w) + 3))
        shade = jitter[row.astype(int), col.astype(int)].astype(np.float32)
        tex = np.where(in_mortar[..., None], mortar_color, brick_color * shade[..., None])
    grain = _value_noise(rng, size, octaves=3, persistence=0.8)
    grain = cv2.resize(rng.random((size // 2, size // 2), dtype=np.float32), (size, size)) * 0.5 + grain * 0.5
    tex = tex * (0.8 + 0.4 * grain[..., None])
    return np.clip(tex, 0, 255).astype(np.uint8)


def _photo_texture(rng: np.random.Generator, size: int, name: str) -> np.ndarray:
    """A random square crop of a bundled photograph; grey photographs get a random colour tint."""
    photo = _photo(name)
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.6, 1.0))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = photo[y0 : y0 + side, x0 : x0 + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    tex = cv2.resize(crop, (size, size), interpolation=interpolation).astype(np.float32)
    if rng.random() < 0.5:
        tex = np.ascontiguousarray(np.rot90(tex, int(rng.integers(1, 4))))
    is_gray = np.abs(tex[..., 0] - tex[..., 2]).mean() < 2
    if is_gray:
        tint = _random_color(rng) / 255.0
        tex = tex * (0.5 + 0.5 * tint / max(tint.max(), 1e-3))
    if rng.random() < 0.3:  # modulate by noise: stains, weathering
        tex = tex * (0.6 + 0.4 * _value_noise(rng, size, 4)[..., None])
    return np.clip(tex, 0, 255).astype(np.uint8)


def mip_pyramid(texture: np.ndarray, min_size: int = 8) -> tuple[np.ndarray, ...]:
    """Box-filtered mip pyramid of a square power-of-two uint8 texture (each level exactly half)."""
    levels = [np.ascontiguousarray(texture)]
    while levels[-1].shape[0] // 2 >= min_size:
        s = levels[-1].shape[0] // 2
        levels.append(cv2.resize(levels[-1], (s, s), interpolation=cv2.INTER_AREA))
    return tuple(levels)


def _ensure_contrast(texture: np.ndarray, min_std: float = 28.0) -> np.ndarray:
    """Stretch a low-contrast texture about its mean so every surface has something to match."""
    std = float(texture.std())
    if std >= min_std:
        return texture
    mean = texture.mean(axis=(0, 1), keepdims=True)
    gain = min_std / max(std, 1.0)
    return np.clip(mean + (texture.astype(np.float32) - mean) * gain, 0, 255).astype(np.uint8)


def _texture_pool(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """``count`` textures, ~60 % photographs (when scikit-image's are present) and the rest procedural."""
    photos = available_photos()
    pool = []
    for _ in range(count):
        if photos and rng.random() < 0.6:
            tex = _photo_texture(rng, TEXTURE_SIZE, photos[int(rng.integers(len(photos)))])
        else:
            tex = _procedural_texture(rng, TEXTURE_SIZE)
        pool.append(_ensure_contrast(tex))
    return pool
