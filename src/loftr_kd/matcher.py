"""User-facing matcher: two images in, matched keypoints in their own pixels out.

``Matcher`` wraps the coarse student behind one of three backends (PyTorch, onnxruntime, TensorRT: the
:mod:`loftr_kd.runtime` backends, which run the model and read its geometry from the file's metadata).
Images of any size and colour mode are converted to grayscale and resized **aspect-true**: the long side
becomes the configured ``size`` and each side is rounded to a multiple of the coarse stride, with no
padding, so the two images of a pair may differ in size. That needs a model that takes any size: the
PyTorch student, a dynamic-shape ONNX file (``loftr-kd-export dynamic=true``; checkpoints on the onnx
backend are exported that way) or an engine built from one. A **static** file (fixed input size) has
only one input size: there images are letterboxed (resized keeping the aspect ratio, padded at the
bottom/right) into it and matches in the padding are dropped. The model's match positions are mapped back
to the pixels of the images as given, always inside them. The grid geometry comes from the weights'
metadata, never from a guess.

Degenerate inputs are errors that say what is wrong (:class:`~loftr_kd.images.ImageError`): an empty
image, NaN/Inf pixels, a side shorter than two coarse cells. An image so elongated that, resized, its
short side would leave no cell inside the border removal is enlarged until it does, with a warning, or is
an error when that would exceed the model's maximum size.

``OpenCVMatcher`` (ORB, SIFT) has the same call interface and serves as the classical reference in
the evaluation and the apps.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from loftr_kd.images import ImageError, check_aspect, to_gray_float  # noqa: F401 - to_gray_float is public here
from loftr_kd.runtime import (  # noqa: F401 - BACKENDS, MatcherError and torch_threads are public here
    BACKENDS,
    DEFAULT_TORCH_THREADS,
    Backend,
    MatcherError,
    ModelGeometry,
    check_backend,
    open_backend,
    torch_threads,
)
from loftr_kd.runtime.backend import cell_centres

CLASSICAL_METHODS = ("orb", "sift")
# Pretrained matchers from the teachers' wheels (loftr_kd.teachers.matchers; `make teachers`).
REFERENCE_METHODS = ("xfeat", "xfeat_lighterglue", "disk_lightglue", "aliked_lightglue")


@dataclass(frozen=True)
class Letterbox:
    """Geometry of an image resized (aspect kept) and padded at the bottom/right to the model input; an
    aspect-true resize is the case without padding (content size = input size)."""

    orig_height: int
    orig_width: int
    content_height: int  # size of the resized image inside the padded input
    content_width: int
    input_height: int
    input_width: int

    @property
    def scale(self) -> tuple[float, float]:
        """Per-axis scale (x, y) from original to model pixels."""
        return self.content_width / self.orig_width, self.content_height / self.orig_height

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) xy model-input pixels to original pixels (pixel centres at integers)."""
        sx, sy = self.scale
        return (points + 0.5) / np.array([sx, sy], dtype=np.float64) - 0.5

    def to_model(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) xy original pixels to model-input pixels."""
        sx, sy = self.scale
        return (points + 0.5) * np.array([sx, sy], dtype=np.float64) - 0.5

    def in_content(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: the model-input point lies on the resized image, not in the padding."""
        return (points[:, 0] <= self.content_width - 0.5) & (points[:, 1] <= self.content_height - 0.5)


def letterbox(
    gray: np.ndarray, input_height: int, input_width: int, min_side: int = 1
) -> tuple[np.ndarray, Letterbox]:
    """Resize (H, W) float32 keeping aspect to fit (input_height, input_width); pad bottom/right with 0.

    Raises:
        ValueError: if the image's shorter side is below ``min_side`` pixels.
    """
    h, w = gray.shape[:2]
    if min(h, w) < min_side:
        raise ValueError(
            f"image of {w}x{h} pixels is too small: the shorter side must be at least {min_side} px "
            f"(two coarse cells)"
        )
    check_aspect(h, w, input_height, input_width, min_side)
    scale = min(input_height / h, input_width / w)
    new_w = min(input_width, max(1, round(w * scale)))
    new_h = min(input_height, max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    resized = (
        cv2.resize(gray, (new_w, new_h), interpolation=interpolation) if (new_w, new_h) != (w, h) else gray
    )
    padded = np.zeros((input_height, input_width), dtype=np.float32)
    padded[:new_h, :new_w] = resized
    return padded, Letterbox(h, w, new_h, new_w, input_height, input_width)


def aspect_true_size(
    height: int,
    width: int,
    size: int,
    stride: int,
    *,
    min_cells: int = 2,
    max_size: tuple[int, int] | None = None,
    name: str = "image",
) -> tuple[int, int, bool]:
    """Model input ``(height, width)`` of an image: the long side scaled to ``size``, each side rounded to
    a multiple of ``stride`` (no padding), within ``max_size``.

    A side that would get fewer than ``min_cells`` cells is raised to ``min_cells`` cells, the other side
    scaled with it (``enlarged`` is then True), so a thin strip still has cells to match.

    Returns:
        ``(input_height, input_width, enlarged)``.

    Raises:
        ImageError: a side of the image is shorter than two cells, or the enlarged strip exceeds ``max_size``.
    """
    if min(height, width) < 2 * stride:
        raise ImageError(
            f"{name} of {width}x{height} pixels is too small: the shorter side must be at least {2 * stride} px "
            f"(two coarse cells of {stride} px)"
        )
    max_h, max_w = max_size or (1 << 30, 1 << 30)
    scale = min(size / max(height, width), max_h / height, max_w / width)
    floor_px = min_cells * stride
    enlarged = min(height, width) * scale < floor_px - stride / 2
    if enlarged:
        scale = floor_px / min(height, width)

    def side(length: int) -> int:
        return int(max(round(length * scale / stride), 1) * stride)

    input_h, input_w = side(height), side(width)
    if enlarged and (input_h > max_h or input_w > max_w):
        raise ImageError(
            f"{name} of {width}x{height} pixels is too elongated: with its short side at {floor_px} px "
            f"({min_cells} coarse cells, the least that survives border removal) the long side would exceed the "
            f"model's maximum {max_w}x{max_h}; crop it first"
        )
    return min(input_h, max_h // stride * stride), min(input_w, max_w // stride * stride), enlarged


def resize_aspect_true(
    gray: np.ndarray,
    size: int,
    stride: int,
    *,
    min_cells: int = 2,
    max_size: tuple[int, int] | None = None,
    name: str = "image",
) -> tuple[np.ndarray, Letterbox]:
    """Resize (H, W) float32 so the long side is ``size`` and both sides are multiples of ``stride``
    (:func:`aspect_true_size`); warns when a thin image had to be enlarged."""
    h, w = gray.shape[:2]
    input_h, input_w, enlarged = aspect_true_size(
        h, w, size, stride, min_cells=min_cells, max_size=max_size, name=name
    )
    if enlarged:
        warnings.warn(
            f"{name} of {w}x{h} pixels is too elongated for a long side of {size} px: its short side would get "
            f"fewer than {min_cells} coarse cells (border removal leaves none), so it is matched at "
            f"{input_w}x{input_h} instead",
            UserWarning,
            stacklevel=3,
        )
    interpolation = cv2.INTER_AREA if input_h * input_w < h * w else cv2.INTER_LINEAR
    resized = (
        cv2.resize(gray, (input_w, input_h), interpolation=interpolation)
        if (input_h, input_w) != (h, w)
        else gray
    )
    return np.ascontiguousarray(resized, dtype=np.float32), Letterbox(
        h, w, input_h, input_w, input_h, input_w
    )


def grid_cell_centers(h: int, w: int, stride: int) -> np.ndarray:
    """(h*w, 2) xy centres of a row-major coarse grid (:class:`loftr_kd.geometry.CoarseGrid`)."""
    from loftr_kd.geometry import CoarseGrid

    return CoarseGrid(stride, h, w).centers().numpy().astype(np.float64)


def _empty_result() -> dict[str, np.ndarray]:
    return {
        "keypoints0": np.zeros((0, 2), np.float32),
        "keypoints1": np.zeros((0, 2), np.float32),
        "confidence": np.zeros((0,), np.float32),
        "coarse_keypoints1": np.zeros((0, 2), np.float32),
    }


def _missing_weights_message(path: Path) -> str:
    return (
        f"no student weights at {path}. Train one with `make train` (it writes the best student to "
        f"the run directory; copy it to {path}) or pass a file with --weights / Matcher(weights=...) "
        f"(.pt/.ckpt from training, .onnx from loftr-kd-export, or a TensorRT .engine)."
    )


class Matcher:
    """Coarse student matcher over PyTorch, onnxruntime or TensorRT.

    Args:
        weights: ``.pt``/``.ckpt`` (student checkpoint), ``.onnx`` (exported student) or a TensorRT
            engine; ``None`` = the shipped student (:func:`loftr_kd.paths.default_student_weights`: its
            ``.onnx`` for the onnx backend, which needs neither torch nor an export, its ``.pt`` for torch).
        backend: ``"onnx"`` (default; a checkpoint is exported on the fly, with dynamic shapes, to a
            cache), ``"torch"`` or ``"trt"``.
        device: ``"cpu"`` or ``"cuda"`` (torch and onnx backends).
        threshold: match-confidence threshold override. Checkpoints are rebuilt with it; for a baked
            graph (``.onnx``/engine) it can only be raised above the exported threshold.
        size: long side, in pixels, images are resized to (aspect kept, each side rounded to a multiple
            of the stride); default: the long side of the model's configured input (640 for the shipped
            student). Only for models that take any size; a static file's size is fixed.
        input_size: ``(height, width)`` override of the model's configured input (checkpoints only): the
            default ``size`` and the size of the cached ONNX export's traced graph.
        threads: intra-op CPU threads. onnxruntime: default ``os.cpu_count()``. torch: default
            :data:`DEFAULT_TORCH_THREADS` (1: more collapses when other processes use the CPU, see
            docs/usage.md), applied around each call only, so the caller's torch setting is untouched.
        num_threads: older name of ``threads``.
        cache_dir: where checkpoints are exported to ONNX (default: the user's cache folder,
            :func:`loftr_kd.paths.cache_dir`, else a temporary directory).
        use_refinement: return the refined (sub-pixel) image1 positions where the model has a
            refinement stage; ``False`` returns the matched cells' centres (to measure what refinement adds).

    Calling ``matcher(image0, image1)`` returns ``{"keypoints0": (N, 2), "keypoints1": (N, 2),
    "confidence": (N,), "coarse_keypoints1": (N, 2)}`` as float32, keypoints in the pixels of the images
    as given (pixel centres at integers, always inside the image); ``coarse_keypoints1`` is each match's
    image1 cell centre. The model itself runs in ``self.runner`` (a :class:`~loftr_kd.runtime.Backend`,
    built by :func:`~loftr_kd.runtime.open_backend`); the Matcher resizes, letterboxes and maps back.
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        backend: str = "onnx",
        device: str = "cpu",
        threshold: float | None = None,
        input_size: tuple[int, int] | None = None,
        num_threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        use_refinement: bool = True,
        size: int | None = None,
        threads: int | None = None,
    ) -> None:
        backend = check_backend(backend)
        if threads is not None and num_threads is not None and int(threads) != int(num_threads):
            raise ValueError(f"threads={threads} and num_threads={num_threads} disagree; give one")
        threads = threads if threads is not None else num_threads
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if weights is None:
            from loftr_kd.paths import default_student_weights

            weights = default_student_weights(backend)
            if not Path(weights).is_file():
                raise FileNotFoundError(_missing_weights_message(Path(weights)))
        self.weights = Path(weights)
        if self.weights.is_dir():
            raise IsADirectoryError(f"weights {self.weights} is a directory, not a weights file")
        if not self.weights.exists():
            raise FileNotFoundError(f"weights file not found: {self.weights}")
        from loftr_kd.files import check_input_file

        check_input_file(self.weights, "weights")  # a pipe or a device would hang; an empty file is named
        self.backend = backend
        self.use_refinement = bool(use_refinement)
        default_threads = DEFAULT_TORCH_THREADS if backend == "torch" else os.cpu_count() or 1
        self.num_threads = int(threads or default_threads)
        self.name = f"student-{backend}"
        self.runner: Backend = open_backend(
            self.weights,
            backend,
            device=device,
            threads=self.num_threads,
            threshold=threshold,
            input_size=input_size,
            cache_dir=cache_dir,
        )
        self.device = self.runner.device
        if backend == "onnx":
            self.onnx_path = self.runner.path
        self.geometry: ModelGeometry = self.runner.geometry
        baked = self.geometry.baked_threshold
        self.threshold = baked if threshold is None else float(threshold)
        if threshold is not None and baked is not None and threshold < baked:
            raise MatcherError(
                f"threshold {threshold} is below {baked} baked into {self.weights.name}; "
                f"export again with a lower match_threshold or use the checkpoint"
            )
        self.min_side = 2 * self.stride
        # border removal drops `border` cells on every side: a side needs 2 * border + 1 cells to keep one
        self.min_cells = max(2, 2 * int(self.config.get("border_removal", 0) or 0) + 1)
        self._grid: np.ndarray | None = None
        self.size = self._check_size(size)

    # ------------------------------------------------------------------ the model's geometry
    @property
    def config(self) -> dict[str, Any]:
        """The weights' ``student_config``."""
        return self.geometry.config

    @property
    def input_height(self) -> int:
        """The configured input's height (a static file's only one)."""
        return self.geometry.input_height

    @property
    def input_width(self) -> int:
        """The configured input's width (a static file's only one)."""
        return self.geometry.input_width

    @property
    def stride(self) -> int:
        """Coarse stride in pixels (from the weights' metadata)."""
        return self.geometry.stride

    @property
    def dynamic(self) -> bool:
        """The model takes any size (aspect-true resizing); else images are letterboxed into its input."""
        return self.geometry.dynamic

    @property
    def max_size(self) -> tuple[int, int] | None:
        """``(height, width)`` limit of a model that takes any size, else ``None``."""
        return self.geometry.max_size

    @property
    def min_size(self) -> tuple[int, int] | None:
        """``(height, width)`` smallest input (an engine profile's), else ``None``."""
        return self.geometry.min_size

    def _check_size(self, size: int | None) -> int:
        """The long side images are resized to (dynamic models), validated against the model's limits."""
        if not self.dynamic:
            if size is not None and int(size) != max(self.input_height, self.input_width):
                raise MatcherError(
                    f"{self.weights.name} has a static input of {self.input_width}x{self.input_height}: its size "
                    f"cannot be changed to {size} (images are letterboxed into it); export the checkpoint with "
                    f"`loftr-kd-export dynamic=true` for aspect-true matching at any size"
                )
            return max(self.input_height, self.input_width)
        size = int(size) if size is not None else max(self.input_height, self.input_width)
        longest = max(self.max_size) if self.max_size else size
        if size < 2 * self.stride or size > longest:
            raise ValueError(
                f"size {size} must be between {2 * self.stride} (two coarse cells) and {longest} (the largest side "
                f"{self.weights.name} takes)"
            )
        return size

    # ------------------------------------------------------------------ inference
    def input_grid(self, shape: tuple[int, int]):
        """The :class:`~loftr_kd.geometry.CoarseGrid` of a model input of ``shape`` ``(H, W)``."""
        from loftr_kd.geometry import CoarseGrid

        return CoarseGrid.for_image(int(shape[0]), int(shape[1]), self.stride)

    @property
    def coarse_grid(self):
        """The configured input's :class:`~loftr_kd.geometry.CoarseGrid` (from the weights' metadata)."""
        return self.input_grid((self.input_height, self.input_width))

    @property
    def grid(self) -> np.ndarray:
        """(L, 2) xy cell centres of the configured input's grid."""
        if self._grid is None:
            self._grid = self.coarse_grid.centers().numpy().astype(np.float64)
        return self._grid

    def input_shape(
        self, height: int, width: int, name: str = "image", size: int | None = None
    ) -> tuple[int, int]:
        """Model input ``(H, W)`` for an image of ``height x width`` (aspect-true, or the static input);
        ``size`` overrides the long side (models that take any size only).

        Raises:
            ImageError: the image is too small or too elongated to match (message names ``name``).
        """
        if not self.dynamic:
            if min(height, width) < self.min_side:
                raise ImageError(
                    f"{name} of {width}x{height} pixels is too small: the shorter side must be at least "
                    f"{self.min_side} px (two coarse cells)"
                )
            check_aspect(height, width, self.input_height, self.input_width, self.min_side, name)
            return self.input_height, self.input_width
        size = self.size if size is None else self._check_size(size)
        shape = aspect_true_size(
            height, width, size, self.stride, min_cells=self.min_cells, max_size=self.max_size, name=name
        )[:2]
        if self.min_size and (shape[0] < self.min_size[0] or shape[1] < self.min_size[1]):
            raise MatcherError(
                f"{name} of {width}x{height} pixels becomes {shape[1]}x{shape[0]} at size {size}, below the "
                f"smallest input of the engine's optimisation profile {self.min_size[1]}x{self.min_size[0]} "
                f"({self.weights.name}); use a larger size or rebuild the engine with a smaller profile min"
            )
        return shape

    def prepare(
        self, image: np.ndarray, name: str = "image", size: int | None = None
    ) -> tuple[np.ndarray, Letterbox]:
        """Image as given -> ((H_in, W_in) float32 model input, its resize geometry); ``size`` overrides
        the long side for this image (models that take any size only)."""
        gray = to_gray_float(image, name)
        if not self.dynamic:
            self._check_size(size)  # a static input cannot take another size: the error says so
            self.input_shape(*gray.shape, name=name)
            return letterbox(gray, self.input_height, self.input_width, self.min_side)
        size = self.size if size is None else self._check_size(size)
        self.input_shape(*gray.shape, name=name, size=size)  # the engine profile's limits
        return resize_aspect_true(
            gray, size, self.stride, min_cells=self.min_cells, max_size=self.max_size, name=name
        )

    def __call__(
        self, image0: np.ndarray, image1: np.ndarray, *, size0: int | None = None, size1: int | None = None
    ) -> dict[str, np.ndarray]:
        """Match two images; ``size0`` / ``size1`` override each image's long side for this call (any-size
        models only), e.g. to show one image at half the resolution of the other."""
        input0, box0 = self.prepare(image0, "image0", size0)
        input1, box1 = self.prepare(image1, "image1", size1)
        outputs = self.runner.run(self.runner.feed(input0[None, None], input1[None, None]))
        match_ids, match_conf = outputs.match_ids[0], outputs.match_confidence[0]
        all_points0, all_points1 = outputs.points0[0], outputs.points1[0]
        keep = match_ids >= 0
        if self.threshold is not None:
            keep &= match_conf >= self.threshold
        idx0 = np.nonzero(keep)[0]
        if idx0.size == 0:
            return _empty_result()
        points0 = all_points0[idx0].astype(np.float64)  # model-input pixels (refined where the model refines)
        points1 = all_points1[idx0].astype(np.float64)
        cells1 = cell_centres(match_ids[idx0], input1.shape, self.stride)
        if not self.use_refinement:
            points1 = cells1.astype(np.float64)
        inside = box0.in_content(points0) & box1.in_content(points1)
        keypoints0, inside0 = _inside_image(box0.to_original(points0), box0)
        keypoints1, inside1 = _inside_image(box1.to_original(points1), box1)
        inside &= inside0 & inside1
        return {
            "keypoints0": keypoints0[inside].astype(np.float32),
            "keypoints1": keypoints1[inside].astype(np.float32),
            "confidence": match_conf[idx0][inside].astype(np.float32),
            "coarse_keypoints1": box1.to_original(cells1[inside]).astype(np.float32),
        }

    def __repr__(self) -> str:
        mode = (
            f"aspect-true, long side {self.size}"
            if self.dynamic
            else f"static {self.input_width}x{self.input_height}, letterboxed"
        )
        return (
            f"Matcher(weights={str(self.weights)!r}, backend={self.backend!r}, {mode}, stride={self.stride}, "
            f"threshold={self.threshold}, threads={self.num_threads})"
        )


def _inside_image(points: np.ndarray, box: Letterbox) -> tuple[np.ndarray, np.ndarray]:
    """Points of the image as given, clipped onto its pixel centres, and which of them lay on its area
    ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (a refined position can reach past an edge; those are dropped)."""
    size = np.array([box.orig_width, box.orig_height], np.float64)
    on_image = ((points >= -0.5) & (points <= size - 0.5)).all(-1)
    return np.clip(points, 0.0, size - 1.0), on_image


class OpenCVMatcher:
    """Classical reference matcher (ORB or SIFT + brute-force matching) with the ``Matcher`` interface.

    ORB uses Hamming distance with a cross check (confidence = 1 - distance / 256); SIFT uses Lowe's
    ratio test (confidence = 1 - ratio). Images are matched at their own size unless ``max_side``
    limits it (keypoints are scaled back to the pixels as given).
    """

    def __init__(self, method: str = "orb", max_features: int = 2000, ratio: float = 0.8, max_side: int = 0):
        if method not in CLASSICAL_METHODS:
            raise ValueError(f"unknown classical method {method!r}; choose one of {CLASSICAL_METHODS}")
        self.method, self.name, self.ratio, self.max_side = method, method, ratio, max_side
        self.threshold = None
        if method == "orb":
            self._detector = cv2.ORB_create(nfeatures=max_features)
            self._matcher = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True)
        else:
            self._detector = cv2.SIFT_create(nfeatures=max_features)
            self._matcher = cv2.BFMatcher(cv2.NORM_L2)

    def _detect(self, image: np.ndarray) -> tuple[np.ndarray, Any]:
        gray = (to_gray_float(image) * 255.0).round().astype(np.uint8)
        scale = 1.0
        if self.max_side and max(gray.shape) > self.max_side:
            scale = self.max_side / max(gray.shape)
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        keypoints, descriptors = self._detector.detectAndCompute(gray, None)
        points = np.array([k.pt for k in keypoints], dtype=np.float64).reshape(-1, 2)
        return (points + 0.5) / scale - 0.5, descriptors

    def __call__(self, image0: np.ndarray, image1: np.ndarray) -> dict[str, np.ndarray]:
        points0, desc0 = self._detect(image0)
        points1, desc1 = self._detect(image1)
        if desc0 is None or desc1 is None or len(points0) < 2 or len(points1) < 2:
            return _empty_result()
        if self.method == "orb":
            matches = self._matcher.match(desc0, desc1)
            pairs = [(m.queryIdx, m.trainIdx, 1.0 - m.distance / 256.0) for m in matches]
        else:
            pairs = []
            for candidates in self._matcher.knnMatch(desc0, desc1, k=2):
                if len(candidates) == 2 and candidates[0].distance < self.ratio * candidates[1].distance:
                    best, second = candidates
                    pairs.append(
                        (best.queryIdx, best.trainIdx, 1.0 - best.distance / max(second.distance, 1e-9))
                    )
        if not pairs:
            return _empty_result()
        i0, i1, conf = (np.array(v) for v in zip(*pairs))
        return {
            "keypoints0": points0[i0.astype(int)].astype(np.float32),
            "keypoints1": points1[i1.astype(int)].astype(np.float32),
            "confidence": conf.astype(np.float32),
        }

    def __repr__(self) -> str:
        return f"OpenCVMatcher({self.method!r})"


def build_matcher(
    backend: str = "onnx", weights: str | os.PathLike | None = None, **kwargs: Any
) -> Matcher | OpenCVMatcher:
    """``Matcher`` for a student backend (onnx/torch/trt) or ``OpenCVMatcher`` for orb/sift (wrap a student
    in guided matching with :func:`loftr_kd.registration.with_guidance`)."""
    import difflib
    import inspect

    student = set(inspect.signature(Matcher.__init__).parameters) - {"self", "backend"}
    classical = set(inspect.signature(OpenCVMatcher.__init__).parameters) - {"self", "method"}
    known = student | classical
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known | {"weights"}), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(
                f"{key!r} is not a matcher setting{hint}; students take {', '.join(sorted(student))}, "
                f"orb/sift take {', '.join(sorted(classical))}"
            )
    if backend in CLASSICAL_METHODS:
        # The students' settings (threads, size, ...) that a command passes to every method do not apply.
        return OpenCVMatcher(backend, **{k: v for k, v in kwargs.items() if k in classical})
    if backend in REFERENCE_METHODS:
        # A pretrained matcher a user would pick instead (loftr_kd.teachers.matchers): at the same long
        # side and CPU threads as the students.
        from loftr_kd.teachers.matchers import build_reference_matcher

        options = {"long_side": kwargs.get("size") or 640, "threads": kwargs.get("threads")}
        return build_reference_matcher(backend, **options)
    return Matcher(weights=weights, backend=backend, **{k: v for k, v in kwargs.items() if k in student})
