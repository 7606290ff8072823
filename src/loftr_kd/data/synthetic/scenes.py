"""Scene and camera sampling of the synthetic scenes (scene ``i`` depends only on ``(seed, i)``), the
co-visibility of two views and each view's best source views (``pair.txt``), and depth ranges."""

from __future__ import annotations

import math

import numpy as np
import torch

from loftr_kd.data.synthetic.textures import TEXTURE_SIZE, _texture_pool, mip_pyramid
from loftr_kd.data.synthetic.world import (
    NEAR,
    Lighting,
    Rect,
    Scene,
    _unit,
    look_at,
)
from loftr_kd.geometry import depth_at_nearest_pixel, relative_pose, reproject_points

DEPTH_NUM = 128
MAX_SOURCE_VIEWS = 10
_MIN_PAIR_SCORE = 0.02
_MIN_CLEARANCE = 1.0  # metres between a camera and the nearest surface

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
