"""BlendedMVS readers and writers: round trips, hand-written files, clear errors."""

import struct

import numpy as np
import pytest

from loftr_kd.data.blendedmvs_io import (
    BlendedMVSFormatError,
    Camera,
    read_cam,
    read_image_gray,
    read_image_size,
    read_pair_file,
    read_pfm,
    read_pfm_header,
    write_cam,
    write_image,
    write_pair_file,
    write_pfm,
)


@pytest.mark.parametrize("little_endian", [True, False])
@pytest.mark.parametrize("shape", [(5, 7), (4, 6, 3)])
def test_pfm_round_trip(tmp_path, little_endian, shape):
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    path = tmp_path / "x.pfm"
    write_pfm(path, data, little_endian=little_endian)
    assert path.read_bytes().startswith(b"Pf\n" if len(shape) == 2 else b"PF\n")
    back = read_pfm(path)
    assert back.dtype == np.float32 and back.shape == shape
    np.testing.assert_array_equal(back, data)
    assert back.dtype.isnative


@pytest.mark.parametrize("endian,scale", [("<", b"-1.0"), (">", b"1.0")])
def test_pfm_hand_written_bottom_up(tmp_path, endian, scale):
    # 2 wide, 3 high; stored rows are bottom-up: the first stored row is the image's last row.
    stored = [[5.0, 6.0], [3.0, 4.0], [1.0, 2.0]]
    payload = b"".join(struct.pack(f"{endian}2f", *row) for row in stored)
    path = tmp_path / "hand.pfm"
    path.write_bytes(b"Pf\n2 3\n" + scale + b"\n" + payload)
    np.testing.assert_array_equal(read_pfm(path), [[1, 2], [3, 4], [5, 6]])
    header = read_pfm_header(path)
    assert (header.width, header.height, header.channels, header.little_endian) == (2, 3, 1, endian == "<")


def test_pfm_hand_written_color(tmp_path):
    # 1x2 colour image: top pixel (1,2,3), bottom (4,5,6) -> stored bottom row first.
    payload = struct.pack("<6f", 4, 5, 6, 1, 2, 3)
    path = tmp_path / "c.pfm"
    path.write_bytes(b"PF\n1 2\n-1\n" + payload)
    np.testing.assert_array_equal(read_pfm(path), [[[1, 2, 3]], [[4, 5, 6]]])


@pytest.mark.parametrize(
    "content,message",
    [
        (b"P6\n2 2\n-1\n" + bytes(16), "not a PFM"),
        (b"Pf\n2 x\n-1\n" + bytes(16), "malformed PFM header"),
        (b"Pf\n2 2\n0\n" + bytes(16), "scale"),
        (b"Pf\n2 2\n-1\n" + bytes(15), "truncated"),
        (b"Pf\n", "truncated"),
        (b"", "truncated"),
    ],
)
def test_pfm_malformed_names_file(tmp_path, content, message):
    path = tmp_path / "bad_depth.pfm"
    path.write_bytes(content)
    with pytest.raises(BlendedMVSFormatError, match=message) as info:
        read_pfm(path)
    assert "bad_depth.pfm" in str(info.value)


def test_pfm_missing_file(tmp_path):
    with pytest.raises(BlendedMVSFormatError, match="nope.pfm"):
        read_pfm(tmp_path / "nope.pfm")


def _camera(depth4=True):
    extrinsic = np.eye(4)
    extrinsic[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    extrinsic[:3, 3] = [0.1, -2.5, 1e-7]
    K = np.array([[612.3456789, 0.0, 383.5], [0.0, 611.0, 287.5], [0.0, 0.0, 1.0]])
    if depth4:
        return Camera(extrinsic, K, 1.5, 0.0123, 192, 3.8616)
    return Camera(extrinsic, K, -0.5, 0.01)


@pytest.mark.parametrize("depth4", [True, False])
def test_cam_round_trip(tmp_path, depth4):
    camera = _camera(depth4)
    path = tmp_path / "00000003_cam.txt"
    write_cam(path, camera)
    tokens = path.read_text().split()
    assert len(tokens) == (31 if depth4 else 29)
    back = read_cam(path)
    np.testing.assert_array_equal(back.extrinsic, camera.extrinsic)
    np.testing.assert_array_equal(back.intrinsic, camera.intrinsic)
    assert back.extrinsic.dtype == np.float64
    assert (back.depth_min, back.depth_interval, back.depth_num, back.depth_max) == (
        camera.depth_min,
        camera.depth_interval,
        camera.depth_num,
        camera.depth_max,
    )


def test_cam_layout_matches_blendedmvs(tmp_path):
    path = tmp_path / "cam.txt"
    write_cam(path, _camera())
    lines = path.read_text().splitlines()
    assert lines[0] == "extrinsic" and lines[5] == "" and lines[6] == "intrinsic" and lines[10] == ""
    assert [len(line.split()) for line in lines[1:5]] == [4] * 4
    assert [len(line.split()) for line in lines[7:10]] == [3] * 3
    assert len(lines[11].split()) == 4


def test_cam_reads_real_blendedmvs_text(tmp_path):
    text = (
        "extrinsic\n-0.98 0.02 0.17 -37.5\n0.0 1.0 0.0 2.0\n-0.17 0.0 -0.98 300.1\n0.0 0.0 0.0 1.0\n\n"
        "intrinsic\n1135.28 0.0 384.0\n0.0 1135.28 288.0\n0.0 0.0 1.0\n\n425.0 2.5 128.0 745.0\n"
    )
    path = tmp_path / "00000000_cam.txt"
    path.write_text(text)
    camera = read_cam(path)
    assert camera.extrinsic[0, 3] == -37.5 and camera.intrinsic[1, 2] == 288.0
    assert camera.depth_num == 128 and camera.depth_max == 745.0


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda t: t.rsplit(" ", 1)[0], "30 tokens"),
        (lambda t: t.replace("extrinsic", "extrinsics_x 1"), "tokens"),
        (lambda t: t.replace("intrinsic", "intr"), "'intrinsic'"),
        (lambda t: t.replace("611.0", "abc"), "non-numeric"),
        (lambda t: "", "0 tokens"),
    ],
)
def test_cam_malformed_names_file(tmp_path, mutate, message):
    path = tmp_path / "00000007_cam.txt"
    write_cam(path, _camera())
    path.write_text(mutate(path.read_text()))
    with pytest.raises(BlendedMVSFormatError, match=message) as info:
        read_cam(path)
    assert "00000007_cam.txt" in str(info.value)


def test_pair_round_trip_and_short_lists(tmp_path):
    pairs = {0: [(1, 0.5), (2, 12.25)], 1: [(0, 3.0)], 2: []}
    path = tmp_path / "pair.txt"
    write_pair_file(path, pairs)
    assert read_pair_file(path) == pairs


def test_pair_hand_written(tmp_path):
    path = tmp_path / "pair.txt"
    path.write_text("2\n0\n3 1 1203.5 5 900.1 2 10\n5\n1 0 1203.5 \n")
    assert read_pair_file(path) == {0: [(1, 1203.5), (5, 900.1), (2, 10.0)], 5: [(0, 1203.5)]}


@pytest.mark.parametrize(
    "text,message",
    [
        ("3\n0\n1 1 0.5\n1\n1 0 0.5\n", "truncated"),
        ("1\n0\n2 1 0.5\n", "needs 5 tokens"),
        ("1\n0\n1 x 0.5\n", "source view id"),
        ("1\n0\n1 1 zz\n", "score"),
        ("2\n0\n1 1 0.5\n0\n1 1 0.5\n", "listed twice"),
        ("x\n", "number of views"),
        ("1\n0\n1 1 0.5\n7\n", "extra content"),
        ("", "empty"),
    ],
)
def test_pair_malformed_names_file(tmp_path, text, message):
    path = tmp_path / "pair.txt"
    path.write_text(text)
    with pytest.raises(BlendedMVSFormatError, match=message) as info:
        read_pair_file(path)
    assert "pair.txt" in str(info.value)


@pytest.mark.parametrize("name", ["a.jpg", "a.png"])
def test_image_read_and_size(tmp_path, name):
    image = (np.random.default_rng(0).random((30, 41)) * 255).astype(np.uint8)
    path = tmp_path / name
    write_image(path, image)
    gray = read_image_gray(path)
    assert gray.shape == (30, 41) and gray.dtype == np.uint8
    assert read_image_size(path) == (30, 41)


def test_image_colour_becomes_gray(tmp_path):
    image = np.zeros((10, 12, 3), np.uint8)
    image[..., 2] = 255  # red in BGR
    write_image(tmp_path / "c.png", image)
    gray = read_image_gray(tmp_path / "c.png")
    assert gray.shape == (10, 12) and 70 <= gray.mean() <= 80  # 0.299 * 255


@pytest.mark.parametrize("name,cut", [("t.jpg", 0.5), ("t.png", 0.5), ("e.jpg", 0.0), ("g.jpg", None)])
def test_image_truncated_or_garbage_names_file(tmp_path, name, cut):
    path = tmp_path / name
    write_image(path, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)] if cut is not None else b"not an image at all")
    with pytest.raises(BlendedMVSFormatError) as info:
        read_image_gray(path)
    assert name in str(info.value)


def test_image_missing(tmp_path):
    with pytest.raises(BlendedMVSFormatError, match="missing.jpg"):
        read_image_gray(tmp_path / "missing.jpg")
