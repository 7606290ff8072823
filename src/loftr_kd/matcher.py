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
an error when that would exceed the model's maximum size. A uniform image (every pixel the same: a black or
covered camera frame, a failed capture) has nothing to match; it is matched, with a warning that says so.

``OpenCVMatcher`` (ORB, SIFT; :mod:`loftr_kd.classical`) has the same call interface and serves as the
classical reference in the evaluation and the apps; :func:`build_matcher` gives either.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loftr_kd.backends import check_device, open_backend
from loftr_kd.classical import (  # noqa: F401 - CLASSICAL_METHODS and OpenCVMatcher are public here
    CLASSICAL_METHODS,
    OpenCVMatcher,
    _empty_result,
)
from loftr_kd.errors import user_stacklevel
from loftr_kd.features import ImageFeatures
from loftr_kd.images import (  # noqa: F401 - to_gray_float is public here
    ImageError,
    check_aspect,
    nearly_black,
    to_gray_float,
    uniform_value,
    value_scale,
)
from loftr_kd.resizing import (  # noqa: F401 - public here since before they moved
    Letterbox,
    aspect_true_size,
    letterbox,
    resize_aspect_true,
)
from loftr_kd.runtime import (  # noqa: F401 - BACKENDS, MatcherError and torch_threads are public here
    BACKENDS,
    DEFAULT_TORCH_THREADS,
    Backend,
    EncodedBatch,
    MatcherError,
    ModelGeometry,
    ModelOutputs,
    check_backend,
    no_split_error,
    torch_threads,
)
from loftr_kd.runtime.backend import cell_centres

# Pretrained matchers from the teachers' wheels (loftr_kd.teachers.matchers; `make teachers`).
REFERENCE_METHODS = ("xfeat", "xfeat_lighterglue", "disk_lightglue", "aliked_lightglue")


def grid_cell_centers(h: int, w: int, stride: int) -> np.ndarray:
    """(h*w, 2) xy centres of a row-major coarse grid (:class:`loftr_kd.geometry.CoarseGrid`)."""
    from loftr_kd.geometry import CoarseGrid

    return CoarseGrid(stride, h, w).centers().numpy().astype(np.float64)


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
        use_refinement: return the refined (sub-pixel) positions where the model has a refinement stage;
            ``False`` returns the two matched cells' centres (to measure what refinement adds).

    Calling ``matcher(image0, image1)`` returns ``{"keypoints0": (N, 2), "keypoints1": (N, 2),
    "confidence": (N,), "coarse_keypoints0": (N, 2), "coarse_keypoints1": (N, 2)}`` as float32, keypoints
    in the pixels of the images as given (pixel centres at integers, always inside the image);
    ``coarse_keypoints0`` / ``coarse_keypoints1`` are each match's image0 / image1 cell centres (with corner
    queries, ``refine_query="corner"``, the shipped default's, ``keypoints0`` is a pixel inside its cell
    instead of the centre; a model built with ``refine_points=k`` gives up to ``k`` matches per cell, each with
    its cell's centres). The model itself runs in ``self.runner`` (a :class:`~loftr_kd.runtime.Backend`,
    built by :func:`~loftr_kd.backends.open_backend`); the Matcher resizes, letterboxes and maps back.
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
        if threshold is not None and not 0.0 <= float(threshold) < 1.0:  # NaN fails too
            raise ValueError(
                f"threshold={threshold}: expected a match confidence in [0, 1) (the dual-softmax "
                f"probability a match must reach; default: the model's)"
            )
        check_device(device, backend)
        if weights is None and backend == "trt":
            raise MatcherError(
                "backend 'trt' needs a TensorRT engine, and none ships (an engine is built for one GPU and "
                "TensorRT version): build one with loftr-kd-export on this machine and pass it as "
                "--weights / Matcher(weights=...)"
            )
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
        self.border_cells = int(self.config.get("border_removal", 0) or 0)
        self.min_cells = max(2, 2 * self.border_cells + 1)
        self._grid: np.ndarray | None = None
        self.size = size

    @property
    def size(self) -> int:
        """Long side images are resized to (a dynamic model's; a static model's input side), checked when set."""
        return self._size

    @size.setter
    def size(self, value: int | None) -> None:
        self._size = self._check_size(value)

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
        whole = isinstance(size, int | np.integer) or (isinstance(size, float) and size.is_integer())
        if size is not None and (isinstance(size, bool) or not whole):
            raise ValueError(f"size={size!r}: expected a whole number of pixels for the long side")
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
            prepared = letterbox(gray, self.input_height, self.input_width, self.min_side)
        else:
            size = self.size if size is None else self._check_size(size)
            self.input_shape(*gray.shape, name=name, size=size)  # the engine profile's limits
            prepared = resize_aspect_true(
                gray, size, self.stride, min_cells=self.min_cells, max_size=self.max_size, name=name
            )
        low = uniform_value(gray)
        if low is not None:
            warnings.warn(
                f"{name} is uniform (every pixel {low:.3g} on the 0-1 scale): it has nothing to match, and any "
                f"match on it is not a real correspondence",
                stacklevel=user_stacklevel(),
            )
        elif (high := nearly_black(gray)) is not None:
            warnings.warn(
                f"{name} is nearly black: its brightest pixel is {high:.3g} on the 0-1 scale ({image.dtype} "
                f"is read in [0, {value_scale(image, name):g}]), so few or no matches are found; a uint16 "
                "array holding 8- or 10-bit values, or a float image with values a little above 1, must be "
                "rescaled to its own range first (docs/usage.md, 'Images')",
                stacklevel=user_stacklevel(),
            )
        return prepared

    def __call__(
        self,
        image0: np.ndarray | ImageFeatures,
        image1: np.ndarray | ImageFeatures,
        *,
        size0: int | None = None,
        size1: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Match two images; ``size0`` / ``size1`` override each image's long side for this call (any-size
        models only), e.g. to show one image at half the resolution of the other.

        Either image may be given encoded (:meth:`encode`): the image is then not encoded again, and the
        result is the one for the image itself (bit for bit on an onnxruntime file whose whole graph encodes
        the two images apart, as dynamic-shape exports do; float rounding elsewhere, docs/usage.md).

        Raises:
            MatcherError: features from another model, or encoded at another long side than this call's.
        """
        if not isinstance(image0, ImageFeatures) and not isinstance(image1, ImageFeatures):
            input0, box0 = self.prepare(image0, "image0", size0)
            input1, box1 = self.prepare(image1, "image1", size1)
            outputs = self.runner.run(self.runner.feed(input0[None, None], input1[None, None]))
            return self._result(outputs, 0, box0, box1)
        features0 = self._features(image0, "image0", size0)
        features1 = self._features(image1, "image1", size1)
        return self.match_batch([(features0, features1)])[0]

    # ------------------------------------------------------------------ encode once, match many
    @property
    def can_encode(self) -> bool:
        """The model runs in two halves, so :meth:`encode` works: always for a checkpoint; for an exported
        file, where ``loftr-kd-export``'s encoder and matcher graphs lie beside it."""
        return self.runner.can_encode

    @functools.cached_property
    def model_id(self) -> str:
        """The weights' content digest and the backend; features carry it, another model's are refused (the
        same weights under another file name are the same model)."""
        digest = hashlib.sha1(self.weights.read_bytes()).hexdigest()[:12]
        return f"sha1 {digest} on {self.backend}"

    def encode(self, image: np.ndarray, *, size: int | None = None, name: str = "image") -> ImageFeatures:
        """The per-image half of the model for ``image`` (resized as a call resizes it), to match against
        many others without encoding it again: ``matcher(features, frame)``.

        Args:
            image: any size, gray or colour (as :meth:`__call__` takes).
            size: long side (any-size models); default the matcher's ``size``. A call that uses these
                features must match them at the same long side (``size0=`` / ``size1=``).
            name: the image's name in error messages.

        Raises:
            MatcherError: the file has no split export beside it (:attr:`can_encode`).
            ImageError: the image cannot be matched (too small, too elongated, NaN pixels).
        """
        return self.encode_batch([image], size=size, name=name)[0]

    def encode_batch(
        self, images: Sequence[np.ndarray], *, size: int | None = None, name: str = "image"
    ) -> list[ImageFeatures]:
        """:meth:`encode` for several images; those of one model-input shape are encoded in one batched call."""
        if isinstance(images, np.ndarray):
            raise TypeError(
                f"encode_batch takes a sequence of images (a list), got one {images.ndim}-D array; "
                "for a single image use encode(image)"
            )
        if not self.can_encode:
            raise no_split_error(self.weights, self.backend)
        rule = self._size_rule(size)
        names = [name if len(images) == 1 else f"{name}[{i}]" for i in range(len(images))]
        prepared = [self.prepare(image, n, size) for image, n in zip(images, names)]
        features: list[ImageFeatures | None] = [None] * len(prepared)
        for rows in self._batches([prepared[i][0].shape for i in range(len(prepared))]):
            encoded = self.runner.encode(np.stack([prepared[i][0] for i in rows])[:, None])
            for row, i in enumerate(rows):
                part = encoded.take(row)
                features[i] = ImageFeatures(
                    part.coarse, part.fine, prepared[i][1], rule, self.model_id, part.queries
                )
        return features

    def match_batch(
        self, pairs: Sequence[tuple[ImageFeatures, ImageFeatures]]
    ) -> list[dict[str, np.ndarray]]:
        """Match encoded pairs; pairs of the same shapes go through the matcher half in one batched call.

        Returns:
            One :meth:`__call__` result per pair, in order.
        """
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise TypeError(
                    f"match_batch takes a sequence of (features0, features1) pairs; pairs[{i}] is "
                    f"{type(pair).__name__}, not a pair"
                )
            features0, features1 = pair
            self._check_features(features0, f"pairs[{i}][0]")
            self._check_features(features1, f"pairs[{i}][1]")
        results: list[dict[str, np.ndarray] | None] = [None] * len(pairs)
        for rows in self._batches([(f0.coarse.shape, f1.coarse.shape) for f0, f1 in pairs]):
            encoded0, encoded1 = (_stack([pairs[i][side] for i in rows]) for side in (0, 1))
            outputs = self.runner.match(encoded0, encoded1)
            for row, i in enumerate(rows):
                results[i] = self._result(outputs, row, pairs[i][0].box, pairs[i][1].box)
        return results

    def _batches(self, keys: Sequence[Any]) -> list[list[int]]:
        """Indices grouped by equal ``keys`` (shapes), in order, each group cut to the backend's batch limit."""
        groups: dict[Any, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        limit = self.runner.split_batch or max(len(keys), 1)
        return [rows[k : k + limit] for rows in groups.values() for k in range(0, len(rows), limit)]

    def _size_rule(self, size: int | None) -> int | None:
        """The long side an image is encoded at (``None``: a static file's letterbox)."""
        if not self.dynamic:
            self._check_size(size)  # a static input cannot take another size: the error says so
            return None
        return self.size if size is None else self._check_size(size)

    def _features(self, image: np.ndarray | ImageFeatures, name: str, size: int | None) -> ImageFeatures:
        """``image`` encoded, or features checked against this call (model, long side)."""
        if not isinstance(image, ImageFeatures):
            return self.encode(image, size=size, name=name)
        self._check_features(image, name)
        rule = self._size_rule(size)
        if image.size != rule:
            side = f"size{name[-1]}"
            raise MatcherError(
                f"{name} was encoded at long side {image.size}, but this call matches it at {rule}: pass "
                f"{side}={image.size}, or encode it at {rule}"
            )
        return image

    def _check_features(self, features: ImageFeatures, name: str) -> None:
        """Features this matcher can match (encoded by the same weights and backend)."""
        if not isinstance(features, ImageFeatures):
            raise TypeError(
                f"{name} must be ImageFeatures from Matcher.encode, got {type(features).__name__}"
            )
        if features.model != self.model_id:
            raise MatcherError(
                f"{name} was encoded by another model (weights {features.model}), not this matcher's "
                f"({self.weights.name}, {self.model_id}); encode the image with this matcher"
            )

    def _result(
        self, outputs: ModelOutputs, row: int, box0: Letterbox, box1: Letterbox
    ) -> dict[str, np.ndarray]:
        """Row ``row`` of the model's outputs as matches in the pixels of the images as given."""
        match_ids, match_conf = outputs.match_ids[row], outputs.match_confidence[row]
        all_points0, all_points1 = outputs.points0[row], outputs.points1[row]
        keep = match_ids >= 0
        if self.threshold is not None:
            keep &= match_conf >= self.threshold
        # with several points per cell (refine_points) entry e belongs to cell e % cells (MatchEntries)
        cells = (box0.input_height // self.stride) * (box0.input_width // self.stride)
        if not self.use_refinement:
            keep[cells:] = False  # one pair of cell centres per match, not one per point
        idx0 = np.nonzero(keep)[0]
        if idx0.size == 0:
            return _empty_result()
        points0 = all_points0[idx0].astype(np.float64)  # model-input pixels (refined where the model refines)
        points1 = all_points1[idx0].astype(np.float64)
        cells0 = cell_centres(idx0 % cells, (box0.input_height, box0.input_width), self.stride)
        cells1 = cell_centres(match_ids[idx0], (box1.input_height, box1.input_width), self.stride)
        if not self.use_refinement:  # both cell centres (corner queries moved image0's point too)
            points0, points1 = cells0.astype(np.float64), cells1.astype(np.float64)
        inside = box0.in_content(points0) & box1.in_content(points1)
        # The model removes border cells of its input; a letterboxed image's content ends inside it, at the
        # right or bottom, and its last cells there are removed here the same way (the dynamic path's input
        # is the content, and the model's own rule covers all four sides).
        inside &= _off_content_border(idx0 % cells, box0, self.stride, self.border_cells)
        inside &= _off_content_border(match_ids[idx0], box1, self.stride, self.border_cells)
        keypoints0, inside0 = _inside_image(box0.to_original(points0), box0)
        keypoints1, inside1 = _inside_image(box1.to_original(points1), box1)
        inside &= inside0 & inside1
        return {
            "keypoints0": keypoints0[inside].astype(np.float32),
            "keypoints1": keypoints1[inside].astype(np.float32),
            "confidence": match_conf[idx0][inside].astype(np.float32),
            "coarse_keypoints0": box0.to_original(cells0[inside]).astype(np.float32),
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


def _stack(features: Sequence[ImageFeatures]) -> EncodedBatch:
    """Features of one shape as a batch for the backend's matcher half."""
    fine = None if features[0].fine is None else np.stack([f.fine for f in features])
    queries = None if features[0].queries is None else np.stack([f.queries for f in features])
    return EncodedBatch(np.stack([f.coarse for f in features]), fine, queries)


def _off_content_border(ids: np.ndarray, box: Letterbox, stride: int, border: int) -> np.ndarray:
    """(N,) bool: the cells ``ids`` of the model input are not among the last ``border`` cells of the
    letterboxed content, on its right and bottom (every cell the content reaches into counts)."""
    if border <= 0:
        return np.ones(len(ids), bool)
    columns = -(-box.content_width // stride)  # cells the content covers, the last perhaps in part
    rows = -(-box.content_height // stride)
    row, column = np.divmod(np.asarray(ids, np.int64), box.input_width // stride)
    return (column < columns - border) & (row < rows - border)


def _inside_image(points: np.ndarray, box: Letterbox) -> tuple[np.ndarray, np.ndarray]:
    """Points of the image as given, clipped onto its pixel centres, and which of them lay on its area
    ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` (a refined position can reach past an edge; those are dropped)."""
    size = np.array([box.orig_width, box.orig_height], np.float64)
    on_image = ((points >= -0.5) & (points <= size - 0.5)).all(-1)
    return np.clip(points, 0.0, size - 1.0), on_image


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
