"""The synthetic worlds' description (analytic textured rectangles, lighting, cameras that look at
the content) and their exact ray casting: depth and shaded, textured views."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

NEAR = 0.05  # metres; surfaces closer than this to a camera are ignored

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
