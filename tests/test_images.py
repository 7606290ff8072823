"""One image reader and one pixel convention for the whole project (loftr_kd.images)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from loftr_kd.data.blendedmvs_io import BlendedMVSFormatError, read_image_gray
from loftr_kd.evaluation import read_image as evaluation_read_image
from loftr_kd.images import ImageError, check_aspect, read_image, read_image_size, to_gray_float
from loftr_kd.matcher import to_gray_float as matcher_to_gray_float


def _photo() -> np.ndarray:
    """A real photo (BGR uint8, 128x96) with texture everywhere."""
    rgb = skdata.astronaut()
    return cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (128, 96), interpolation=cv2.INTER_AREA)


def _truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    assert cv2.imwrite(str(path), _photo())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ---------------------------------------------------------------------------------------- files
def test_every_reader_rejects_a_truncated_jpeg(tmp_path):
    path = _truncated_jpeg(tmp_path)
    # OpenCV alone decodes it "whole" (grey bottom half): the independent truth that the check matters.
    assert cv2.imread(str(path)) is not None
    for reader in (read_image, evaluation_read_image):
        with pytest.raises(ImageError, match=r"cut\.jpg: JPEG truncated"):
            reader(path)
    with pytest.raises(BlendedMVSFormatError, match=r"cut\.jpg: JPEG truncated"):
        read_image_gray(path)


def test_truncated_png_and_empty_file_named(tmp_path):
    png = tmp_path / "cut.png"
    cv2.imwrite(str(png), _photo())
    png.write_bytes(png.read_bytes()[:-40])
    with pytest.raises(ImageError, match=r"cut\.png: PNG truncated"):
        read_image(png)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for fn in (read_image, read_image_size):
        with pytest.raises(ImageError, match=r"empty\.png: image file is empty"):
            fn(empty)


def test_a_directory_is_not_reported_as_missing(tmp_path):
    folder = tmp_path / "photos.png"
    folder.mkdir()
    for fn in (read_image, read_image_size):
        with pytest.raises(ImageError, match="is a directory"):
            fn(folder)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_tiffs_of_int32_and_float64_are_read_and_converted(tmp_path):
    gray = cv2.cvtColor(_photo(), cv2.COLOR_BGR2GRAY)
    reference = gray.astype(np.float32) / 255.0
    for dtype, values in ((np.int32, gray.astype(np.int32)), (np.float64, gray / 255.0)):
        path = tmp_path / f"{np.dtype(dtype).name}.tif"
        assert cv2.imwrite(str(path), values.astype(dtype))
        image = read_image(path)
        assert image.dtype == dtype
        np.testing.assert_allclose(to_gray_float(image), reference, atol=1e-6)


# ---------------------------------------------------------------------------------------- arrays
def test_matcher_uses_the_same_conversion():
    assert matcher_to_gray_float is to_gray_float


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float64, np.float32, np.int16])
def test_colour_arrays_of_any_numeric_dtype_in_0_255(dtype):
    bgr = _photo()
    reference = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    np.testing.assert_allclose(to_gray_float(bgr.astype(dtype)), reference, atol=1 / 255)


def test_float_in_0_1_is_kept_and_float_in_0_255_is_scaled_not_clipped():
    gray = cv2.cvtColor(_photo(), cv2.COLOR_BGR2GRAY)
    unit = gray.astype(np.float32) / 255.0
    np.testing.assert_allclose(to_gray_float(unit), unit, atol=1e-7)
    scaled = to_gray_float(gray.astype(np.float32))  # 0..255 floats: once clipped to white
    np.testing.assert_allclose(scaled, unit, atol=1e-6)
    assert scaled.mean() < 0.9
    np.testing.assert_allclose(to_gray_float(gray.astype(np.float32) * 257.0), unit, atol=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_rejected(bad):
    image = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    image[3, 4] = bad
    with pytest.raises(ImageError, match=r"1 pixel\(s\) are NaN or infinite"):
        to_gray_float(image, name="left.tif")


def test_negative_and_huge_values_are_rejected():
    with pytest.raises(ImageError, match="negative"):
        to_gray_float(np.full((8, 8), -0.5, np.float32))
    with pytest.raises(ImageError, match="beyond any image range"):
        to_gray_float(np.full((8, 8), 70000, np.int32))
    with pytest.raises(ImageError, match="empty"):
        to_gray_float(np.zeros((0, 5), np.uint8))
    with pytest.raises(ImageError, match="unsupported image dtype"):
        to_gray_float(np.zeros((4, 4), np.complex64))


def test_elongated_image_is_rejected_before_matching():
    check_aspect(480, 640, 480, 640, 32)
    check_aspect(100, 300, 240, 320, 32)
    with pytest.raises(ImageError, match=r"3000x40 pixels is too elongated.*640x9"):
        check_aspect(40, 3000, 480, 640, 32)


def test_gray_with_alpha_is_read_as_gray(tmp_path):
    gray = cv2.cvtColor(_photo(), cv2.COLOR_BGR2GRAY)
    path = tmp_path / "ga.png"
    from PIL import Image  # OpenCV cannot write gray + alpha; Pillow (a matplotlib dependency) can

    Image.fromarray(np.stack([gray, np.full_like(gray, 255)], axis=-1), mode="LA").save(path)
    image = read_image(path)
    assert image.ndim == 2 or image.shape[2] == 3  # OpenCV may expand to BGR; never 2 channels
    np.testing.assert_allclose(to_gray_float(image), gray / 255.0, atol=1 / 255)


def test_a_photo_stored_sideways_is_read_upright_in_colour_as_in_gray(tmp_path):
    """A portrait phone photo is stored sideways with EXIF Orientation 6: the gray and reduced decodes turned
    it upright, the colour one did not (so labels and matches paired a sideways image with upright ones)."""
    from PIL import Image

    upright = _photo()  # 128 wide, 96 high
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # 96 wide, 128 high; Orientation 6 turns it back
    image = Image.fromarray(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB))
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    image.save(path, exif=exif, quality=98)
    colour, gray = read_image(path), read_image(path, gray=True)
    assert colour.shape == (96, 128, 3) and gray.shape == (96, 128)
    assert np.abs(colour.astype(float) - upright).mean() < 6  # JPEG noise only
    assert np.abs(to_gray_float(colour) - gray / 255.0).mean() < 2 / 255  # the same picture, the same way up
    assert read_image_size(path) == (128, 96)  # the header's size: as stored
