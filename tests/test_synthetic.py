"""Synthetic BlendedMVS-layout scenes: layout, round trip through the real readers, determinism, and
geometry checked against independent truths (analytic planes, a brute-force ray cast, reprojection)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from loftr_kd.cli import synth as synth_cli
from loftr_kd.data import synthetic
from loftr_kd.data.blendedmvs_io import (
    cam_path,
    depth_path,
    image_path,
    pair_path,
    read_cam,
    read_image_gray,
    read_pair_file,
    read_pfm,
)
from loftr_kd.data.synthetic import (
    Lighting,
    Rect,
    Scene,
    generate_dataset,
    mip_pyramid,
    render_depth,
    render_view,
)

H, W = 96, 128
SEED = 7
VIEWS = 3
SCENES = 2

EX, EY, EZ = np.eye(3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    names = generate_dataset(out, scenes=SCENES, views=VIEWS, seed=SEED, height=H, width=W)
    return out, names


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _pinhole(f: float = 100.0) -> np.ndarray:
    return np.array([[f, 0.0, (W - 1) / 2], [0.0, f, (H - 1) / 2], [0.0, 0.0, 1.0]])


def _plain_lighting() -> Lighting:
    return Lighting(light_dir=np.array([0.0, 0.0, -1.0]), ambient=1.0, blur_sigma=0.0, noise_sigma=0.0)


def _scene(rects, texture) -> Scene:
    return Scene(
        rects=tuple(rects),
        textures=(mip_pyramid(texture),),
        light_dir=np.array([0.0, 0.0, 1.0]),
        sky_horizon=np.array([200.0, 200.0, 200.0]),
        sky_zenith=np.array([250.0, 200.0, 150.0]),
        target=np.zeros(3),
    )


def _world_points(depth, cam):
    """Back-project the valid pixels of a depth map to world coordinates (independent of the renderer)."""
    v, u = np.nonzero(depth > 0)
    z = depth[v, u].astype(np.float64)
    rays = np.linalg.inv(cam.intrinsic) @ np.stack([u, v, np.ones_like(u)]).astype(np.float64)
    cam_points = rays * z
    R, t = cam.extrinsic[:3, :3], cam.extrinsic[:3, 3:]
    return (R.T @ (cam_points - t)).T, z, (v, u)


# --------------------------------------------------------------------------------------------------
# Layout and formats
# --------------------------------------------------------------------------------------------------


def test_layout_lists_and_info(dataset):
    out, names = dataset
    assert names == ["synth_000", "synth_001"]
    for name in names:
        for view in range(VIEWS):
            for path in (
                image_path(out / name, view),
                cam_path(out / name, view),
                depth_path(out / name, view),
            ):
                assert path.is_file() and path.stat().st_size > 0, path
        assert pair_path(out / name).is_file()
    assert (out / "training_list.txt").read_text().split() == ["synth_000"]
    assert (out / "validation_list.txt").read_text().split() == ["synth_001"]
    assert (out / "all_list.txt").read_text().split() == names
    info = json.loads((out / "synthetic_info.json").read_text())
    assert info["seed"] == SEED and info["scenes"] == names and info["views"] == VIEWS
    assert info["version"] == synthetic.GENERATOR_VERSION
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_files_read_back_with_the_real_readers(dataset):
    out, names = dataset
    for name in names:
        for view in range(VIEWS):
            gray = read_image_gray(image_path(out / name, view))
            depth = read_pfm(depth_path(out / name, view))
            cam = read_cam(cam_path(out / name, view))
            assert gray.shape == (H, W) and depth.shape == (H, W) and depth.dtype == np.float32
            assert gray.std() > 10, "image looks blank"
            assert (depth > 0).mean() > 0.4, "most of the view should see geometry, not sky"
            assert depth[H // 2, W // 2] > 0, "the camera looks at the content"
            R = cam.extrinsic[:3, :3]
            np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
            assert np.linalg.det(R) == pytest.approx(1.0)
            np.testing.assert_array_equal(cam.extrinsic[3], [0, 0, 0, 1])
            K = cam.intrinsic
            assert abs(K[0, 2] - (W - 1) / 2) < 0.05 * W and abs(K[1, 2] - (H - 1) / 2) < 0.05 * H
            assert K[0, 1] == 0 and K[2, 2] == 1
            valid = depth[depth > 0]
            assert cam.depth_num == synthetic.DEPTH_NUM
            assert 0 < cam.depth_min < valid.min() and valid.max() < cam.depth_max
            assert cam.depth_min + cam.depth_interval * (cam.depth_num - 1) == pytest.approx(cam.depth_max)


def test_cameras_keep_clear_of_surfaces_and_move(dataset):
    out, names = dataset
    for index, name in enumerate(names):
        scene = synthetic.build_scene(SEED, index)
        centers = []
        for view in range(VIEWS):
            cam = read_cam(cam_path(out / name, view))
            center = -cam.extrinsic[:3, :3].T @ cam.extrinsic[:3, 3]
            centers.append(center)
            for rect in scene.rects:  # distance to the rectangle's plane is a lower bound, checked exactly
                rel = center - rect.origin
                u = np.clip(rel @ rect.axis_u, 0, rect.size_u)
                v = np.clip(rel @ rect.axis_v, 0, rect.size_v)
                assert np.linalg.norm(rel - u * rect.axis_u - v * rect.axis_v) > 0.5
        baselines = [np.linalg.norm(a - b) for i, a in enumerate(centers) for b in centers[i + 1 :]]
        assert min(baselines) > 0.05 and max(baselines) > 1.0, "real parallax between views"


def test_pair_file_references_existing_views(dataset):
    out, names = dataset
    for name in names:
        pairs = read_pair_file(pair_path(out / name))
        assert sorted(pairs) == list(range(VIEWS))
        for ref, sources in pairs.items():
            assert 1 <= len(sources) <= 10, "every view overlaps another one"
            ids = [s for s, _ in sources]
            scores = [score for _, score in sources]
            assert ref not in ids and len(set(ids)) == len(ids)
            assert all(0 <= s < VIEWS for s in ids)
            assert all(0 < score <= 1 for score in scores) and scores == sorted(scores, reverse=True)


def test_same_seed_gives_identical_files_other_seed_differs(dataset, tmp_path):
    out, names = dataset
    again = tmp_path / "again"
    assert generate_dataset(again, scenes=1, views=VIEWS, seed=SEED, height=H, width=W) == names[:1]
    first = out / names[0]
    files = _files(first)
    assert files == _files(again / names[0])
    for rel in files:
        assert (first / rel).read_bytes() == (again / names[0] / rel).read_bytes(), rel
    other = tmp_path / "other"
    generate_dataset(other, scenes=1, views=VIEWS, seed=SEED + 1, height=H, width=W)
    assert not np.array_equal(read_pfm(depth_path(first, 0)), read_pfm(depth_path(other / names[0], 0)))


# --------------------------------------------------------------------------------------------------
# Geometry against independent truths
# --------------------------------------------------------------------------------------------------


def test_fronto_parallel_plane_has_constant_depth():
    plane = Rect(np.array([-50.0, -50.0, 4.0]), EX, EY, 100.0, 100.0)
    extrinsic = np.eye(4)
    depth, ids, _ = render_depth([plane], _pinhole(), extrinsic, H, W)
    np.testing.assert_allclose(depth, 4.0, rtol=1e-12)
    assert (ids == 0).all()
    extrinsic[2, 3] = 1.5  # camera moved 1.5 back along its axis
    depth, _, _ = render_depth([plane], _pinhole(), extrinsic, H, W)
    np.testing.assert_allclose(depth, 5.5, rtol=1e-12)


def test_finite_plane_covers_exactly_its_projection():
    # x in [0, 1], y in [-1, 1] at z = 2 with f = 100: columns u in [cx, cx + 50] are covered.
    f = 100.0
    K = _pinhole(f)
    plane = Rect(np.array([0.0, -1.0, 2.0]), EX, EY, 1.0, 2.0)
    depth, _, _ = render_depth([plane], K, np.eye(4), H, W)
    u = np.arange(W) - K[0, 2]
    inside = (u >= 0) & (u <= 50)
    row = depth[H // 2]
    np.testing.assert_allclose(row[inside], 2.0)
    assert (row[~inside] == 0).all()


def test_nearest_surface_wins_and_one_sided_faces_are_culled():
    near = Rect(np.array([-1.0, -1.0, 3.0]), EX, EY, 2.0, 2.0)
    far = Rect(np.array([-50.0, -50.0, 6.0]), EX, EY, 100.0, 100.0)
    depth, _, _ = render_depth([far, near], _pinhole(), np.eye(4), H, W)
    assert depth[H // 2, W // 2] == pytest.approx(3.0) and depth[0, 0] == pytest.approx(6.0)
    # Normal EX x EY = +z points away from the camera: a one-sided plane is invisible from here.
    back = Rect(np.array([-50.0, -50.0, 6.0]), EX, EY, 100.0, 100.0, one_sided=True)
    depth, _, _ = render_depth([back], _pinhole(), np.eye(4), H, W)
    assert (depth == 0).all()


def test_scene_depth_matches_brute_force_ray_cast_on_analytic_surfaces(dataset):
    """Every valid pixel back-projects onto a scene rectangle, and that is the nearest one along its ray."""
    out, names = dataset
    for index, name in enumerate(names):
        scene = synthetic.build_scene(SEED, index)
        origins = np.stack([r.origin for r in scene.rects])
        normals = np.stack([r.normal for r in scene.rects])
        axes_u = np.stack([r.axis_u for r in scene.rects])
        axes_v = np.stack([r.axis_v for r in scene.rects])
        sizes = np.array([[r.size_u, r.size_v] for r in scene.rects])
        for view in range(VIEWS):
            depth = read_pfm(depth_path(out / name, view))
            cam = read_cam(cam_path(out / name, view))
            # 1) back-projected points lie on some rectangle
            points, z, _ = _world_points(depth, cam)
            rel = points[:, None, :] - origins[None]  # (N, R, 3)
            dist = np.abs(np.einsum("nrk,rk->nr", rel, normals))
            pu = np.einsum("nrk,rk->nr", rel, axes_u)
            pv = np.einsum("nrk,rk->nr", rel, axes_v)
            tol = 1e-5 * z[:, None] + 1e-6
            on = (
                (dist < tol) & (pu > -tol) & (pu < sizes[:, 0] + tol) & (pv > -tol) & (pv < sizes[:, 1] + tol)
            )
            assert on.any(axis=1).all(), f"{name}/{view}: {(~on.any(axis=1)).sum()} points on no surface"
            # 2) brute force: nearest intersection of every pixel ray with every rectangle (no culling)
            center = -cam.extrinsic[:3, :3].T @ cam.extrinsic[:3, 3]
            v, u = np.mgrid[0:H, 0:W]
            rays_cam = np.linalg.inv(cam.intrinsic) @ np.stack([u.ravel(), v.ravel(), np.ones(H * W)])
            rays = (cam.extrinsic[:3, :3].T @ rays_cam).T  # world direction with unit camera z
            with np.errstate(divide="ignore", invalid="ignore"):
                t = ((origins - center) * normals).sum(1)[None] / (rays @ normals.T)  # (P, R)
                hit = center[None, None] + t[..., None] * rays[:, None]
                hu = ((hit - origins[None]) * axes_u[None]).sum(-1)
                hv = ((hit - origins[None]) * axes_v[None]).sum(-1)
                ok = (t > synthetic.NEAR) & (hu >= 0) & (hu <= sizes[:, 0]) & (hv >= 0) & (hv <= sizes[:, 1])
            expected = np.where(ok, t, np.inf).min(axis=1)
            expected[~np.isfinite(expected)] = 0
            expected = expected.reshape(H, W)
            agree = np.isclose(depth, expected, rtol=1e-5, atol=1e-6)
            # pixel centres exactly on an edge may go either way; allow a handful
            assert agree.mean() > 0.999, f"{name}/{view}: {(~agree).sum()} pixels disagree"


def test_sky_only_above_the_horizon(dataset):
    """The ground is bounded far away, so a ray going clearly downwards always hits something."""
    out, names = dataset
    for name in names:
        for view in range(VIEWS):
            depth = read_pfm(depth_path(out / name, view))
            cam = read_cam(cam_path(out / name, view))
            v, u = np.nonzero(depth == 0)
            rays = cam.extrinsic[:3, :3].T @ np.linalg.inv(cam.intrinsic) @ np.stack([u, v, np.ones_like(u)])
            elevation = rays[2] / np.linalg.norm(rays, axis=0)
            assert (elevation > -0.2).all()


def test_reprojection_lands_on_matching_content(dataset):
    """Warp view 0 into its best source view with depth + poses: where depths agree, pixels look alike."""
    out, names = dataset
    scene_dir = out / names[0]
    pairs = read_pair_file(pair_path(scene_dir))
    src = pairs[0][0][0]
    depth0, depth1 = read_pfm(depth_path(scene_dir, 0)), read_pfm(depth_path(scene_dir, src))
    cam0, cam1 = read_cam(cam_path(scene_dir, 0)), read_cam(cam_path(scene_dir, src))
    img0 = read_image_gray(image_path(scene_dir, 0)).astype(np.float64)
    img1 = read_image_gray(image_path(scene_dir, src)).astype(np.float64)
    points, _, (v0, u0) = _world_points(depth0, cam0)
    p1 = cam1.extrinsic[:3, :3] @ points.T + cam1.extrinsic[:3, 3:]
    uv1 = cam1.intrinsic @ p1
    x1, y1 = np.rint(uv1[0] / uv1[2]).astype(int), np.rint(uv1[1] / uv1[2]).astype(int)
    inside = (p1[2] > 0) & (x1 >= 0) & (x1 < W) & (y1 >= 0) & (y1 < H)
    d1 = np.zeros_like(p1[2])
    d1[inside] = depth1[y1[inside], x1[inside]]
    visible = inside & (np.abs(d1 - p1[2]) < 0.01 * p1[2])
    assert visible.sum() > 0.2 * len(v0)
    a, b = img0[v0[visible], u0[visible]], img1[y1[visible], x1[visible]]
    matched = np.corrcoef(a, b)[0, 1]
    shuffled = np.corrcoef(a, np.roll(b, len(b) // 3))[0, 1]
    assert matched > 0.5 and matched > shuffled + 0.3, (matched, shuffled)


def test_covisibility_of_a_view_with_itself_is_one(dataset):
    out, names = dataset
    depth = read_pfm(depth_path(out / names[0], 1))
    cam = read_cam(cam_path(out / names[0], 1))
    args = (depth, cam.intrinsic, cam.extrinsic)
    assert synthetic.covisibility(*args, *args, step=4) == 1.0


def test_look_at_projects_target_to_principal_point_with_world_up_as_image_up():
    extrinsic = synthetic.look_at([0.0, -5.0, 1.0], [0.0, 0.0, 1.0])
    K = _pinhole()

    def project(x):
        p = K @ (extrinsic[:3, :3] @ np.asarray(x, float) + extrinsic[:3, 3])
        return p[:2] / p[2]

    np.testing.assert_allclose(project([0, 0, 1]), K[:2, 2], atol=1e-9)
    assert project([1, 0, 1])[0] > K[0, 2]  # world +x is image right
    assert project([0, 0, 2])[1] < K[1, 2]  # world up is image up
    rolled = synthetic.look_at([0.0, -5.0, 1.0], [0.0, 0.0, 1.0], roll=math.radians(90))
    np.testing.assert_allclose(rolled[2, :3], extrinsic[2, :3], atol=1e-12)  # same optical axis
    center = -rolled[:3, :3].T @ rolled[:3, 3]
    np.testing.assert_allclose(center, [0.0, -5.0, 1.0], atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Rendering quality
# --------------------------------------------------------------------------------------------------


def test_fine_texture_far_away_is_filtered_not_aliased():
    """A one-texel checker seen at ~8 texels per pixel must average to grey, not alias into a pattern."""
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    texture = np.repeat(checker[..., None], 3, axis=2)
    f, z = 100.0, 4.0
    texel = z / f / 8.0
    plane = Rect(np.array([-50.0, -50.0, z]), EX, EY, 100.0, 100.0, texel=texel, offset=(0.3, 0.7))
    image, depth = render_view(
        _scene([plane], texture), _pinhole(f), np.eye(4), H, W, _plain_lighting(), np.random.default_rng(0)
    )
    assert (depth == np.float32(z)).all()
    assert abs(image.mean() - 127.5) < 6 and image.std() < 6


def test_texture_is_sampled_at_the_right_place():
    """Texel size equal to the pixel footprint and identity pose: the image reproduces the texture."""
    rng = np.random.default_rng(0)
    texture = np.repeat(rng.integers(0, 256, (256, 256, 1), dtype=np.uint8), 3, axis=2)
    f, z = 1000.0, 2.0  # narrow field of view: the footprint stays ~1 texel (mip level ~0) everywhere
    K = np.array([[f, 0.0, 0.0], [0.0, f, 0.0], [0.0, 0.0, 1.0]])  # pixel (0,0) looks at the origin
    plane = Rect(np.array([0.0, 0.0, z]), EX, EY, 10.0, 10.0, texel=z / f, offset=(0.5, 0.5))
    image, _ = render_view(_scene([plane], texture), K, np.eye(4), 64, 64, _plain_lighting(), rng)
    # pixel (u, v) -> surface (u, v) * z / f -> texel edge coordinate u + 0.5 -> texel index u
    np.testing.assert_allclose(image[..., 0].astype(int), texture[:64, :64, 0].astype(int), atol=3)


# --------------------------------------------------------------------------------------------------
# Robustness and CLI
# --------------------------------------------------------------------------------------------------


def test_interrupted_run_leaves_no_half_scene_and_resumes_to_identical_files(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.render_view

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > VIEWS + 1:  # second view of the second scene
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(synthetic, "render_view", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(out, scenes=2, views=VIEWS, seed=SEED, height=32, width=48)
    assert sorted(p.name for p in out.iterdir()) == sorted([synthetic.PROGRESS_FILE, "synth_000"])
    assert pair_path(out / "synth_000").is_file()
    monkeypatch.setattr(synthetic, "render_view", real)
    kept = {p: p.stat().st_mtime_ns for p in (out / "synth_000").rglob("*")}
    with pytest.raises(ValueError, match="other settings"):
        generate_dataset(out, scenes=2, views=VIEWS, seed=SEED + 1, height=32, width=48)
    generate_dataset(out, scenes=2, views=VIEWS, seed=SEED, height=32, width=48)  # resumes
    assert {p: p.stat().st_mtime_ns for p in (out / "synth_000").rglob("*")} == kept
    whole = tmp_path / "whole"
    generate_dataset(whole, scenes=2, views=VIEWS, seed=SEED, height=32, width=48)
    assert _files(out) == _files(whole)
    for rel in _files(whole):
        assert (out / rel).read_bytes() == (whole / rel).read_bytes(), rel


@pytest.mark.parametrize(
    "kwargs", [{"scenes": 0}, {"views": 1}, {"height": 8}], ids=["no-scenes", "one-view", "tiny"]
)
def test_bad_arguments_raise(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, **{"scenes": 1, "views": 2, "height": 32, "width": 48, **kwargs})


def test_cli_single_scene_serves_train_and_validation(tmp_path, capsys):
    synth_cli.main(
        [
            "--out",
            str(tmp_path),
            "--scenes",
            "1",
            "--views",
            "2",
            "--seed",
            "3",
            "--height",
            "32",
            "--width",
            "48",
        ]
    )
    assert "wrote 1 scenes" in capsys.readouterr().out
    assert (tmp_path / "training_list.txt").read_text().split() == ["synth_000"]
    assert (tmp_path / "validation_list.txt").read_text().split() == ["synth_000"]
    assert read_image_gray(image_path(tmp_path / "synth_000", 1)).shape == (32, 48)
    assert synth_cli.main(["--out", str(tmp_path / "one"), "--views", "1"]) == 2
    assert "loftr-kd-synth: error: " in capsys.readouterr().err


def test_rerun_never_replaces_a_finished_set_or_foreign_files(tmp_path):
    generate_dataset(tmp_path / "set", scenes=1, views=2, seed=1, height=32, width=48)
    stale = tmp_path / "set" / ".synth_000.tmp-999999"
    stale.mkdir()
    (stale / "junk").write_text("x")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"not a scene")
    for folder, message in ((tmp_path / "set", "already holds a finished"), (mine, "photo.jpg")):
        before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        with pytest.raises(synthetic.GenerationRefused, match=message):
            generate_dataset(folder, scenes=1, views=2, seed=2, height=32, width=48)
        assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    argv = ["--out", str(mine), "--scenes", "1", "--views", "2", "--height", "32", "--width", "48"]
    assert synth_cli.main(argv) == 2  # one line, as every command's bad input


@pytest.mark.slow
def test_default_size_scene_renders_in_blendedmvs_resolution(tmp_path):
    names = generate_dataset(tmp_path, scenes=1, views=2, seed=0)
    image = read_image_gray(image_path(tmp_path / names[0], 0))
    assert image.shape == (576, 768)


def test_synth_bad_places_and_seeds_are_one_line_before_any_work(tmp_path, capsys):
    """--out below a file was a traceback with exit 1; --seed -1 failed after the folder was made."""
    (tmp_path / "afile").write_text("mine")
    small = ["--scenes", "1", "--views", "2", "--height", "32", "--width", "48"]
    assert synth_cli.main(["--out", str(tmp_path / "afile" / "set"), *small]) == 2
    err = capsys.readouterr().err
    assert err.startswith("loftr-kd-synth: error: ") and "afile" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        synth_cli.main(["--out", str(tmp_path / "seeded"), "--seed", "-1", *small])
    assert "--seed: -1 is not >= 0" in capsys.readouterr().err and not (tmp_path / "seeded").exists()


def test_ctrl_c_in_an_argparse_command_is_one_line(tmp_path):
    """Every argparse command (synth, homographies, photos, convert, ...) printed a 20-50 line traceback."""
    import signal
    import sys

    from conftest import signal_when

    out = tmp_path / "set"
    command = [
        sys.executable,
        "-m",
        "loftr_kd.cli.synth",
        "--out",
        str(out),
        "--scenes",
        "50",
        "--views",
        "4",
    ]
    status, stderr = signal_when(command, lambda: out.is_dir() and any(out.iterdir()), signal.SIGINT)
    assert status == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "loftr-kd-synth: stopped by Ctrl-C"


def test_scene_folders_have_the_usual_permissions(tmp_path):
    """Scenes were renamed into place from mkdtemp's 0700 folder: another user could not read a shared set."""
    import os

    generate_dataset(tmp_path / "set", scenes=1, views=2, seed=1, height=32, width=48)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "set" / "synth_000").stat().st_mode & 0o777 == 0o777 & ~umask
