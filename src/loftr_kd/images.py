"""The one place where images are read from files and converted for the model.

Every reader of the project (training loaders, evaluation, the CLI apps, the ``Matcher``) goes through
:func:`read_image` / :func:`read_image_size` for files and :func:`to_gray_float` for arrays, so the same
integrity rules hold everywhere:

- a path that is missing, a directory, empty (0 bytes), a truncated JPEG (no end-of-image marker) or a
  truncated PNG (no ``IEND`` chunk) is an error naming the file — OpenCV would decode a truncated JPEG
  with grey in the missing part and only a warning on stderr;
- pixel values follow one convention (see :func:`to_gray_float`): ``uint8`` in 0–255, ``uint16`` in
  0–65535, ``bool`` as 0/1; any other integer or float image must be finite and non-negative, and is read
  in the smallest of the ranges [0, 1] (floats only), [0, 255], [0, 65535] that holds all its values;
  anything else is rejected with a :class:`ImageError` saying what to do.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np

from loftr_kd.errors import user_stacklevel

PathLike = str | os.PathLike

_JPEG_EXT = re.compile(r"\.(jpe?g)$", re.IGNORECASE)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Divisors tried in order for images whose dtype does not fix the range (floats, int32, ...).
_DATA_RANGES = (255.0, 65535.0)
# A float image within this of 1.0 is a [0, 1] image with rounding noise (a resampled or filtered
# image), clipped to 1, not a [0, 255] one: dividing it by 255 would make it black.
_FLOAT_SLACK = 1e-3
# Brightest pixel, on the 0-1 scale, below which an image is "nearly black": 8- or 10-bit values in a
# uint16 array, or a float image with values a little above 1, read in a range far too wide.
NEARLY_BLACK = 0.02


class ImageError(ValueError):
    """An image file or array cannot be used; the message names the file (or array) and the problem."""


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _check_path(path: Path) -> None:
    """Missing, a folder, a named pipe or a device (which would hang or never end), or empty."""
    from loftr_kd.files import check_input_file

    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    if not path.exists():
        raise FileNotFoundError(f"image {path} not found")
    try:
        check_input_file(path, "image")
    except ValueError as error:
        if "is empty" in str(error):
            raise ImageError(f"{path}: image file is empty (0 bytes)") from None
        raise ImageError(str(error)) from None


# Images above this many pixels are decoded reduced (1/2, 1/4 or 1/8) for matching: the model sees a
# 640-pixel long side anyway, and a 12000x9000 photo would otherwise take gigabytes on the way.
MAX_MATCH_PIXELS = 24_000_000
# Decoding may take at most this share of the memory the machine has available.
_MEMORY_SHARE = 0.5


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), ``None`` if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_decode_memory(path: Path, height: int, width: int, reduce: int = 1) -> None:
    """Refuse, before allocating, an image whose decode cannot fit in the free memory."""
    free = available_memory()
    if free is None:
        return
    # 3 channels of up to 16 bits, plus the float32 gray copy the matcher makes.
    need = height * width // (reduce * reduce) * (3 * 2 + 4)
    if need > free * _MEMORY_SHARE:
        raise ImageError(
            f"{path}: a {width}x{height} image needs about {need / 2**30:.1f} GiB to decode and convert, more "
            f"than half of the {free / 2**30:.1f} GiB this machine has free; downscale it first"
        )


def read_image_for_matching(path: PathLike, max_pixels: int = MAX_MATCH_PIXELS) -> tuple[np.ndarray, int]:
    """Read an image to match, decoded at 1/2, 1/4 or 1/8 when it has more than ``max_pixels`` pixels.

    JPEG decodes reduced natively (libjpeg's DCT scaling), so a 12000x9000 photo never takes its
    full-size memory; PNG is checked against the free memory first; other formats, whose size the
    header reader does not know, are read as :func:`read_image` reads them. A reduced decode is 8-bit
    colour and is said with a warning.

    Returns:
        ``(image, factor)``: the array and the reduction (1, 2, 4 or 8); pixel ``(x, y)`` of the array is
        ``((x + 0.5) * factor - 0.5, (y + 0.5) * factor - 0.5)`` in the file's image.

    Raises:
        FileNotFoundError, ImageError: as :func:`read_image`, or the decode would not fit in memory.
    """
    import warnings

    path = Path(path)
    _check_path(path)
    size = _header_size(path)
    if size is None:  # not JPEG/PNG: no size before decoding
        return read_image(path), 1
    height, width = size
    factor = 1
    while height * width > max_pixels * factor * factor and factor < 8:
        factor *= 2
    if factor == 1:
        return read_image(path), 1
    is_jpeg = _is_jpeg(path)
    _check_decode_memory(path, height, width, factor if is_jpeg else 1)
    data = path.read_bytes()
    check_complete(data, path)
    if (
        is_jpeg
    ):  # libjpeg's DCT scaling: ceil(W / factor) pixels, pixel x covering [factor x, factor x + factor)
        flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag[factor])
    else:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError(f"{path}: cannot read as an image (corrupt file or a format OpenCV does not decode)")
    if not is_jpeg:
        # OpenCV's reduced read of other formats resizes to floor(W / factor): a scale of W / floor(W / factor),
        # not factor (-0.9 px at the far edge of a 6001-px PNG at 1/2). Pad to a multiple of the factor and
        # average factor x factor blocks instead, as libjpeg does: pixel x is exactly (x + 0.5) factor - 0.5.
        pad_h, pad_w = -image.shape[0] % factor, -image.shape[1] % factor
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
        image = cv2.resize(
            image, (image.shape[1] // factor, image.shape[0] // factor), interpolation=cv2.INTER_AREA
        )
    warnings.warn(
        f"{path}: {width}x{height} pixels is more than the {max_pixels / 1e6:.0f} MP matched at full "
        f"resolution; decoded at 1/{factor} ({image.shape[1]}x{image.shape[0]}) to bound memory. Keypoints "
        "and homographies are reported in the pixels of the full image; pictures are drawn at 1/"
        f"{factor}.",
        stacklevel=user_stacklevel(),
    )
    return image, factor


def _is_jpeg(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\xff\xd8"


def check_complete(data: bytes, path: PathLike) -> None:
    """Reject truncated JPEG/PNG data that OpenCV would decode partially with only a warning.

    Raises:
        ImageError: empty data, a ``.jpg`` without JPEG magic, a JPEG without end-of-image marker or a PNG
            without ``IEND`` chunk.
    """
    path = Path(path)
    if not data:
        raise ImageError(f"{path}: image file is empty (0 bytes)")
    if _JPEG_EXT.search(path.name) or data[:2] == b"\xff\xd8":
        if data[:2] != b"\xff\xd8":
            raise ImageError(f"{path}: not a JPEG file (no SOI marker)")
        if b"\xff\xd9" not in data[-4096:]:
            raise ImageError(f"{path}: JPEG truncated (no end-of-image marker); the file is incomplete")
    elif data[:8] == _PNG_MAGIC and b"IEND" not in data[-64:]:
        raise ImageError(f"{path}: PNG truncated (no IEND chunk); the file is incomplete")


def check_file_complete(path: PathLike) -> None:
    """:func:`check_complete` on a file, reading only what it looks at (its first bytes and its last 4 KB):
    a check of many files (a data folder) without reading them whole.

    Raises:
        ImageError: as :func:`check_complete`.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(f.seek(0, os.SEEK_END) - 4096, len(head)))
        check_complete(head + f.read(), path)


def read_image(path: PathLike, gray: bool = False, upright: bool = True) -> np.ndarray:
    """Read an image file as stored (BGR or gray, its own dtype), upright by its EXIF orientation, with the
    integrity checks above.

    Args:
        path: image file (anything OpenCV decodes: JPEG, PNG, TIFF, PPM, BMP, WebP, ...).
        gray: decode to 8-bit grayscale (the training loaders) instead of as stored.
        upright: turn the image by its EXIF orientation; ``False``: the raster as stored, the frame of
            geometry that describes the stored pixels (a depth map and camera of the BlendedMVS layout).

    Returns:
        ``(H, W)`` or ``(H, W, 3)`` array (an alpha channel is dropped); ``uint8`` when ``gray``.

    Raises:
        FileNotFoundError: no such file.
        ImageError: a directory, an empty, truncated, corrupt or undecodable file.
    """
    path = Path(path)
    _check_path(path)
    size = _header_size(path)
    if size is not None:
        _check_decode_memory(path, *size)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read image ({e.strerror})") from e
    check_complete(data, path)
    # ANYDEPTH | ANYCOLOR decodes as stored (16-bit, float, gray or colour) like UNCHANGED, but applies the
    # EXIF orientation as GRAYSCALE and the reduced decodes do: a phone's portrait photo, stored sideways,
    # was read sideways in colour and upright in gray.
    flags = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    if not upright:
        flags |= cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None or image.size == 0:
        raise ImageError(f"{path}: cannot read as an image (corrupt file or a format OpenCV does not decode)")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]  # BGRA -> BGR
    elif image.ndim == 3 and image.shape[2] == 2:
        image = image[:, :, 0]  # gray + alpha -> gray
    return image


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` from a JPEG/PNG header, ``None`` for other formats or odd files."""
    try:
        with open(path, "rb") as f:
            head = f.read(16384)
            size = _png_size(head) or _jpeg_size(head)
            if size is None and head[:2] == b"\xff\xd8":
                size = _jpeg_size(head + f.read(1 << 20))
    except OSError:
        return None
    return size


def read_image_size(path: PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image from its header where possible (JPEG/PNG), else by decoding. From a
    JPEG header it is the size as stored, before an EXIF orientation turns it (which swaps the two for a
    portrait phone photo); a decoded format gives the upright size.

    Raises:
        FileNotFoundError: no such file.
        ImageError: a directory, an empty file, or one that cannot be decoded.
    """
    path = Path(path)
    _check_path(path)
    size = None
    try:
        with open(path, "rb") as f:
            head = f.read(16384)
            if not head:
                raise ImageError(f"{path}: image file is empty (0 bytes)")
            size = _png_size(head) or _jpeg_size(head)
            if size is None and head[:2] == b"\xff\xd8":  # SOF after large EXIF/ICC blocks
                head += f.read(1 << 20)
                size = _jpeg_size(head)
    except OSError as e:
        raise ImageError(f"{path}: cannot read image ({e.strerror})") from e
    if size is None:
        size = read_image(path, gray=True).shape[:2]
    return size


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] == _PNG_MAGIC and len(head) >= 24 and head[12:16] == b"IHDR":
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    if head[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(head[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            return int.from_bytes(head[i + 5 : i + 7], "big"), int.from_bytes(head[i + 7 : i + 9], "big")
        i += 2 + length
    return None


# --------------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------------


def value_scale(image: np.ndarray, name: str = "image") -> float:
    """The divisor that maps ``image`` to [0, 1] under the project's convention (module docstring).

    Raises:
        ImageError: non-finite or negative values, or values beyond 65535 (floats and wide integers).
    """
    if image.dtype == np.uint8:
        return 255.0
    if image.dtype == np.uint16:
        return 65535.0
    if image.dtype == bool:
        return 1.0
    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
        raise ImageError(f"{name}: unsupported image dtype {image.dtype} (use uint8, uint16 or float)")
    if np.issubdtype(image.dtype, np.floating):
        finite = np.isfinite(image)
        if not finite.all():
            pixel_ok = finite.all(axis=2) if finite.ndim == 3 else finite
            bad = int(pixel_ok.size - np.count_nonzero(pixel_ok))
            raise ImageError(
                f"{name}: {bad} pixel(s) are NaN or infinite; replace them (e.g. np.nan_to_num) before matching"
            )
    low, high = float(image.min()), float(image.max())
    if low < 0:
        raise ImageError(
            f"{name}: {image.dtype} values span [{low:g}, {high:g}]; negative values have no meaning as "
            "intensities — rescale the image to [0, 1] (float) or [0, 255] first"
        )
    if np.issubdtype(image.dtype, np.floating) and high <= 1.0 + _FLOAT_SLACK:
        return 1.0
    for scale in _DATA_RANGES:
        if high <= scale:
            return scale
    raise ImageError(
        f"{name}: {image.dtype} values reach {high:g}, beyond any image range ([0, 1], [0, 255] or "
        "[0, 65535]); rescale the image first"
    )


def _what_instead(image: object) -> str:
    """A non-array image named, with the usual way from it to a numpy image."""
    if image is None:
        return "None (cv2.imread returns None for a file it cannot read: check the path)"
    if isinstance(image, str | os.PathLike):
        return f"the path {str(image)!r}; read it first: loftr_kd.images.read_image(path) or cv2.imread(path)"
    kind = type(image).__name__
    if type(image).__module__.startswith("torch"):
        return f"a torch {kind}; pass tensor.cpu().numpy(), or use loftr_kd.kornia_loftr.StudentLoFTR for tensors"
    if hasattr(image, "__array__"):
        return f"{kind}; convert it with numpy.asarray(image)"
    return kind


def to_gray_float(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Gray, BGR or BGRA image -> ``(H, W)`` float32 in [0, 1].

    ``uint8`` is read in 0–255, ``uint16`` in 0–65535, ``bool`` as 0/1. Floats and other integer types
    must be finite and non-negative; they are read in the smallest of [0, 1] (floats only, up to 1.001:
    rounding noise is clipped), [0, 255] and [0, 65535] that holds every value (a float image in 0–255 is
    divided by 255, not clipped).

    Raises:
        TypeError: not a numpy array.
        ImageError: (a ``ValueError``) wrong shape, empty, unsupported dtype, NaN/Inf or out-of-range values.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name}: expected a numpy image (H, W) or (H, W, C), got {_what_instead(image)}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        raise ImageError(f"{name}: image must be gray, BGR or BGRA; got shape {image.shape}")
    if image.ndim not in (2, 3):
        raise ImageError(f"{name}: image must be (H, W) or (H, W, C); got shape {image.shape}")
    if image.size == 0:
        raise ImageError(f"{name}: image is empty (shape {image.shape})")
    scale = value_scale(image, name)
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        # OpenCV converts colour only for 8-bit, 16-bit and float32 data.
        image = (image.astype(np.float32) / np.float32(scale)).astype(np.float32)
        scale = 1.0
    if image.ndim == 3:
        code = cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        image = cv2.cvtColor(np.ascontiguousarray(image), code)
    out = image.astype(np.float32)
    if scale != 1.0:
        out /= np.float32(scale)
    return np.clip(out, 0.0, 1.0)  # rounding only: the values are in range by construction


# Training images must show something to match: a shorter side of at least two coarse cells of the
# default student and some texture (a grey-level standard deviation of at least one level of 255).
MIN_TRAINING_SIDE = 32
MIN_TEXTURE_STD = 1.0


def too_small_reason(height: int, width: int, min_side: int = MIN_TRAINING_SIDE) -> str | None:
    """Why an image of this size cannot serve as training data, or ``None``."""
    if min(height, width) < min_side:
        return (
            f"image is {width}x{height} pixels, too small to train on (the shorter side needs {min_side} px)"
        )
    return None


def uniform_value(image: np.ndarray) -> float | None:
    """The value of every pixel of a non-empty image whose pixels are all equal (a blank, black or covered
    frame), else ``None``. Every 16th pixel is compared first, so a textured image (nearly always) costs a
    1/256 read, not a pass over the whole image."""
    first = image.flat[0]
    if (image[::16, ::16] == first).all() and (image == first).all():
        return float(first)
    return None


def nearly_black(gray: np.ndarray) -> float | None:
    """The brightest value of a (H, W) float image in [0, 1] when it is below :data:`NEARLY_BLACK`, else
    ``None``; every 4th pixel is read first, so a normal image costs a 1/16 read."""
    if float(gray[::4, ::4].max()) >= NEARLY_BLACK:
        return None
    high = float(gray.max())
    return high if high < NEARLY_BLACK else None


def featureless_reason(gray: np.ndarray) -> str | None:
    """Why a uint8 grayscale image has nothing to match (blank or nearly so), or ``None``."""
    blank = uniform_value(gray)
    if blank is not None:
        return f"image is blank (all pixels equal {int(blank)}): nothing to match"
    std = float(gray.std())
    if std < MIN_TEXTURE_STD:
        return f"image is featureless (grey-level standard deviation {std:.2f} < {MIN_TEXTURE_STD:g}): nothing to match"
    return None


def check_aspect(
    height: int, width: int, input_height: int, input_width: int, min_side: int, name: str = "image"
) -> None:
    """Reject an image that, letterboxed into the model input, is thinner than ``min_side`` pixels.

    Until aspect-true matching exists, a 3000x40 strip shrinks to a few pixel rows at 640x480 and can
    never match; say so instead of returning no matches.
    """
    scale = min(input_height / height, input_width / width)
    content_h, content_w = round(height * scale), round(width * scale)
    if min(content_h, content_w) < min_side:
        raise ImageError(
            f"{name} of {width}x{height} pixels is too elongated for the model input "
            f"{input_width}x{input_height}: letterboxed it becomes {content_w}x{content_h}, thinner than "
            f"{min_side} px (two coarse cells), so nothing can match; crop it closer to "
            f"{input_width}:{input_height} first"
        )


__all__ = [
    "ImageError",
    "check_aspect",
    "check_complete",
    "featureless_reason",
    "read_image",
    "read_image_for_matching",
    "read_image_size",
    "check_file_complete",
    "to_gray_float",
    "too_small_reason",
    "uniform_value",
    "value_scale",
]
