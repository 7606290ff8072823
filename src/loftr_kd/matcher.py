"""User-facing matcher: two images in, matched keypoints in their own pixels out.

``Matcher`` wraps the coarse student behind one of three backends (PyTorch, onnxruntime, TensorRT).
Images of any size and colour mode are converted to grayscale and letterboxed (resized keeping the
aspect ratio, padded at the bottom/right) to the model's static input size; the model's match
positions (image0 cell centres, image1 positions refined to sub-pixel where the model has a refinement
stage, else cell centres) are mapped back to the pixels of the images as given, and matches that lie in
the padding are dropped. The grid geometry comes from the weights' metadata, never from a guess.

``OpenCVMatcher`` (ORB, SIFT) has the same call interface and serves as the classical reference in
the evaluation and the apps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from loftr_kd.files import replacing
from loftr_kd.images import check_aspect, to_gray_float  # noqa: F401 - to_gray_float is public here

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "torch", "trt")
CLASSICAL_METHODS = ("orb", "sift")
_ENGINE_SUFFIXES = (".engine", ".trt", ".plan")
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")


class MatcherError(RuntimeError):
    """A matcher could not be built or run (missing/unfitting weights, unavailable backend)."""


@dataclass(frozen=True)
class Letterbox:
    """Geometry of an image resized (aspect kept) and padded at the bottom/right to the model input."""

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


def _check_cached_onnx(path: Path, weights: Path) -> None:
    """A cached export must parse; a corrupt one is never silently reused (nor deleted: it says how)."""
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf/onnx raise several types
        raise MatcherError(
            f"the cached ONNX export {path} of {weights} is corrupt ({type(err).__name__}); delete it "
            f"(rm '{path}') and run again to export it anew"
        ) from err


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
            engine; ``None`` = the student shipped in ``weights/``.
        backend: ``"onnx"`` (default; a checkpoint is exported on the fly to a cache), ``"torch"`` or
            ``"trt"``.
        device: ``"cpu"`` or ``"cuda"`` (torch and onnx backends).
        threshold: match-confidence threshold override. Checkpoints are rebuilt with it; for a baked
            graph (``.onnx``/engine) it can only be raised above the exported threshold.
        input_size: ``(height, width)`` override of the model input (checkpoints only).
        num_threads: onnxruntime intra-op threads (default: ``os.cpu_count()``); for the torch backend,
            when given, it is applied process-wide with ``torch.set_num_threads``.
        cache_dir: where checkpoints are exported to ONNX (default: ``.onnx_cache`` next to the
            weights, else a temporary directory).
        use_refinement: return the refined (sub-pixel) image1 positions where the model has a
            refinement stage; ``False`` returns the matched cells' centres (to measure what refinement adds).

    The result also holds ``coarse_keypoints1`` (N, 2): each match's image1 cell centre, in the pixels
    of image1 as given.

    Calling ``matcher(image0, image1)`` returns ``{"keypoints0": (N, 2), "keypoints1": (N, 2),
    "confidence": (N,)}`` as float32, keypoints in the pixels of the images as given.
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
    ) -> None:
        from loftr_kd.runtime import MATCHER_BACKEND, matcher_backend

        backend = matcher_backend(backend)
        if backend not in BACKENDS:
            raise ValueError(
                f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} "
                f"(also spelt {', '.join(MATCHER_BACKEND)})"
            )
        if weights is None:
            from loftr_kd.paths import DEFAULT_STUDENT_WEIGHTS

            weights = DEFAULT_STUDENT_WEIGHTS
            if not Path(weights).is_file():
                raise FileNotFoundError(_missing_weights_message(Path(weights)))
        self.weights = Path(weights)
        if self.weights.is_dir():
            raise IsADirectoryError(f"weights {self.weights} is a directory, not a weights file")
        if not self.weights.is_file():
            raise FileNotFoundError(f"weights file not found: {self.weights}")
        self.backend = backend
        self.device = device
        self.use_refinement = bool(use_refinement)
        self.num_threads = int(num_threads or os.cpu_count() or 1)
        self._threshold_override = threshold
        self.name = f"student-{backend}"
        suffix = self.weights.suffix.lower()
        if backend == "trt":
            self._init_trt(input_size)
        elif suffix == ".onnx":
            if backend != "onnx":
                raise MatcherError(f"{self.weights} is an ONNX graph: use backend='onnx', not {backend!r}")
            if input_size is not None:
                raise MatcherError("input_size cannot be changed for an exported ONNX graph")
            self._init_onnx_session(self.weights)
        elif suffix in _ENGINE_SUFFIXES:
            raise MatcherError(f"{self.weights} is a TensorRT engine: use backend='trt'")
        else:
            model = self._load_torch(input_size)
            if backend == "torch":
                if num_threads is not None:
                    import torch

                    torch.set_num_threads(self.num_threads)
                self._model = model
                self._run = self._run_torch
            else:
                self._init_onnx_session(self._export_cached(model, cache_dir))
        self.threshold = self._baked_threshold if threshold is None else float(threshold)
        if threshold is not None and self._baked_threshold is not None and threshold < self._baked_threshold:
            raise MatcherError(
                f"threshold {threshold} is below {self._baked_threshold} baked into {self.weights.name}; "
                f"export again with a lower match_threshold or use the checkpoint"
            )
        self.min_side = 2 * self.stride

    # ------------------------------------------------------------------ construction
    def _load_torch(self, input_size: tuple[int, int] | None):
        """Load the student checkpoint (optionally with a new input size / threshold)."""
        from loftr_kd.models.student import build_student, load_student

        height, width = input_size if input_size is not None else (None, None)
        try:
            model = load_student(self.weights, map_location="cpu", input_height=height, input_width=width)
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise MatcherError(f"cannot load student weights {self.weights}: {err}") from err
        config = model.config
        if self._threshold_override is not None:
            config = dataclasses.replace(config, match_threshold=float(self._threshold_override))
            rebuilt = build_student(**dataclasses.asdict(config))
            rebuilt.load_state_dict(model.state_dict())
            model = rebuilt
        model = model.prepare_for_inference(inplace=True).to(self.device)
        self.config = dataclasses.asdict(config)
        self._set_geometry(config.input_height, config.input_width, config.coarse_stride)
        self._baked_threshold = None  # a checkpoint takes any threshold
        return model

    def _set_geometry(self, height: int, width: int, stride: int) -> None:
        self.input_height, self.input_width, self.stride = int(height), int(width), int(stride)
        if self.input_height % self.stride or self.input_width % self.stride:
            raise MatcherError(
                f"model input {self.input_width}x{self.input_height} is not a multiple of the coarse "
                f"stride {self.stride}"
            )
        self._grid = None

    def _export_cached(self, model, cache_dir) -> Path:
        """Export the checkpoint to ONNX once; reuse it while the weights and settings are unchanged."""
        from loftr_kd.export.onnx import export_onnx

        stat = self.weights.stat()
        key = json.dumps(
            [str(self.weights.resolve()), stat.st_size, stat.st_mtime_ns, self.config], sort_keys=True
        )
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        name = f"{self.weights.stem}-{self.input_height}x{self.input_width}-{digest}.onnx"
        candidates = [Path(cache_dir)] if cache_dir is not None else []
        candidates += [
            self.weights.parent / ".onnx_cache",
            Path(tempfile.gettempdir()) / "loftr_kd_onnx_cache",
        ]
        for directory in candidates:
            path = directory / name
            if path.is_file():
                _check_cached_onnx(path, self.weights)
                return path
            try:
                directory.mkdir(parents=True, exist_ok=True)
                with replacing(path, suffix=".tmp.onnx") as tmp:  # concurrent readers never see half a file
                    export_onnx(model.cpu(), tmp, batch=1, dynamic=False)
                log.info("exported %s to %s", self.weights, path)
                return path
            except PermissionError:
                continue
            except OSError as err:
                log.warning("cannot write the ONNX cache in %s (%s)", directory, err)
                continue
        raise MatcherError(f"could not export {self.weights} to ONNX in any of {candidates}")

    def _init_onnx_session(self, path: Path) -> None:
        import onnxruntime as ort

        from loftr_kd.runtime import ort_session

        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self._session = ort_session(path, threads=self.num_threads, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise MatcherError(f"onnxruntime cannot load {path}: {err}") from err
        self.onnx_path = Path(path)
        meta = self._session.get_modelmeta().custom_metadata_map
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        missing = {"image0", "image1"} - set(inputs) | {"match_ids", "match_confidence"} - outputs
        if missing:
            raise MatcherError(f"{path} is not an exported student: missing inputs/outputs {sorted(missing)}")
        config = json.loads(meta["student_config"]) if meta.get("student_config") else None
        if config is None:  # the geometry comes from the export metadata; nothing is guessed
            raise MatcherError(
                f"{path} carries no student_config metadata (input size, coarse stride): it was not written "
                f"by loftr-kd-export; export the checkpoint again with loftr-kd-export"
            )
        self.config = config
        self._set_geometry(config["input_height"], config["input_width"], config["coarse_stride"])
        self._baked_threshold = float(config.get("match_threshold", 0.0))
        self._has_points = {"points0", "points1"} <= outputs
        batch = inputs["image0"].shape[0]
        self._onnx_batch = batch if isinstance(batch, int) else 1
        self._run = self._run_onnx

    def _init_trt(self, input_size) -> None:
        try:
            from loftr_kd.export.tensorrt import TensorRTRunner, TensorRTUnavailable
        except ImportError as err:
            raise MatcherError(f"the TensorRT backend is not available in this installation: {err}") from err
        if self.weights.suffix.lower() not in _ENGINE_SUFFIXES:
            raise MatcherError(
                f"backend 'trt' needs a TensorRT engine (.engine/.trt/.plan built by loftr-kd-export), "
                f"got {self.weights}"
            )
        try:
            self._trt = TensorRTRunner(self.weights)
        except TensorRTUnavailable as err:
            raise MatcherError(
                f"TensorRT is unavailable here ({err}); install `loftr-kd[trt]` on a machine with a CUDA "
                f"GPU, or use backend='onnx'"
            ) from err
        config = self._trt_config()
        if config is None and input_size is None:
            raise MatcherError(
                f"cannot tell the input geometry of {self.weights}: no metadata found; pass input_size"
            )
        config = dict(config or {})
        if input_size is not None:
            config.update(input_height=input_size[0], input_width=input_size[1])
        if "coarse_stride" not in config:
            raise MatcherError(
                f"cannot tell the coarse stride of {self.weights}: no student_config metadata (engine "
                f"metadata, its .json sidecar or the ONNX it was built from); rebuild it with loftr-kd-export"
            )
        self.config = config
        self._set_geometry(config["input_height"], config["input_width"], config["coarse_stride"])
        self._baked_threshold = float(config["match_threshold"]) if "match_threshold" in config else None
        self.device = "cuda"
        self._run = self._run_trt

    def _trt_config(self) -> dict | None:
        """Student config of an engine: its metadata, the ONNX it was built from, or its tensor shapes."""
        metadata = getattr(self._trt, "metadata", None)
        if not isinstance(metadata, dict) or not metadata:
            sidecar = Path(str(self.weights) + ".json")
            metadata = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        config = metadata.get("student_config")
        if isinstance(config, str) and config:
            config = json.loads(config)
        if isinstance(config, dict) and "input_height" in config:
            return config
        for onnx_path in (metadata.get("onnx_path"), self.weights.with_suffix(".onnx")):
            if onnx_path and Path(onnx_path).is_file():
                import onnx

                model = onnx.load(str(onnx_path), load_external_data=False)
                meta = {p.key: p.value for p in model.metadata_props}
                if meta.get("student_config"):
                    return json.loads(meta["student_config"])
        return None

    # ------------------------------------------------------------------ inference
    def _cell_points(self, match_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cell centres of matches, for graphs exported before the ``points0/points1`` outputs."""
        import torch

        points0, points1 = self.coarse_grid.match_points(torch.from_numpy(np.asarray(match_ids, np.int64)))
        return points0.numpy(), points1.numpy()

    def _run_torch(self, image0: np.ndarray, image1: np.ndarray) -> tuple[np.ndarray, ...]:
        import torch

        with torch.inference_mode():
            t0 = torch.from_numpy(image0)[None, None].to(self.device)
            t1 = torch.from_numpy(image1)[None, None].to(self.device)
            out = self._model(t0, t1)
        return (
            out.match_ids[0].cpu().numpy(),
            out.match_confidence[0].float().cpu().numpy(),
            out.points0[0].float().cpu().numpy(),
            out.points1[0].float().cpu().numpy(),
        )

    def _run_onnx(self, image0: np.ndarray, image1: np.ndarray) -> tuple[np.ndarray, ...]:
        shape = (self._onnx_batch, 1, *image0.shape)
        feed = {
            "image0": np.broadcast_to(image0, shape).astype(np.float32),
            "image1": np.broadcast_to(image1, shape).astype(np.float32),
        }
        names = ["match_ids", "match_confidence"] + (["points0", "points1"] if self._has_points else [])
        outputs = self._session.run(names, feed)
        ids = np.asarray(outputs[0][0]).astype(np.int64)
        conf = np.asarray(outputs[1][0], dtype=np.float32)
        points0, points1 = (outputs[2][0], outputs[3][0]) if self._has_points else self._cell_points(ids)
        return ids, conf, np.asarray(points0, np.float32), np.asarray(points1, np.float32)

    def _run_trt(self, image0: np.ndarray, image1: np.ndarray) -> tuple[np.ndarray, ...]:
        import torch

        t0 = torch.from_numpy(image0)[None, None].cuda()
        t1 = torch.from_numpy(image1)[None, None].cuda()
        out = self._trt(t0, t1)
        if not isinstance(out, dict):
            out = (
                out._asdict()
                if hasattr(out, "_asdict")
                else dict(zip(("match_ids", "match_confidence"), out))
            )
        ids = out["match_ids"][0].long().cpu().numpy()
        conf = out["match_confidence"][0].float().cpu().numpy()
        if "points1" in out:
            return ids, conf, out["points0"][0].float().cpu().numpy(), out["points1"][0].float().cpu().numpy()
        return (ids, conf, *self._cell_points(ids))

    @property
    def coarse_grid(self):
        """The model input's :class:`~loftr_kd.geometry.CoarseGrid` (from the weights' metadata)."""
        from loftr_kd.geometry import CoarseGrid

        return CoarseGrid.for_image(self.input_height, self.input_width, self.stride)

    @property
    def grid(self) -> np.ndarray:
        """(L, 2) xy cell centres of the model-input grid."""
        if self._grid is None:
            self._grid = self.coarse_grid.centers().numpy().astype(np.float64)
        return self._grid

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Image as given -> ((H_in, W_in) float32 model input, its letterbox geometry)."""
        return letterbox(to_gray_float(image), self.input_height, self.input_width, self.min_side)

    def __call__(self, image0: np.ndarray, image1: np.ndarray) -> dict[str, np.ndarray]:
        input0, box0 = self.prepare(image0)
        input1, box1 = self.prepare(image1)
        match_ids, match_conf, all_points0, all_points1 = self._run(input0, input1)
        keep = match_ids >= 0
        if self.threshold is not None:
            keep &= match_conf >= self.threshold
        idx0 = np.nonzero(keep)[0]
        if idx0.size == 0:
            return _empty_result()
        points0 = all_points0[idx0].astype(np.float64)  # model-input pixels (refined where the model refines)
        points1 = all_points1[idx0].astype(np.float64)
        cells1 = self.grid[match_ids[idx0]]  # the coarse match: image1 cell centre
        if not self.use_refinement:
            points1 = cells1
        inside = box0.in_content(points0) & box1.in_content(points1)
        return {
            "keypoints0": box0.to_original(points0[inside]).astype(np.float32),
            "keypoints1": box1.to_original(points1[inside]).astype(np.float32),
            "confidence": match_conf[idx0][inside].astype(np.float32),
            "coarse_keypoints1": box1.to_original(cells1[inside]).astype(np.float32),
        }

    def __repr__(self) -> str:
        return (
            f"Matcher(weights={str(self.weights)!r}, backend={self.backend!r}, "
            f"input={self.input_width}x{self.input_height}, stride={self.stride}, threshold={self.threshold})"
        )


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
    """``Matcher`` for a student backend (onnx/torch/trt) or ``OpenCVMatcher`` for orb/sift."""
    if backend in CLASSICAL_METHODS:
        allowed = {k: v for k, v in kwargs.items() if k in ("max_features", "ratio", "max_side")}
        return OpenCVMatcher(backend, **allowed)
    return Matcher(weights=weights, backend=backend, **kwargs)
