"""Readers and writers for the BlendedMVS file formats (PFM depth, ``*_cam.txt``, ``pair.txt``).

The writers produce exactly what the readers accept, so synthetic scenes written with them load through
the same code path as the real data set. Every error names the file and what is wrong with it.

Layout of one scene (low-res BlendedMVS)::

    <scene>/blended_images/00000000.jpg          (00000000_masked.jpg is ignored)
    <scene>/cams/00000000_cam.txt
    <scene>/cams/pair.txt
    <scene>/rendered_depth_maps/00000000.pfm

Use :func:`image_path`, :func:`cam_path`, :func:`depth_path` and :func:`pair_path` to build these names.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

import loftr_kd.images as images

PathLike = str | os.PathLike

IMAGE_DIR = "blended_images"
CAM_DIR = "cams"
DEPTH_DIR = "rendered_depth_maps"
PAIR_FILE = "pair.txt"


class BlendedMVSFormatError(ValueError):
    """A BlendedMVS file is missing, truncated or malformed; the message names the file."""


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


def image_path(scene_dir: PathLike, view_id: int) -> Path:
    """``<scene>/blended_images/%08d.jpg``."""
    return Path(scene_dir) / IMAGE_DIR / f"{view_id:08d}.jpg"


def cam_path(scene_dir: PathLike, view_id: int) -> Path:
    """``<scene>/cams/%08d_cam.txt``."""
    return Path(scene_dir) / CAM_DIR / f"{view_id:08d}_cam.txt"


def depth_path(scene_dir: PathLike, view_id: int) -> Path:
    """``<scene>/rendered_depth_maps/%08d.pfm``."""
    return Path(scene_dir) / DEPTH_DIR / f"{view_id:08d}.pfm"


def pair_path(scene_dir: PathLike) -> Path:
    """``<scene>/cams/pair.txt``."""
    return Path(scene_dir) / CAM_DIR / PAIR_FILE


# --------------------------------------------------------------------------------------------------
# PFM
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PFMHeader:
    """Parsed PFM header: ``channels`` is 1 (``Pf``) or 3 (``PF``)."""

    width: int
    height: int
    channels: int
    little_endian: bool
    data_offset: int


def _read_header_line(f, path: Path, what: str) -> bytes:
    line = f.readline(256)
    if not line:
        raise BlendedMVSFormatError(f"{path}: PFM header truncated (missing {what})")
    return line


def read_pfm_header(path: PathLike) -> PFMHeader:
    """Read only the header of a PFM file (cheap size check at index time).

    Raises:
        BlendedMVSFormatError: file missing, header malformed, or file shorter than the header promises.
    """
    path = Path(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, header parse needs the handle
    except OSError as e:
        raise BlendedMVSFormatError(f"{path}: cannot open PFM file ({e.strerror})") from e
    with f:
        magic = _read_header_line(f, path, "'Pf'/'PF' magic").strip()
        if magic == b"Pf":
            channels = 1
        elif magic == b"PF":
            channels = 3
        else:
            raise BlendedMVSFormatError(
                f"{path}: not a PFM file (magic {magic[:16]!r}, expected b'Pf' or b'PF')"
            )
        # Some writers put width, height and scale on one line; accept any whitespace layout.
        tokens: list[bytes] = []
        while len(tokens) < 3:
            tokens += _read_header_line(f, path, "width/height/scale").split()
        if len(tokens) != 3:
            raise BlendedMVSFormatError(f"{path}: malformed PFM header, expected 'width height' and scale")
        try:
            width, height = int(tokens[0]), int(tokens[1])
            scale = float(tokens[2])
        except ValueError as e:
            raise BlendedMVSFormatError(
                f"{path}: malformed PFM header {b' '.join(tokens)!r}: width/height must be integers, "
                "scale a number"
            ) from e
        if width <= 0 or height <= 0:
            raise BlendedMVSFormatError(f"{path}: PFM size {width}x{height} is empty")
        if scale == 0 or not np.isfinite(scale):
            raise BlendedMVSFormatError(f"{path}: PFM scale {scale} is invalid (must be non-zero)")
        offset = f.tell()
    header = PFMHeader(width, height, channels, scale < 0, offset)
    expected = offset + width * height * channels * 4
    size = path.stat().st_size
    if size < expected:
        raise BlendedMVSFormatError(
            f"{path}: PFM truncated: {size} bytes, header {width}x{height}x{channels} needs {expected}"
        )
    return header


def read_pfm(path: PathLike) -> np.ndarray:
    """Read a PFM image.

    Rows are stored bottom-up in PFM and are flipped so that row 0 is the top of the image.

    Args:
        path: ``.pfm`` file (``Pf`` one channel or ``PF`` three channels, either endianness).

    Returns:
        float32 array, ``(H, W)`` for ``Pf`` or ``(H, W, 3)`` for ``PF``, native byte order.
    """
    path = Path(path)
    header = read_pfm_header(path)
    dtype = np.dtype("<f4" if header.little_endian else ">f4")
    count = header.width * header.height * header.channels
    with open(path, "rb") as f:
        f.seek(header.data_offset)
        data = np.frombuffer(f.read(count * 4), dtype=dtype, count=count)
    shape = (header.height, header.width) if header.channels == 1 else (header.height, header.width, 3)
    return np.ascontiguousarray(np.flipud(data.reshape(shape)).astype(np.float32))


def write_pfm(path: PathLike, array: np.ndarray, little_endian: bool = True) -> None:
    """Write ``(H, W)`` or ``(H, W, 3)`` data as PFM (rows bottom-up, scale ±1). Creates parent dirs."""
    path = Path(path)
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"{path}: PFM needs an (H, W) or (H, W, 3) array, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{path}: refusing to write an empty PFM (shape {array.shape})")
    height, width = array.shape[:2]
    magic = "Pf" if array.ndim == 2 else "PF"
    scale = -1.0 if little_endian else 1.0
    data = np.flipud(array).astype("<f4" if little_endian else ">f4")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(f"{magic}\n{width} {height}\n{scale}\n".encode("ascii"))
        f.write(data.tobytes())


# --------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """One BlendedMVS camera.

    Attributes:
        extrinsic: (4, 4) float64 world → camera ``[R|t]``.
        intrinsic: (3, 3) float64 pinhole K (pixel centres at integer coordinates).
        depth_min: first value of the depth-range line (may be <= 0 in real data).
        depth_interval: second value of the depth-range line.
        depth_num: number of depth planes, or None when the line has 2 values.
        depth_max: maximum depth, or None when the line has 2 values.
    """

    extrinsic: np.ndarray
    intrinsic: np.ndarray
    depth_min: float
    depth_interval: float
    depth_num: int | None = None
    depth_max: float | None = None


def read_cam(path: PathLike) -> Camera:
    """Read a ``*_cam.txt`` file (29 tokens, or 31 with ``DEPTH_NUM DEPTH_MAX``).

    Raises:
        BlendedMVSFormatError: missing file, wrong token count, missing keywords, non-numbers.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as e:
        raise BlendedMVSFormatError(f"{path}: cannot read camera file ({e.strerror})") from e
    tokens = text.split()
    if len(tokens) not in (29, 31):
        raise BlendedMVSFormatError(
            f"{path}: camera file has {len(tokens)} tokens, expected 29 (depth_min depth_interval) or 31 "
            "(… depth_num depth_max)"
        )
    if tokens[0].lower() != "extrinsic" or tokens[17].lower() != "intrinsic":
        raise BlendedMVSFormatError(
            f"{path}: camera file must start with 'extrinsic' (16 values) then 'intrinsic' (9 values); "
            f"found {tokens[0]!r} and {tokens[17]!r}"
        )
    try:
        extrinsic = np.array([float(t) for t in tokens[1:17]], dtype=np.float64).reshape(4, 4)
        intrinsic = np.array([float(t) for t in tokens[18:27]], dtype=np.float64).reshape(3, 3)
        depth_values = [float(t) for t in tokens[27:]]
    except ValueError as e:
        raise BlendedMVSFormatError(f"{path}: camera file has a non-numeric value ({e})") from e
    if not (np.isfinite(extrinsic).all() and np.isfinite(intrinsic).all()):
        raise BlendedMVSFormatError(f"{path}: camera matrices contain inf/nan")
    depth_num = depth_max = None
    if len(depth_values) == 4:
        if not float(depth_values[2]).is_integer():
            raise BlendedMVSFormatError(f"{path}: depth_num {depth_values[2]} is not an integer")
        depth_num, depth_max = int(depth_values[2]), depth_values[3]
    return Camera(extrinsic, intrinsic, depth_values[0], depth_values[1], depth_num, depth_max)


def _fmt(value: float) -> str:
    return repr(float(value))


def write_cam(path: PathLike, camera: Camera) -> None:
    """Write a camera in the BlendedMVS ``*_cam.txt`` layout (exact float round trip). Creates dirs."""
    path = Path(path)
    extrinsic = np.asarray(camera.extrinsic, dtype=np.float64)
    intrinsic = np.asarray(camera.intrinsic, dtype=np.float64)
    if extrinsic.shape != (4, 4) or intrinsic.shape != (3, 3):
        raise ValueError(
            f"{path}: camera needs a 4x4 extrinsic and 3x3 intrinsic, got {extrinsic.shape}, {intrinsic.shape}"
        )
    if (camera.depth_num is None) != (camera.depth_max is None):
        raise ValueError(f"{path}: depth_num and depth_max must both be given or both be None")
    lines = ["extrinsic"]
    lines += [" ".join(_fmt(v) for v in row) for row in extrinsic]
    lines += ["", "intrinsic"]
    lines += [" ".join(_fmt(v) for v in row) for row in intrinsic]
    depth = [_fmt(camera.depth_min), _fmt(camera.depth_interval)]
    if camera.depth_num is not None:
        depth += [str(int(camera.depth_num)), _fmt(camera.depth_max)]
    lines += ["", " ".join(depth), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="ascii")


# --------------------------------------------------------------------------------------------------
# pair.txt
# --------------------------------------------------------------------------------------------------

PairTable = dict[int, list[tuple[int, float]]]


def read_pair_file(path: PathLike) -> PairTable:
    """Read ``pair.txt``: ``{reference_view: [(source_view, score), ...]}`` in file order.

    Format: number of views, then per reference view one line with its id and one line
    ``N id score id score ...`` (N may be 0 or less than 10).

    Raises:
        BlendedMVSFormatError: missing file, truncated, wrong counts, duplicate reference views, non-numbers.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as e:
        raise BlendedMVSFormatError(f"{path}: cannot read pair file ({e.strerror})") from e
    lines = [(n + 1, line.split()) for n, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise BlendedMVSFormatError(f"{path}: pair file is empty")

    def as_int(token: str, lineno: int, what: str) -> int:
        try:
            return int(token)
        except ValueError as e:
            raise BlendedMVSFormatError(f"{path}:{lineno}: {what} {token!r} is not an integer") from e

    first_lineno, first = lines[0]
    if len(first) != 1:
        raise BlendedMVSFormatError(
            f"{path}:{first_lineno}: first line must be the number of views, got {first}"
        )
    num_views = as_int(first[0], first_lineno, "number of views")
    if num_views < 0:
        raise BlendedMVSFormatError(f"{path}:{first_lineno}: negative number of views {num_views}")
    body = lines[1:]
    if len(body) < 2 * num_views:
        raise BlendedMVSFormatError(
            f"{path}: truncated: header says {num_views} views ({2 * num_views} lines), found {len(body)} lines"
        )
    if len(body) > 2 * num_views:
        raise BlendedMVSFormatError(
            f"{path}:{body[2 * num_views][0]}: extra content after {num_views} views (header count wrong?)"
        )
    pairs: PairTable = {}
    for k in range(num_views):
        (ref_lineno, ref_tokens), (src_lineno, src_tokens) = body[2 * k], body[2 * k + 1]
        if len(ref_tokens) != 1:
            raise BlendedMVSFormatError(
                f"{path}:{ref_lineno}: expected a single reference view id, got {' '.join(ref_tokens)!r}"
            )
        ref = as_int(ref_tokens[0], ref_lineno, "reference view id")
        if ref in pairs:
            raise BlendedMVSFormatError(f"{path}:{ref_lineno}: reference view {ref} listed twice")
        count = as_int(src_tokens[0], src_lineno, "number of source views")
        if count < 0 or len(src_tokens) != 1 + 2 * count:
            raise BlendedMVSFormatError(
                f"{path}:{src_lineno}: source line of view {ref} says {count} views, so needs {1 + 2 * count} "
                f"tokens, has {len(src_tokens)}"
            )
        sources = []
        for j in range(count):
            src = as_int(src_tokens[1 + 2 * j], src_lineno, "source view id")
            try:
                score = float(src_tokens[2 + 2 * j])
            except ValueError as e:
                raise BlendedMVSFormatError(
                    f"{path}:{src_lineno}: score {src_tokens[2 + 2 * j]!r} is not a number"
                ) from e
            sources.append((src, score))
        pairs[ref] = sources
    return pairs


def write_pair_file(path: PathLike, pairs: PairTable) -> None:
    """Write ``pair.txt`` from ``{reference_view: [(source_view, score), ...]}``. Creates parent dirs."""
    path = Path(path)
    lines = [str(len(pairs))]
    for ref, sources in pairs.items():
        lines.append(str(int(ref)))
        lines.append(" ".join([str(len(sources))] + [f"{int(s)} {float(score)!r}" for s, score in sources]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------

_JPEG_EXT = re.compile(r"\.(jpe?g)$", re.IGNORECASE)


def read_image_gray(path: PathLike) -> np.ndarray:
    """Read an image as uint8 grayscale ``(H, W)`` (:func:`loftr_kd.images.read_image`), as stored: its
    depth map and camera describe the stored raster, so an EXIF orientation tag (a camera app's, on a scene
    made by hand) is not applied; applied, it turned the image but not its depth, intrinsics and pose.

    Raises:
        BlendedMVSFormatError: missing, unreadable, truncated (JPEG/PNG) or empty image.
    """
    try:
        return images.read_image(path, gray=True, upright=False)
    except (images.ImageError, OSError) as e:
        raise BlendedMVSFormatError(str(e)) from None


def read_image_size(path: PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image (:func:`loftr_kd.images.read_image_size`).

    Raises:
        BlendedMVSFormatError: missing, unreadable or empty image.
    """
    try:
        return images.read_image_size(path)
    except (images.ImageError, OSError) as e:
        raise BlendedMVSFormatError(str(e)) from None


def write_image(path: PathLike, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an image (uint8 gray or BGR) with OpenCV, creating parent dirs; raise naming the file on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if _JPEG_EXT.search(path.name) else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(image), params):
        raise OSError(f"{path}: OpenCV could not write the image")


__all__ = [
    "BlendedMVSFormatError",
    "Camera",
    "PFMHeader",
    "PairTable",
    "cam_path",
    "depth_path",
    "image_path",
    "pair_path",
    "read_cam",
    "read_image_gray",
    "read_image_size",
    "read_pair_file",
    "read_pfm",
    "read_pfm_header",
    "write_cam",
    "write_image",
    "write_pair_file",
    "write_pfm",
]
