"""Embedded default data set: synthetic scenes written in the exact BlendedMVS layout.

Each scene is a small world of analytic rectangles — a bounded ground plane, a skyline of wall segments,
textured boxes and free-standing slanted panels — seen by several pinhole cameras that move around the
content with real baseline, yaw/pitch change and some roll. Every pixel is ray cast (numpy, vectorised)
against the rectangles, so depth and poses are exact, and occlusion and parallax are real. Surfaces carry
textures cut from the photographs bundled with scikit-image mixed with procedural textures (noise,
stripes, checkers, bricks), sampled bilinearly from a mip pyramid so that they do not alias. Every view
gets its own lighting (light direction, gain, gamma, tint, vignetting, sensor noise).

World frame: z up, the ground is ``z = 0``, the content sits around the origin and the cameras look at
it from ``-y``. Cameras follow OpenCV (x right, y down, z forward), pixel centres at integer coordinates,
``extrinsic`` maps world to camera and ``depth`` is the camera z of the first surface hit (0 = sky).

Output, per scene ``<out>/synth_000`` …::

    blended_images/%08d.jpg        768x576 BGR JPEG (quality 95)
    cams/%08d_cam.txt              extrinsic, K, depth_min depth_interval depth_num depth_max
    cams/pair.txt                  per view its best source views by co-visible fraction
    rendered_depth_maps/%08d.pfm   float32 z-depth

plus ``training_list.txt``, ``validation_list.txt``, ``all_list.txt`` and ``synthetic_info.json``.
Every scene is written into a hidden temporary folder and renamed into place when complete.
Scene ``i`` depends only on ``(seed, i)``: the same seed gives byte-identical files.

The generator never deletes or rewrites a file it did not write in this very run. It writes only into a
new or empty folder, marked by ``synthetic_in_progress.json`` (its settings) until ``synthetic_info.json``
is written last. A folder left with that marker by an interrupted run is resumed with the same settings:
the scenes already there are kept, the missing ones added. Anything else in the folder is an error
(:class:`GenerationRefused`) that names what is there.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from loftr_kd.data.blendedmvs_io import (
    Camera,
    cam_path,
    depth_path,
    image_path,
    pair_path,
    write_cam,
    write_image,
    write_pair_file,
    write_pfm,
)
from loftr_kd.files import write_text
from loftr_kd.geometry import depth_at_nearest_pixel, relative_pose, reproject_points

GENERATOR_VERSION = "1"
SCENE_PREFIX = "synth_"
INFO_FILE = "synthetic_info.json"
PROGRESS_FILE = "synthetic_in_progress.json"
TEXTURE_SIZE = 512  # power of two: every mip level halves exactly
NEAR = 0.05  # metres; surfaces closer than this to a camera are ignored
DEPTH_NUM = 128
MAX_SOURCE_VIEWS = 10
_MIN_PAIR_SCORE = 0.02
_MIN_CLEARANCE = 1.0  # metres between a camera and the nearest surface

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
# Scene description
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rect:
    """A textured rectangle ``origin + u * axis_u + v * axis_v``, ``u in [0, size_u]``, ``v in [0, size_v]``.

    Attributes:
        origin: (3,) world corner.
        axis_u, axis_v: (3,) orthonormal world directions of the edges.
        size_u, size_v: edge lengths (world units).
        texture: index into :attr:`Scene.textures`.
        texel: world units per level-0 texel.
        offset: texture offset (texels) at the origin.
        one_sided: visible only from the side of ``normal = axis_u x axis_v`` (faces of closed boxes).
    """

    origin: np.ndarray
    axis_u: np.ndarray
    axis_v: np.ndarray
    size_u: float
    size_v: float
    texture: int = 0
    texel: float = 0.01
    offset: tuple[float, float] = (0.0, 0.0)
    one_sided: bool = False

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.axis_u, self.axis_v)

    def corners(self) -> np.ndarray:
        """(4, 3) world corners in order around the rectangle."""
        u, v = self.axis_u * self.size_u, self.axis_v * self.size_v
        return np.stack([self.origin, self.origin + u, self.origin + u + v, self.origin + v])


@dataclass(frozen=True)
class Scene:
    """Geometry, textures (mip pyramids of uint8 BGR) and base lighting of one synthetic scene."""

    rects: tuple[Rect, ...]
    textures: tuple[tuple[np.ndarray, ...], ...]
    light_dir: np.ndarray  # (3,) unit vector towards the light (world)
    sky_horizon: np.ndarray  # (3,) BGR 0..255
    sky_zenith: np.ndarray  # (3,) BGR 0..255
    target: np.ndarray  # (3,) point the cameras look at


@dataclass(frozen=True)
class Lighting:
    """Per-view photometric settings."""

    light_dir: np.ndarray
    ambient: float = 0.5
    gain: float = 1.0
    gamma: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    vignetting: float = 0.0
    blur_sigma: float = 0.6
    noise_sigma: float = 2.0


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def look_at(center, target, roll: float = 0.0) -> np.ndarray:
    """(4, 4) world→camera extrinsic (OpenCV axes, world z up) of a camera at ``center`` looking at ``target``."""
    center = np.asarray(center, dtype=np.float64)
    forward = _unit(np.asarray(target, dtype=np.float64) - center)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: viewing direction is vertical, roll is undefined")
    right = _unit(right)
    down = np.cross(forward, right)
    cr, sr = math.cos(roll), math.sin(roll)
    right, down = cr * right + sr * down, -sr * right + cr * down
    rotation = np.stack([right, down, forward])
    extrinsic = np.eye(4)
    extrinsic[:3, :3] = rotation
    extrinsic[:3, 3] = -rotation @ center
    return extrinsic


# --------------------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------------------


def _pixel_rays(intrinsic: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame ray components ``x~ (W,)`` and ``y~ (H,)`` with ray = (x~, y~, 1) (zero-skew K)."""
    K = np.asarray(intrinsic, dtype=np.float64)
    if K.shape != (3, 3) or K[0, 1] != 0 or K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
        raise ValueError(f"intrinsic must be a zero-skew pinhole K [[fx,0,cx],[0,fy,cy],[0,0,1]], got {K}")
    xs = (np.arange(width, dtype=np.float64) - K[0, 2]) / K[0, 0]
    ys = (np.arange(height, dtype=np.float64) - K[1, 2]) / K[1, 1]
    return xs, ys


def _screen_bbox(
    corners_cam: np.ndarray, intrinsic: np.ndarray, height: int, width: int
) -> tuple[int, int, int, int] | None:
    """Pixel bounding box ``(x0, y0, x1, y1)`` (exclusive ends) of a convex polygon clipped to ``z >= NEAR``."""
    points = []
    n = len(corners_cam)
    for i in range(n):
        a, b = corners_cam[i], corners_cam[(i + 1) % n]
        if a[2] >= NEAR:
            points.append(a)
        if (a[2] >= NEAR) != (b[2] >= NEAR):
            s = (NEAR - a[2]) / (b[2] - a[2])
            points.append(a + s * (b - a))
    if not points:
        return None
    p = np.asarray(points)
    uv = (intrinsic[:2, :2] @ (p[:, :2] / p[:, 2:]).T).T + intrinsic[:2, 2]
    x0 = max(int(math.floor(uv[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(uv[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(uv[:, 0].max())) + 2, width)
    y1 = min(int(math.ceil(uv[:, 1].max())) + 2, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


@dataclass(frozen=True)
class _CamRect:
    """A rectangle in camera coordinates plus its screen box."""

    index: int
    normal: np.ndarray
    plane_c: float  # normal . X = plane_c for points X of the plane (camera frame)
    axis_u: np.ndarray
    axis_v: np.ndarray
    origin_u: float  # axis_u . origin (camera frame)
    origin_v: float
    bbox: tuple[int, int, int, int]


def render_depth(
    scene_rects: Sequence[Rect], intrinsic: np.ndarray, extrinsic: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, list[_CamRect]]:
    """Ray cast every pixel centre against the rectangles.

    Args:
        scene_rects: the scene's rectangles.
        intrinsic: (3, 3) zero-skew K.
        extrinsic: (4, 4) world→camera.
        height, width: image size.

    Returns:
        depth (H, W) float64 camera z of the nearest hit (0 where nothing is hit), surface index (H, W)
        int32 (-1 = none), and the rectangles that were tested, in camera coordinates.
    """
    K = np.asarray(intrinsic, dtype=np.float64)
    E = np.asarray(extrinsic, dtype=np.float64)
    R, t = E[:3, :3], E[:3, 3]
    xs, ys = _pixel_rays(K, height, width)
    depth = np.full((height, width), np.inf)
    ids = np.full((height, width), -1, dtype=np.int32)
    tested: list[_CamRect] = []
    for k, rect in enumerate(scene_rects):
        normal = R @ rect.normal
        origin = R @ rect.origin + t
        plane_c = float(normal @ origin)
        # The camera centre is the origin of its frame: it sees the front side iff normal . (0 - origin) > 0.
        if rect.one_sided and plane_c >= 0:
            continue
        bbox = _screen_bbox((R @ rect.corners().T).T + t, K, height, width)
        if bbox is None:
            continue
        axis_u, axis_v = R @ rect.axis_u, R @ rect.axis_v
        x0, y0, x1, y1 = bbox
        rx, ry = xs[None, x0:x1], ys[y0:y1, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            z = plane_c / (normal[0] * rx + normal[1] * ry + normal[2])
            u = z * (axis_u[0] * rx + axis_u[1] * ry + axis_u[2]) - axis_u @ origin
            v = z * (axis_v[0] * rx + axis_v[1] * ry + axis_v[2]) - axis_v @ origin
            zbuf = depth[y0:y1, x0:x1]
            hit = (z > NEAR) & (z < zbuf) & (u >= 0) & (u <= rect.size_u) & (v >= 0) & (v <= rect.size_v)
        if not hit.any():
            continue
        zbuf[hit] = z[hit]
        ids[y0:y1, x0:x1][hit] = k
        tested.append(_CamRect(k, normal, plane_c, axis_u, axis_v, axis_u @ origin, axis_v @ origin, bbox))
    depth[ids < 0] = 0.0
    return depth, ids, tested


def _sample_texture(pyramid: Sequence[np.ndarray], s: np.ndarray, r: np.ndarray, level: int) -> np.ndarray:
    """Bilinear sample at level-0 texel coordinates ``(s, r)`` (edge-based), mirror-tiled; (N, 3) float32."""
    tex = pyramid[level]
    size = tex.shape[0]
    scale = 2.0**-level
    n = len(s)
    cols = min(n, 1024)  # remap maps are limited to 32767 rows/cols: lay the samples out in rows
    rows = -(-n // cols)
    coords = []
    for c in (s, r):
        folded = np.zeros(rows * cols, dtype=np.float32)
        folded[:n] = np.mod(c * np.float32(scale), np.float32(2 * size))
        folded[:n] = np.float32(size - 0.5) - np.abs(np.float32(size) - folded[:n])
        coords.append(folded.reshape(rows, cols))
    out = cv2.remap(tex, coords[0], coords[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out.reshape(-1, 3)[:n].astype(np.float32)


def render_view(
    scene: Scene,
    intrinsic: np.ndarray,
    extrinsic: np.ndarray,
    height: int,
    width: int,
    lighting: Lighting,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one view.

    Args:
        scene: the scene.
        intrinsic: (3, 3) zero-skew K.
        extrinsic: (4, 4) world→camera.
        height, width: image size.
        lighting: photometric settings of this view.
        rng: source of sensor noise.

    Returns:
        image (H, W, 3) uint8 BGR and depth (H, W) float32 (0 = sky).
    """
    K = np.asarray(intrinsic, dtype=np.float64)
    R = np.asarray(extrinsic, dtype=np.float64)[:3, :3]
    depth, ids, tested = render_depth(scene.rects, K, extrinsic, height, width)
    xs, ys = _pixel_rays(K, height, width)
    image = np.empty((height, width, 3), dtype=np.float32)
    focal = math.sqrt(K[0, 0] * K[1, 1])
    light = R @ _unit(lighting.light_dir)
    xs32, ys32 = xs.astype(np.float32), ys.astype(np.float32)
    depth32 = depth.astype(np.float32).reshape(-1)
    flat_image = image.reshape(-1, 3)
    for cam_rect in tested:
        rect = scene.rects[cam_rect.index]
        x0, y0, x1, y1 = cam_rect.bbox
        py, px = np.nonzero(ids[y0:y1, x0:x1] == cam_rect.index)
        if len(py) == 0:
            continue
        py += y0
        px += x0
        flat = py * width + px
        # float32 is ample here: texture coordinates stay below ~1e4 texels (error < 1e-3 texel).
        rx, ry, z = xs32[px], ys32[py], depth32[flat]
        au, av, n = (a.astype(np.float32) for a in (cam_rect.axis_u, cam_rect.axis_v, cam_rect.normal))
        inv_texel = np.float32(1.0 / rect.texel)
        s = (z * (au[0] * rx + au[1] * ry + au[2])) * inv_texel + np.float32(
            rect.offset[0] - cam_rect.origin_u / rect.texel
        )
        r = (z * (av[0] * rx + av[1] * ry + av[2])) * inv_texel + np.float32(
            rect.offset[1] - cam_rect.origin_v / rect.texel
        )
        # Mip level from the pixel footprint in texels: z |ray| / (f texel), widened by 1/sqrt(cos) at
        # oblique incidence (geometric mean of the two footprint axes).
        ray2 = rx * rx + ry * ry + 1.0
        cos = np.abs(n[0] * rx + n[1] * ry + n[2]) / np.sqrt(ray2)
        footprint2 = (z * z) * ray2 * np.float32((inv_texel / focal) ** 2) / np.maximum(cos, 0.02)
        pyramid = scene.textures[rect.texture]
        level = np.clip(0.5 * np.log2(np.maximum(footprint2, 1e-12)), 0.0, len(pyramid) - 1.0)
        base = level.astype(np.int32)  # floor, level >= 0
        color = np.empty((len(py), 3), dtype=np.float32)
        for lv in range(int(base.min()), int(base.max()) + 1):
            sel = np.flatnonzero(base == lv)
            if len(sel) == 0:
                continue
            ss, rr = s[sel], r[sel]
            lo = _sample_texture(pyramid, ss, rr, lv)
            if lv + 1 < len(pyramid):
                w = (level[sel] - np.float32(lv))[:, None]
                lo += (_sample_texture(pyramid, ss, rr, lv + 1) - lo) * w
            color[sel] = lo
        # Lambert term with the normal that faces the camera (camera at the origin of its frame).
        facing = cam_rect.normal if cam_rect.plane_c < 0 else -cam_rect.normal
        shade = lighting.ambient + (1.0 - lighting.ambient) * max(float(facing @ light), 0.0)
        color *= np.float32(shade)
        flat_image[flat] = color
    sky = ids < 0
    if sky.any():
        py, px = np.nonzero(sky)
        rays = np.stack([xs[px], ys[py], np.ones(len(px))], axis=1) @ R  # world directions (R^T ray)
        elevation = np.clip(rays[:, 2] / np.linalg.norm(rays, axis=1), 0.0, 1.0) ** 0.5
        image[py, px] = (
            scene.sky_horizon[None] * (1.0 - elevation[:, None]) + scene.sky_zenith[None] * elevation[:, None]
        ).astype(np.float32)
    # Camera response: gamma, then tint x gain x vignetting in one product, optics blur, sensor noise.
    cv2.multiply(image, 1.0 / 255.0, dst=image)
    np.clip(image, 0.0, 1.0, out=image)
    image = cv2.pow(image, lighting.gamma)
    gy = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / (height / 2)
    gx = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / (width / 2)
    falloff = 1.0 - np.float32(lighting.vignetting / 2.0) * (gx[None, :] ** 2 + gy[:, None] ** 2)
    channel = np.asarray(lighting.tint, dtype=np.float32) * np.float32(255.0 * lighting.gain)
    image *= falloff[..., None] * channel
    if lighting.blur_sigma > 0:
        image = cv2.GaussianBlur(image, (0, 0), lighting.blur_sigma)
    if lighting.noise_sigma > 0:  # luminance noise (one draw per pixel keeps this cheap)
        noise = rng.standard_normal((height, width, 1), dtype=np.float32)
        image += noise * np.float32(lighting.noise_sigma)
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return image, depth.astype(np.float32)


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


# --------------------------------------------------------------------------------------------------
# Scene and camera sampling
# --------------------------------------------------------------------------------------------------


def _box_faces(center_xy, size, yaw: float, base_z: float, texture_of, texel_of) -> list[Rect]:
    """The five visible faces (no bottom) of a box standing on ``z = base_z``, outward normals, one-sided."""
    sx, sy, sz = size
    c, s = math.cos(yaw), math.sin(yaw)
    ex = np.array([c, s, 0.0])
    ey = np.array([-s, c, 0.0])
    ez = np.array([0.0, 0.0, 1.0])
    corner = np.array([center_xy[0], center_xy[1], base_z]) - ex * sx / 2 - ey * sy / 2
    faces = [  # (origin, axis_u, axis_v, size_u, size_v); orientation made outward below
        (corner + ez * sz, ex, ey, sx, sy),  # top
        (corner, ez, ex, sz, sx),  # -y_box side
        (corner + ey * sy, ex, ez, sx, sz),  # +y_box side
        (corner, ey, ez, sy, sz),  # -x_box side
        (corner + ex * sx, ez, ey, sz, sy),  # +x_box side
    ]
    rects = []
    box_center = corner + ex * sx / 2 + ey * sy / 2 + ez * sz / 2
    for origin, au, av, su, sv in faces:
        if np.cross(au, av) @ (origin + au * su / 2 + av * sv / 2 - box_center) < 0:
            au, av, su, sv = av, au, sv, su
        rects.append(Rect(origin, au, av, su, sv, texture_of(), texel_of(), (0.0, 0.0), True))
    return rects


def _distance_to_rect(point: np.ndarray, rect: Rect) -> float:
    """Euclidean distance from a point to a rectangle."""
    rel = point - rect.origin
    u = min(max(float(rel @ rect.axis_u), 0.0), rect.size_u)
    v = min(max(float(rel @ rect.axis_v), 0.0), rect.size_v)
    return float(np.linalg.norm(rel - u * rect.axis_u - v * rect.axis_v))


def build_scene(seed: int, index: int) -> Scene:
    """The scene ``index`` of the data set generated from ``seed`` (depends on nothing else)."""
    rng = np.random.default_rng([int(seed), int(index), 0])
    textures = _texture_pool(rng, int(rng.integers(8, 13)))
    pyramids = tuple(mip_pyramid(t) for t in textures)

    def texture_of() -> int:
        return int(rng.integers(len(textures)))

    def texel_of() -> float:
        return float(rng.uniform(0.004, 0.012))

    def offset() -> tuple[float, float]:
        return (float(rng.uniform(0, 2 * TEXTURE_SIZE)), float(rng.uniform(0, 2 * TEXTURE_SIZE)))

    ex, ey, ez = np.eye(3)
    rects: list[Rect] = []
    back_y = float(rng.uniform(5.0, 9.0))
    extent = 25.0
    # Ground, one-sided (seen from above), bounded at the sides (beyond is sky); it runs on under the
    # skyline walls so that no gap opens at their foot.
    ground_texel = float(rng.uniform(0.006, 0.015))
    rects.append(
        Rect(np.array([-extent, -extent, 0.0]), ex, ey, 2 * extent, extent + back_y + 4.0, texture_of(),
             ground_texel, offset(), True)
    )  # fmt: skip
    # Skyline: wall segments of different heights and depths behind the content, facing -y.
    x = -extent
    while x < extent:
        seg_w = float(rng.uniform(3.0, 9.0))
        seg_y = back_y + float(rng.uniform(0.0, 3.0))
        seg_h = float(rng.uniform(2.0, 7.0))
        # axis_u = +x, axis_v = +z: normal = x × z = -y (towards the cameras).
        rects.append(
            Rect(np.array([x, seg_y, 0.0]), ex, ez, seg_w, seg_h, texture_of(), texel_of(), offset(), True)
        )
        x += seg_w
    # Side walls facing the content, from y = -1 (in front of every camera) to the skyline.
    for side in (-1.0, 1.0):
        if rng.random() < 0.5:
            wall_x = side * float(rng.uniform(6.5, 10.0))
            height = float(rng.uniform(1.5, 4.5))
            axis_u = -ey if side > 0 else ey  # normal = axis_u x z = -side * x, towards the content
            origin = np.array([wall_x, back_y if side > 0 else -1.0, 0.0])
            rects.append(
                Rect(origin, axis_u, ez, back_y + 1.0, height, texture_of(), texel_of(), offset(), True)
            )
    # Boxes on the ground, some stacked.
    for _ in range(int(rng.integers(3, 7))):
        center = (float(rng.uniform(-3.0, 3.0)), float(rng.uniform(-2.0, 3.0)))
        size = (float(rng.uniform(0.4, 1.8)), float(rng.uniform(0.4, 1.8)), float(rng.uniform(0.3, 2.0)))
        yaw = float(rng.uniform(0, np.pi))
        rects += _box_faces(center, size, yaw, 0.0, texture_of, texel_of)
        if rng.random() < 0.3:
            top = (
                size[0] * rng.uniform(0.4, 0.8),
                size[1] * rng.uniform(0.4, 0.8),
                size[2] * rng.uniform(0.3, 0.8),
            )
            rects += _box_faces(
                center, top, yaw + float(rng.uniform(-0.6, 0.6)), size[2], texture_of, texel_of
            )
    # Slanted free-standing panels (two-sided), partly sunk into the ground.
    for _ in range(int(rng.integers(1, 4))):
        yaw = float(rng.uniform(0, np.pi))
        tilt = float(rng.uniform(-0.9, 0.9))
        axis_u = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        up = np.array([0.0, 0.0, 1.0])
        side = np.cross(up, axis_u)
        axis_v = math.cos(tilt) * up + math.sin(tilt) * side
        size_u, size_v = float(rng.uniform(0.8, 2.5)), float(rng.uniform(0.8, 2.2))
        base = np.array([rng.uniform(-3.0, 3.0), rng.uniform(-2.0, 3.5), rng.uniform(-0.3, 0.8)])
        origin = base - axis_u * size_u / 2
        rects.append(Rect(origin, axis_u, axis_v, size_u, size_v, texture_of(), texel_of(), offset(), False))
    light = _unit([rng.uniform(-1, 1), rng.uniform(-1, 0.5), rng.uniform(0.6, 2.0)])
    zenith = np.array([rng.uniform(200, 250), rng.uniform(140, 190), rng.uniform(90, 140)])  # BGR blue
    horizon = np.array([rng.uniform(220, 255), rng.uniform(215, 245), rng.uniform(200, 235)])
    target = np.array([rng.uniform(-0.5, 0.5), rng.uniform(0.0, 1.0), rng.uniform(0.4, 1.0)])
    return Scene(tuple(rects), pyramids, light, horizon, zenith, target)


def sample_views(
    scene: Scene, seed: int, index: int, views: int, height: int, width: int
) -> list[tuple[np.ndarray, np.ndarray, Lighting]]:
    """``views`` cameras ``(K, extrinsic, lighting)`` around the content of scene ``index``."""
    rng = np.random.default_rng([int(seed), int(index), 1])
    focal = width * float(rng.uniform(0.8, 1.2))
    spread = math.radians(float(rng.uniform(20.0, 40.0)))
    out = []
    for _ in range(views):
        # Random azimuths: view ids are not in walking order, like BlendedMVS. Keep away from surfaces
        # so that no view is filled by one panel seen from a few centimetres.
        for _attempt in range(20):
            azimuth = float(rng.uniform(-spread, spread))
            distance = float(rng.uniform(5.5, 9.0))
            target = scene.target + rng.normal(0.0, [0.4, 0.4, 0.2])
            center = target + distance * np.array([math.sin(azimuth), -math.cos(azimuth), 0.0])
            center[2] = float(rng.uniform(0.9, 3.5))
            if min(_distance_to_rect(center, r) for r in scene.rects) > _MIN_CLEARANCE:
                break
        roll = math.radians(float(np.clip(rng.normal(0.0, 5.0), -12.0, 12.0)))
        extrinsic = look_at(center, target, roll)
        f = focal * float(rng.uniform(0.95, 1.05))
        cx = (width - 1) / 2 + float(rng.normal(0.0, 0.01 * width))
        cy = (height - 1) / 2 + float(rng.normal(0.0, 0.01 * height))
        K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
        light = scene.light_dir + rng.normal(0.0, 0.25, size=3)
        light[2] = abs(light[2]) + 0.2
        lighting = Lighting(
            light_dir=_unit(light),
            ambient=float(rng.uniform(0.35, 0.65)),
            gain=float(rng.uniform(0.8, 1.2)),
            gamma=float(rng.uniform(0.8, 1.25)),
            tint=tuple(float(v) for v in rng.uniform(0.92, 1.08, size=3)),
            vignetting=float(rng.uniform(0.0, 0.3)),
            blur_sigma=float(rng.uniform(0.45, 0.8)),
            noise_sigma=float(rng.uniform(0.5, 3.0)),
        )
        out.append((K, extrinsic, lighting))
    return out


# --------------------------------------------------------------------------------------------------
# Pairs and depth range
# --------------------------------------------------------------------------------------------------


def covisibility(
    depth0: np.ndarray,
    K0: np.ndarray,
    E0: np.ndarray,
    depth1: np.ndarray,
    K1: np.ndarray,
    E1: np.ndarray,
    step: int = 8,
    tolerance: float = 0.01,
) -> float:
    """Fraction of the valid pixels of view 0 (on a ``step`` grid) that view 1 sees at the same depth.

    A pixel is seen when it reprojects (:func:`loftr_kd.geometry.reproject_points`) in front of camera 1,
    inside view 1, and within ``tolerance`` (relative) of the depth at its nearest pixel there.
    """
    h0, w0 = depth0.shape
    v, u = np.mgrid[step // 2 : h0 : step, step // 2 : w0 : step]
    z = depth0[v, u].astype(np.float64)
    valid = z > 0
    if not valid.any():
        return 0.0
    pixels = np.stack([u[valid], v[valid]], -1)  # (N, 2)
    T_0to1 = relative_pose(E0, E1)
    points1, z1 = reproject_points(*(_one_batch(a) for a in (pixels, z[valid], K0, K1, T_0to1)))
    d1, inside = depth_at_nearest_pixel(torch.from_numpy(np.ascontiguousarray(depth1))[None], points1)
    seen = inside & (z1 > NEAR) & ((d1 - z1).abs() <= tolerance * z1)
    return int(seen.sum()) / int(valid.sum())


def _one_batch(array: np.ndarray) -> torch.Tensor:
    """``array`` as a float64 tensor with a batch axis of one in front."""
    return torch.from_numpy(np.asarray(array, np.float64))[None]


def pair_table(
    depths, intrinsics, extrinsics, max_sources: int = MAX_SOURCE_VIEWS
) -> dict[int, list[tuple[int, float]]]:
    """For every view its best source views by co-visible fraction (score > 0.02), best first."""
    n = len(depths)
    table = {}
    for i in range(n):
        scores = []
        for j in range(n):
            if j == i:
                continue
            score = covisibility(
                depths[i], intrinsics[i], extrinsics[i], depths[j], intrinsics[j], extrinsics[j]
            )
            if score > _MIN_PAIR_SCORE:
                scores.append((j, round(score, 4)))
        scores.sort(key=lambda js: (-js[1], js[0]))
        table[i] = scores[:max_sources]
    return table


def depth_range(depth: np.ndarray, num: int = DEPTH_NUM) -> tuple[float, float, int, float]:
    """``(depth_min, depth_interval, depth_num, depth_max)`` covering the valid depth with a 5 % margin."""
    valid = depth[depth > 0]
    if valid.size == 0:
        return 0.0, 0.0, num, 0.0
    lo, hi = float(valid.min()) * 0.95, float(valid.max()) * 1.05
    return lo, (hi - lo) / (num - 1), num, hi


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def scene_name(index: int) -> str:
    return f"{SCENE_PREFIX}{index:03d}"


def write_scene(
    out_dir: str | os.PathLike, seed: int, index: int, views: int, height: int, width: int
) -> str:
    """Render scene ``index`` and write it atomically to ``<out_dir>/synth_XXX``; returns the scene name."""
    out_dir = Path(out_dir)
    name = scene_name(index)
    final = out_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    # A fresh, unique temporary folder: nothing of an earlier run is ever removed or reused.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_dir))
    try:
        scene = build_scene(seed, index)
        cameras = sample_views(scene, seed, index, views, height, width)
        noise_rng = np.random.default_rng([int(seed), int(index), 2])
        depths = []
        for view_id, (K, extrinsic, lighting) in enumerate(cameras):
            image, depth = render_view(scene, K, extrinsic, height, width, lighting, noise_rng)
            depths.append(depth)
            lo, interval, num, hi = depth_range(depth)
            write_image(image_path(tmp, view_id), image, jpeg_quality=95)
            write_pfm(depth_path(tmp, view_id), depth)
            write_cam(cam_path(tmp, view_id), Camera(extrinsic, K, lo, interval, num, hi))
        table = pair_table(depths, [c[0] for c in cameras], [c[1] for c in cameras])
        write_pair_file(pair_path(tmp), table)
        if final.exists():
            raise GenerationRefused(f"{final}: already exists; the generator never replaces a scene")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return name


def generated_scene_lists(names: Sequence[str], val_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """The training_list.txt / validation_list.txt the generator writes: the last ~20 % of the scenes (at
    least one) validate; a single scene serves both. Readers use ``blendedmvs.split_scenes``."""
    names = list(names)
    if len(names) == 1:
        return names, names
    n_val = min(max(1, round(val_fraction * len(names))), len(names) - 1)
    return names[:-n_val], names[-n_val:]


class GenerationRefused(ValueError):
    """The output folder holds something the generator did not write; the message names it."""


def _is_own_temporary(path: Path) -> bool:
    return path.name.startswith(f".{SCENE_PREFIX}") and ".tmp-" in path.name


def folder_state(out_dir: str | os.PathLike) -> str:
    """What a folder is to the generator, without touching it.

    Returns:
        ``"new"`` (missing), ``"empty"``, ``"complete"`` (``synthetic_info.json``: a finished set),
        ``"in_progress"`` (an interrupted generation: only its marker, scenes and temporaries) or
        ``"foreign"`` (anything else).
    """
    out = Path(out_dir)
    if not out.exists():
        return "new"
    if not out.is_dir():
        return "foreign"
    entries = list(out.iterdir())
    if not entries:
        return "empty"
    if (out / INFO_FILE).is_file():
        return "complete"
    if (out / PROGRESS_FILE).is_file() and not unexpected_entries(out):
        return "in_progress"
    return "foreign"


def unexpected_entries(out_dir: str | os.PathLike) -> list[str]:
    """Names in ``out_dir`` that an interrupted generation would not have left there (sorted)."""
    out = Path(out_dir)
    expected = {PROGRESS_FILE}
    return sorted(
        p.name
        for p in out.iterdir()
        if p.name not in expected
        and not _is_own_temporary(p)
        and not (p.is_dir() and p.name.startswith(SCENE_PREFIX) and pair_path(p).is_file())
    )


def _describe(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (f" ... ({len(names)} entries)" if len(names) > 5 else "")


def generate_dataset(
    out_dir: str | os.PathLike,
    scenes: int = 12,
    views: int = 8,
    seed: int = 0,
    height: int = 576,
    width: int = 768,
    workers: int = 1,
    log=None,
) -> list[str]:
    """Generate synthetic scenes in the BlendedMVS layout into a new or empty folder.

    Args:
        out_dir: output root: new, empty, or left by an interrupted generation with the same settings
            (resumed: its scenes are kept, the missing ones written).
        scenes: number of scenes (>= 1).
        views: views per scene (>= 2).
        seed: everything is a deterministic function of the seed (scene ``i`` of ``(seed, i)``).
        height, width: image size (BlendedMVS low-res: 576 x 768).
        workers: processes rendering scenes in parallel (output does not depend on it).
        log: callable taking one line (default ``print``) for the one line saying what is done.

    Returns:
        The scene names, ``synth_000`` ….

    Raises:
        GenerationRefused: (a ``ValueError``) the folder holds a finished set, files the generator did not
            write, or an interrupted generation with other settings. Nothing is touched.
    """
    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    if views < 2:
        raise ValueError(f"views must be >= 2 (pairs need two views), got {views}")
    if height < 16 or width < 16:
        raise ValueError(f"image size must be at least 16x16, got {height}x{width}")
    say = log or print
    out = Path(out_dir)
    settings = {
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "scenes": int(scenes),
        "views": int(views),
        "height": int(height),
        "width": int(width),
    }
    state = folder_state(out)
    if state == "complete":
        raise GenerationRefused(
            f"{out}: already holds a finished synthetic set ({INFO_FILE}); the generator never replaces "
            "files. Train on it as it is, or generate into a new or empty folder."
        )
    if state == "foreign":
        what = (
            "is a file"
            if out.exists() and not out.is_dir()
            else f"holds {_describe(sorted(p.name for p in out.iterdir()))}"
        )
        raise GenerationRefused(
            f"{out}: {what}, which the synthetic generator did not write; it only writes into a new or "
            "empty folder and never deletes or replaces files. Choose a new or empty folder."
        )
    names = [scene_name(i) for i in range(scenes)]
    if state == "in_progress":
        try:
            previous = json.loads((out / PROGRESS_FILE).read_text())
        except (OSError, ValueError) as e:
            raise GenerationRefused(f"{out / PROGRESS_FILE}: unreadable ({e}); choose a new folder") from e
        if previous != settings:
            raise GenerationRefused(
                f"{out}: holds an interrupted generation with other settings ({previous}); resume it with "
                f"those settings, or choose a new or empty folder for {settings}"
            )
        present = [n for n in names if (out / n).is_dir()]
        stale = [p.name for p in out.iterdir() if _is_own_temporary(p)]
        note = f"; {len(stale)} stale temporary folders (.synth_*.tmp-*) are left alone" if stale else ""
        say(
            f"resuming the interrupted generation in {out}: {len(present)} of {scenes} scenes are there "
            f"and kept, writing the other {scenes - len(present)}{note}"
        )
    else:
        say(f"generating {scenes} synthetic scenes x {views} views ({width}x{height}) into {out}")
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / PROGRESS_FILE, json.dumps(settings, indent=2) + "\n")
    todo = [i for i in range(scenes) if not (out / names[i]).is_dir()]
    args = [(out, seed, i, views, height, width) for i in todo]
    start = time.perf_counter()

    def progress(done: int) -> None:
        """One line per scene: generation takes a while and is otherwise silent."""
        say(f"  scene {scenes - len(args) + done}/{scenes} written ({time.perf_counter() - start:.0f} s)")

    if workers > 1 and len(args) > 1:
        # spawn, not fork: a forked OpenCV thread pool (or a parent holding CUDA) can hang the children.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(args)), mp_context=context) as pool:
            for done, _ in enumerate(pool.map(write_scene, *zip(*args)), 1):
                progress(done)
    else:
        for done, a in enumerate(args, 1):
            write_scene(*a)
            progress(done)
    train, val = generated_scene_lists(names)
    write_text(out / "training_list.txt", "".join(f"{n}\n" for n in train))
    write_text(out / "validation_list.txt", "".join(f"{n}\n" for n in val))
    write_text(out / "all_list.txt", "".join(f"{n}\n" for n in names))
    info = {
        "generator": "loftr_kd.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "scenes": names,
        "views": int(views),
        "height": int(height),
        "width": int(width),
        "photos": list(available_photos()),
    }
    write_text(out / INFO_FILE, json.dumps(info, indent=2) + "\n")
    # The marker is this generation's own (written, or taken over, above): the set is finished now.
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    return names


def write_toy_dataset(
    root: str | os.PathLike,
    scenes: int = 2,
    views: int = 4,
    height: int = 576,
    width: int = 768,
    seed: int = 0,
    depth: float = 5.0,
    baseline: float = 0.2,
    focal: float | None = None,
    list_files: bool = True,
) -> list[str]:
    """Write tiny, geometrically exact scenes in the BlendedMVS layout (tests and benchmarks).

    Each scene is a textured fronto-parallel plane at ``depth`` seen by cameras translated along x by
    ``baseline`` (identity rotation), so every depth map is constant and view ``i`` is the texture shifted
    by ``round(f * baseline * i / depth)`` pixels (``f`` rounded so the shift is an integer).
    ``pair.txt`` lists every other view as a source of each view. With ``list_files`` the last scene goes
    to ``validation_list.txt`` and the others to ``training_list.txt``.

    Returns:
        scene names ``toy_000``, ...
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    focal = float(focal) if focal is not None else float(width)
    step = max(1, round(focal * baseline / depth))
    focal = step * depth / baseline  # integer pixel shift per view
    K = np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    names = []
    for s in range(scenes):
        name = f"toy_{s:03d}"
        scene_dir = root / name
        texture = rng.random((height // 8 + 1, (width + step * views) // 8 + 1)).astype(np.float32)
        texture = np.kron(texture, np.ones((8, 8), np.float32))[:height, : width + step * views]
        texture = (texture * 200 + 30).astype(np.uint8)
        table = {}
        for v in range(views):
            # Camera centre at x = v * baseline sees world point X at pixel u = f * (X - v b)/d + cx:
            # the image content moves left by `step` pixels per view.
            image = texture[:, v * step : v * step + width]
            write_image(image_path(scene_dir, v), image)
            extrinsic = np.eye(4)
            extrinsic[0, 3] = -v * baseline
            write_cam(cam_path(scene_dir, v), Camera(extrinsic, K, depth * 0.5, 0.01, 192, depth * 2.0))
            write_pfm(depth_path(scene_dir, v), np.full((height, width), depth, np.float32))
            table[v] = [(u, float(views - abs(u - v))) for u in range(views) if u != v]
        write_pair_file(pair_path(scene_dir), table)
        names.append(name)
    if list_files:
        train, val = (names[:-1], names[-1:]) if len(names) > 1 else (names, [])
        (root / "training_list.txt").write_text("".join(f"{n}\n" for n in train))
        (root / "validation_list.txt").write_text("".join(f"{n}\n" for n in val))
    return names


__all__ = [
    "GENERATOR_VERSION",
    "GenerationRefused",
    "Lighting",
    "Rect",
    "Scene",
    "available_photos",
    "build_scene",
    "covisibility",
    "depth_range",
    "folder_state",
    "generate_dataset",
    "look_at",
    "mip_pyramid",
    "pair_table",
    "render_depth",
    "render_view",
    "sample_views",
    "scene_name",
    "generated_scene_lists",
    "write_scene",
    "write_toy_dataset",
]
