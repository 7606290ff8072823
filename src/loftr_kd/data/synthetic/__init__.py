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

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

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
from loftr_kd.data.synthetic.scenes import (
    DEPTH_NUM,
    MAX_SOURCE_VIEWS,
    build_scene,
    covisibility,
    depth_range,
    pair_table,
    sample_views,
)
from loftr_kd.data.synthetic.textures import (
    _PHOTOS as _PHOTOS,  # the photos' names (tests keep held-out ones out)
)
from loftr_kd.data.synthetic.textures import TEXTURE_SIZE, available_photos, mip_pyramid
from loftr_kd.data.synthetic.world import NEAR, Lighting, Rect, Scene, look_at, render_depth, render_view
from loftr_kd.files import describe_entries, temporary_folder, write_text
from loftr_kd.images import MIN_TRAINING_SIDE

GENERATOR_VERSION = "1"
SCENE_PREFIX = "synth_"
INFO_FILE = "synthetic_info.json"
PROGRESS_FILE = "synthetic_in_progress.json"

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
    tmp = temporary_folder(out_dir, prefix=f".{name}.tmp-")
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
    if int(seed) < 0:  # numpy's generators refuse it only after the folder is made
        raise ValueError(f"seed must be >= 0, got {seed}")
    if views < 2:
        raise ValueError(f"views must be >= 2 (pairs need two views), got {views}")
    if min(height, width) < MIN_TRAINING_SIDE:  # every reader of the set refuses a smaller image
        raise ValueError(
            f"image size must be at least {MIN_TRAINING_SIDE}x{MIN_TRAINING_SIDE} (the shorter side training "
            f"needs), got {height}x{width}"
        )
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
            else f"holds {describe_entries(sorted(p.name for p in out.iterdir()))}"
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
    "DEPTH_NUM",
    "GENERATOR_VERSION",
    "MAX_SOURCE_VIEWS",
    "NEAR",
    "TEXTURE_SIZE",
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
