"""What every backend is: a model file in, its fixed-shape outputs as NumPy out, its geometry from metadata.

A **backend** runs one student model file: a checkpoint in PyTorch (:class:`~loftr_kd.runtime.torch_backend.
TorchBackend`), an ``.onnx`` file in onnxruntime (:class:`~loftr_kd.runtime.onnx_backend.OnnxBackend`), or
a TensorRT engine (:class:`~loftr_kd.runtime.tensorrt_backend.TensorRTBackend`). All three follow
:class:`Backend`: ``feed`` turns a batch of image pairs into what the runtime takes (tensors on the device,
an onnxruntime feed), ``run`` calls the model on it and returns :class:`ModelOutputs`. The two steps are
separate so that inputs can be prepared once and timed runs measure the model alone.

Every backend can also run the model in two halves where the file has them (``can_encode``): ``encode`` a
batch of images (:class:`EncodedBatch`: everything of the model that sees one image only) and ``match`` two
encodings. For a checkpoint that is the student's own ``encode`` / ``match``; for an exported graph, the
two graphs ``loftr-kd-export`` writes beside it (:func:`split_path`: ``student.onnx`` ->
``student.encoder.onnx`` and ``student.matcher.onnx``; ``student.fp16.engine`` ->
``student.encoder.fp16.engine`` ...). An image encoded once is then matched against many others.

:class:`ModelGeometry` is what a model file says about the inputs it takes (stride, configured or fixed
input size, dynamic shapes and their limits, the threshold baked into a graph, refinement); it is read
here, from the checkpoint's ``student_config``, the ONNX ``metadata_props`` or the engine's sidecar JSON,
and nowhere else.

The backend vocabulary lives here too: the Matcher's names (``onnx`` / ``torch`` / ``trt``, also in
loftr-kd-match, -demo and -evaluate) and the benchmark's (``onnxruntime`` / ``onnxruntime-int8`` /
``tensorrt-fp16`` / ``tensorrt-fp32``): each command prints its own spelling, and every command accepts both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

BACKENDS = ("onnx", "torch", "trt")
MATCHER_BACKEND = {"onnxruntime": "onnx", "tensorrt": "trt", "tensorrt-fp16": "trt", "tensorrt-fp32": "trt"}
BENCH_BACKEND = {"onnx": "onnxruntime", "onnx-int8": "onnxruntime-int8", "trt": "tensorrt-fp16"}
BENCH_BACKEND |= {"trt-fp16": "tensorrt-fp16", "trt-fp32": "tensorrt-fp32"}
ENGINE_SUFFIXES = (".engine", ".trt", ".plan")
# The two halves of a split export (split_path), in the order they run, and their graphs' I/O names (the
# matcher's outputs are the whole graph's); a student without refinement has no fine maps, and only one with
# corner queries (refine_query="corner") has queries (int64, one per cell; the matcher reads image0's).
SPLIT_PARTS = ("encoder", "matcher")
ENCODER_INPUT = "image"
ENCODER_OUTPUTS = ("coarse", "fine", "queries")
MATCHER_INPUTS = ("coarse0", "coarse1", "fine0", "fine1", "queries0")
# Precision tags an export puts between a file's stem and its suffix (student.fp16.engine).
_PRECISION_TAGS = (".fp16", ".fp32", ".int8")


class MatcherError(RuntimeError):
    """A matcher could not be built or run (missing/unfitting weights, unavailable backend)."""


def matcher_backend(name: str) -> str:
    """The Matcher's name (``onnx`` / ``torch`` / ``trt``) of a backend given in either spelling."""
    return MATCHER_BACKEND.get(name, name)


def bench_backend(name: str) -> str:
    """The benchmark's name (``onnxruntime`` ... ``tensorrt-fp16``) of a backend given in either spelling."""
    return BENCH_BACKEND.get(name, name)


def check_backend(name: str) -> str:
    """The Matcher's name of a backend given in either spelling.

    Raises:
        ValueError: not a backend, listing both spellings.
    """
    backend = matcher_backend(name)
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} "
            f"(also spelt {', '.join(MATCHER_BACKEND)})"
        )
    return backend


class ModelOutputs(NamedTuple):
    """A student's fixed-shape outputs for a batch of ``B`` pairs, as NumPy (``L0`` = image0's cells).

    A student built with ``refine_points=k > 1`` gives ``k * L0`` entries in place of ``L0``: entry ``e``
    belongs to cell ``e % L0`` (:class:`~loftr_kd.models.matching.MatchEntries`).

    Attributes:
        match_ids: ``(B, L0)`` int64 index of the matched image1 cell, ``-1`` = none.
        match_confidence: ``(B, L0)`` float32, ``0`` where none.
        points0: ``(B, L0, 2)`` float32 xy model-input pixels of each match in image0 (its cell centre).
        points1: ``(B, L0, 2)`` float32 xy in image1 (refined where the model refines, else the cell centre).
        match_uncertainty: ``(B, L0)`` float32 px where the model outputs it, else ``None``.
        confidence: ``(B, L0, L1)`` dual-softmax matrix where asked for and exported, else ``None``.
    """

    match_ids: np.ndarray
    match_confidence: np.ndarray
    points0: np.ndarray
    points1: np.ndarray
    match_uncertainty: np.ndarray | None = None
    confidence: np.ndarray | None = None


class EncodedBatch(NamedTuple):
    """The per-image half of a student for a batch of ``B`` images, as NumPy (a split export's I/O).

    Attributes:
        coarse: ``(B, C, H/s, W/s)`` float32 coarse features (backbone + position encoding + the
            transformer's leading self layers).
        fine: ``(B, D, H/f, W/f)`` float32 unit fine descriptors of the refinement, ``None`` without one.
        queries: ``(B, h*w)`` int64 refinement query of each cell (``refine_query="corner"``; ``(B, h*w, k)``
            with ``refine_points=k > 1``), else ``None``.
    """

    coarse: np.ndarray
    fine: np.ndarray | None = None
    queries: np.ndarray | None = None

    def take(self, rows: Any) -> EncodedBatch:
        """The encodings of some images of the batch (``rows``: an index array or slice)."""
        return EncodedBatch(*(None if x is None else x[rows] for x in self))

    def matcher_feeds(self, other: EncodedBatch) -> dict[str, np.ndarray | None]:
        """The matcher's inputs (:data:`MATCHER_INPUTS`) for this encoding as image0 and ``other`` as image1,
        with their dtypes (float32 maps, int64 queries); ``None`` where the student has none."""
        values = (self.coarse, other.coarse, self.fine, other.fine, self.queries)
        return {
            name: None
            if x is None
            else np.ascontiguousarray(x, np.int64 if name.startswith("queries") else np.float32)
            for name, x in zip(MATCHER_INPUTS, values)
        }


def split_path(path: str | os.PathLike, part: str) -> Path:
    """Where the ``part`` (``encoder`` / ``matcher``) of a split export lies beside the whole graph ``path``.

    ``student.onnx`` -> ``student.encoder.onnx``; an engine keeps its precision tag last:
    ``student.fp16.engine`` -> ``student.encoder.fp16.engine`` (the engine built from
    ``student.encoder.onnx``).
    """
    if part not in SPLIT_PARTS:
        raise ValueError(f"part must be one of {SPLIT_PARTS}, got {part!r}")
    path = Path(path)
    stem, tag = _stem_and_tag(path)
    return path.with_name(f"{stem}.{part}{tag}{path.suffix}")


def built_from(engine: str | os.PathLike) -> Path:
    """The ONNX an engine beside it was built from by name: its precision tag dropped, as ``loftr-kd-export``
    and its printed ``trtexec`` line name them (``student.fp16.engine`` -> ``student.onnx``,
    ``student.encoder.fp16.engine`` -> ``student.encoder.onnx``)."""
    engine = Path(engine)
    return engine.with_name(f"{_stem_and_tag(engine)[0]}.onnx")


def _stem_and_tag(path: Path) -> tuple[str, str]:
    """A model file's name without its suffix, split into the name and its precision tag (``.fp16`` ...;
    ``""`` without one): ``student.fp16.engine`` -> ``("student", ".fp16")``."""
    base = path.name[: len(path.name) - len(path.suffix)]
    tag = next((t for t in _PRECISION_TAGS if base.endswith(t) and len(base) > len(t)), "")
    return base[: len(base) - len(tag)], tag


def check_split_config(
    part_path: Path,
    config: Mapping[str, Any],
    whole: Path,
    expected: Mapping[str, Any],
    weights: str | None = None,
    expected_weights: str | None = None,
) -> None:
    """A split export's half must come from the model of the whole graph beside it.

    Args:
        weights, expected_weights: the half's and the whole graph's ``weights_sha256`` metadata (files
            exported before it was written have none: only their ``student_config`` is compared).

    Raises:
        MatcherError: its ``student_config`` differs from ``expected`` (the whole graph's), or its weights do
            (a whole graph exported again without ``split``, next to the halves of the earlier weights).
    """
    if dict(config) != dict(expected):
        differ = sorted(k for k in set(config) | set(expected) if config.get(k) != expected.get(k))
        raise MatcherError(
            f"{part_path} was exported from another model than {whole} (student_config differs in "
            f"{', '.join(differ)}); export them together again with loftr-kd-export"
        )
    if weights and expected_weights and weights != expected_weights:
        raise MatcherError(
            f"{part_path} was exported from other weights than {whole} (weights_sha256 {weights[:12]} "
            f"against {expected_weights[:12]}); export them together again with loftr-kd-export"
        )


@dataclass(frozen=True)
class ModelGeometry:
    """The inputs a model file takes, read from its metadata (never guessed).

    Attributes:
        config: the file's ``student_config`` (``StudentConfig`` as a dict).
        input_height, input_width: the configured input; for a static file the only one it takes.
        stride: coarse stride (pixels per cell side).
        dynamic: takes any multiple of ``stride`` up to ``max_size`` (checkpoints, ``dynamic=true`` exports).
        max_size, min_size: ``(height, width)`` limits of a dynamic model (``min_size``: an engine profile's).
        batch: a static graph's batch (inputs are repeated to fill it); 1 otherwise.
        baked_threshold: match threshold inside an exported graph (only raised afterwards); ``None``: any.
    """

    config: dict[str, Any]
    input_height: int
    input_width: int
    stride: int
    dynamic: bool = False
    max_size: tuple[int, int] | None = None
    min_size: tuple[int, int] | None = None
    batch: int = 1
    baked_threshold: float | None = None

    def __post_init__(self) -> None:
        for name in ("input_height", "input_width", "stride", "batch"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.input_height % self.stride or self.input_width % self.stride:
            raise MatcherError(
                f"model input {self.input_width}x{self.input_height} is not a multiple of the coarse "
                f"stride {self.stride}"
            )

    @property
    def refine(self) -> str:
        """The refinement stage (``none`` / ``corr`` / ``mlp``)."""
        return str(self.config.get("refine") or "none")

    @classmethod
    def from_student_config(cls, config: Mapping[str, Any]) -> ModelGeometry:
        """A checkpoint's geometry: any size up to the config's maximum, any threshold."""
        return cls(
            config=dict(config),
            input_height=config["input_height"],
            input_width=config["input_width"],
            stride=config["coarse_stride"],
            dynamic=True,
            max_size=(int(config["max_height"]), int(config["max_width"])),
        )

    @classmethod
    def from_onnx_metadata(cls, metadata: Mapping[str, str], path: Path, batch: int = 1) -> ModelGeometry:
        """An exported graph's geometry from its ``metadata_props`` (written by ``loftr-kd-export``).

        Raises:
            MatcherError: the graph carries no ``student_config``.
        """
        config = json.loads(metadata["student_config"]) if metadata.get("student_config") else None
        if config is None:
            raise MatcherError(
                f"{path} carries no student_config metadata (input size, coarse stride): it was not written "
                f"by loftr-kd-export; export the checkpoint again with loftr-kd-export"
            )
        # The graph's own size (export_onnx(height=, width=) traces a student at another size than its
        # config's): the file's input_height / input_width, where it has them.
        height = int(metadata.get("input_height") or config["input_height"])
        width = int(metadata.get("input_width") or config["input_width"])
        config = {**config, "input_height": height, "input_width": width}
        return cls(
            config=config,
            input_height=height,
            input_width=width,
            stride=config["coarse_stride"],
            batch=batch,
            baked_threshold=float(config.get("match_threshold", 0.0)),
            **_dynamic_shapes(metadata),
        )

    @classmethod
    def from_engine_metadata(
        cls, metadata: Mapping[str, Any], path: Path, input_size: tuple[int, int] | None = None
    ) -> ModelGeometry:
        """A TensorRT engine's geometry: its sidecar metadata, else the ONNX file it was built from;
        ``input_size`` ``(height, width)`` overrides the input size (engines without metadata).

        Raises:
            MatcherError: neither names the input size (without ``input_size``) or the coarse stride.
        """
        config, onnx_metadata = _engine_student_config(metadata, path)
        if config is None and input_size is None:
            raise MatcherError(
                f"cannot tell the input geometry of {path}: no metadata found; pass input_size"
            )
        config = dict(config or {})
        if input_size is not None:
            config.update(input_height=input_size[0], input_width=input_size[1])
        if "coarse_stride" not in config:
            raise MatcherError(
                f"cannot tell the coarse stride of {path}: no student_config metadata (engine "
                f"metadata, its .json sidecar or the ONNX it was built from); rebuild it with loftr-kd-export"
            )
        shapes = _dynamic_shapes(onnx_metadata)
        profiles = metadata.get("profiles") or []
        if shapes["dynamic"] and profiles and "image0" in profiles[0]:
            low, _, high = profiles[0]["image0"]  # (min, opt, max) of (B, 1, H, W)
            shapes.update(min_size=(int(low[2]), int(low[3])), max_size=(int(high[2]), int(high[3])))
        return cls(
            config=config,
            input_height=config["input_height"],
            input_width=config["input_width"],
            stride=config["coarse_stride"],
            baked_threshold=float(config["match_threshold"]) if "match_threshold" in config else None,
            **shapes,
        )


def _dynamic_shapes(metadata: Mapping[str, str]) -> dict[str, Any]:
    """Dynamic height/width and the size limits, from an export's ``metadata_props``."""
    dynamic = "height" in (metadata.get("dynamic_axes") or "").split(",")
    max_size = (int(metadata["max_height"]), int(metadata["max_width"])) if dynamic else None
    return {"dynamic": dynamic, "max_size": max_size}


def _engine_student_config(metadata: Mapping[str, Any], path: Path) -> tuple[dict | None, dict[str, str]]:
    """Student config and ONNX metadata of an engine: its own metadata, or the ONNX it was built from."""
    from loftr_kd.runtime.sessions import read_metadata

    onnx_metadata = metadata.get("onnx_metadata") if "onnx_metadata" in metadata else None
    config = metadata.get("student_config")
    if isinstance(config, str) and config:
        config = json.loads(config)
    if isinstance(config, dict) and "input_height" in config:
        return config, dict(onnx_metadata or {})
    for onnx_path in (metadata.get("onnx_path"), built_from(path), path.with_suffix(".onnx")):
        if onnx_path and Path(onnx_path).is_file():
            meta = read_metadata(onnx_path)
            if "onnx_metadata" not in metadata and onnx_metadata is None:
                onnx_metadata = meta  # the first ONNX found describes the engine's shapes
            if meta.get("student_config"):
                return json.loads(meta["student_config"]), dict(onnx_metadata or {})
    return None, dict(onnx_metadata or {})


def cell_centres(ids: np.ndarray, shape: tuple[int, int], stride: int, fill: float = -1.0) -> np.ndarray:
    """``(..., 2)`` float32 xy centres of the cells ``ids`` (``(...)`` int) of a model input of ``shape``
    ``(H, W)``; ``fill`` where ``ids < 0``.

    The NumPy twin of :meth:`loftr_kd.geometry.CoarseGrid.ids_to_pixels` (the same float32 arithmetic; a
    test holds them equal), so that matching through onnxruntime never imports torch.
    """
    ids = np.asarray(ids, np.int64)
    row, col = np.divmod(np.maximum(ids, 0), int(shape[1]) // stride)
    xy = np.stack(
        ((col.astype(np.float32) + 0.5) * stride - 0.5, (row.astype(np.float32) + 0.5) * stride - 0.5), -1
    ).astype(np.float32)
    return np.where((ids >= 0)[..., None], xy, np.float32(fill))


def cell_centre_points(
    match_ids: np.ndarray, shape0: tuple[int, int], shape1: tuple[int, int], stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(B, L0, 2)`` float32 ``points0`` / ``points1`` at cell centres, for graphs exported before those
    outputs existed; ``shape0`` / ``shape1`` are the model inputs' ``(H, W)``."""
    match_ids = np.asarray(match_ids, np.int64)
    own = np.broadcast_to(np.arange(match_ids.shape[-1]), match_ids.shape)
    own = np.where(match_ids >= 0, own, -1)
    return cell_centres(own, shape0, stride), cell_centres(match_ids, shape1, stride)


class Backend(Protocol):
    """A student model file behind one runtime.

    Attributes:
        name: the Matcher's name of the backend (``torch`` / ``onnx`` / ``trt``).
        path: the file it runs (for a checkpoint on onnxruntime: the cached export).
        device: where it runs (``cpu``, ``cuda``).
        geometry: what the file's metadata says about its inputs.
        can_encode: the model runs in two halves (:meth:`encode`, :meth:`match`): always for a checkpoint;
            for an exported file, where its split export lies beside it (:func:`split_path`).
        split_batch: the largest batch :meth:`encode` / :meth:`match` take (a TensorRT profile's); ``None``: any.
    """

    name: str
    path: Path | None
    device: str
    geometry: ModelGeometry
    can_encode: bool
    split_batch: int | None

    def feed(self, images0: np.ndarray, images1: np.ndarray) -> Any:
        """``(B, 1, H0, W0)`` and ``(B, 1, H1, W1)`` float32 images in [0, 1] -> the runtime's inputs
        (done once per pair; a benchmark times :meth:`run` alone)."""
        ...

    def run(self, inputs: Any) -> ModelOutputs:
        """The model on inputs from :meth:`feed`."""
        ...

    def encode(self, images: np.ndarray) -> EncodedBatch:
        """The per-image half of the model on ``(B, 1, H, W)`` float32 images in [0, 1].

        Raises:
            MatcherError: the file has no split export (``can_encode`` is False).
        """
        ...

    def match(self, encoded0: EncodedBatch, encoded1: EncodedBatch) -> ModelOutputs:
        """The pairwise half on two encodings of the same batch size: the outputs :meth:`run` gives for the
        images they encode (up to float rounding where the whole graph stacks a batch otherwise)."""
        ...


def no_split_error(path: Path | None, name: str) -> MatcherError:
    """The error of ``encode`` / ``match`` on a file without its split export."""
    encoder, matcher = (split_path(path or Path("student.onnx"), part).name for part in SPLIT_PARTS)
    return MatcherError(
        f"{path} has no split export beside it ({encoder}, {matcher}), so the {name} backend cannot "
        f"encode an image once and match it many times; export the checkpoint again with loftr-kd-export "
        f"(it writes both), or match whole pairs"
    )
