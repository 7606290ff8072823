"""The onnxruntime backend: an exported student graph (``.onnx`` with ``loftr-kd-export`` metadata), and its
split export beside it (``<stem>.encoder.onnx`` / ``<stem>.matcher.onnx``) for ``encode`` / ``match``.

Loading a graph imports onnxruntime and NumPy only, never torch (only graphs exported before the
``points0``/``points1`` outputs need torch, to place matches at cell centres). The split graphs' sessions
open on first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from loftr_kd.runtime.backend import (
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    SPLIT_PARTS,
    EncodedBatch,
    MatcherError,
    ModelGeometry,
    ModelOutputs,
    cell_centre_points,
    check_split_config,
    no_split_error,
    split_path,
)
from loftr_kd.runtime.sessions import ort_session

INPUTS = ("image0", "image1")
# Every output a student graph may have, in the order ModelOutputs holds them.
OUTPUTS = ("match_ids", "match_confidence", "points0", "points1", "match_uncertainty", "confidence")


class OnnxBackend:
    """An exported student in onnxruntime behind :class:`~loftr_kd.runtime.backend.Backend`.

    Args:
        path: the ``.onnx`` file (inputs ``image0``/``image1``, outputs ``match_ids``/``match_confidence``
            at least, ``student_config`` metadata).
        threads: intra-op threads (one inter-op thread); ``None`` keeps onnxruntime's default.
        device: ``"cuda"`` puts onnxruntime's CUDA provider first where it is installed.
        spinning: see :func:`~loftr_kd.runtime.sessions.ort_session`.
        with_confidence: also fetch the ``(B, L0, L1)`` confidence matrix where the graph exports it.
        write_split: writes the split export beside ``path`` when it is missing (the export cache's; called
            on first use of :meth:`encode` / :meth:`match`).

    Raises:
        MatcherError: onnxruntime cannot load the file, or it is not an exported student.
    """

    name = "onnx"
    split_batch = None

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        device: str = "cpu",
        spinning: bool = True,
        with_confidence: bool = False,
        write_split: Callable[[], Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.device = device
        self.threads = threads
        self.providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            import onnxruntime as ort

            if "CUDAExecutionProvider" in ort.get_available_providers():
                self.providers.insert(0, "CUDAExecutionProvider")
        self.session = self._session(self.path, spinning)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        missing = set(INPUTS) - set(inputs) | {"match_ids", "match_confidence"} - outputs
        if missing:
            part = self.session.get_modelmeta().custom_metadata_map.get("split_part")
            whole = f"; it is the {part} of a split export: pass the whole graph beside it" if part else ""
            raise MatcherError(
                f"{self.path} is not an exported student: missing inputs/outputs {sorted(missing)}{whole}"
            )
        batch = inputs["image0"].shape[0]
        self.geometry = ModelGeometry.from_onnx_metadata(
            self.session.get_modelmeta().custom_metadata_map,
            self.path,
            batch if isinstance(batch, int) else 1,
        )
        wanted = OUTPUTS if with_confidence else OUTPUTS[:-1]
        self.output_names = [name for name in wanted if name in outputs]
        self.split_paths = tuple(split_path(self.path, part) for part in SPLIT_PARTS)
        self._write_split = write_split
        self._split: tuple[Any, Any] | None = None  # (encoder, matcher) sessions, opened on first use

    def _session(self, path: Path, spinning: bool):
        """An onnxruntime session on this backend's threads and providers."""
        try:
            return ort_session(path, threads=self.threads, providers=self.providers, spinning=spinning)
        except Exception as err:  # onnxruntime raises its own exception types
            raise MatcherError(f"onnxruntime cannot load {path}: {err}") from err

    @property
    def can_encode(self) -> bool:
        """The split export lies beside the graph (or the export cache writes it on first use)."""
        return (
            self._split is not None
            or self._write_split is not None
            or all(p.is_file() for p in self.split_paths)
        )

    def _split_sessions(self) -> tuple[Any, Any]:
        """The encoder and matcher sessions, opened (and checked against the whole graph) on first use.

        Their intra-op threads do not spin after a run: the two sessions run in turn, and an idle one's
        spinning threads would take the cores of the next (on 2 cores, measured in docs/deployment.md).
        """
        if self._split is None:
            if not all(p.is_file() for p in self.split_paths) and self._write_split is not None:
                self._write_split()
            if not all(p.is_file() for p in self.split_paths):
                raise no_split_error(self.path, self.name)
            sessions = tuple(self._session(path, spinning=False) for path in self.split_paths)
            for path, session in zip(self.split_paths, sessions):
                metadata = session.get_modelmeta().custom_metadata_map
                part = ModelGeometry.from_onnx_metadata(metadata, path)
                check_split_config(
                    path,
                    part.config,
                    self.path,
                    self.geometry.config,
                    metadata.get("weights_sha256"),
                    self.session.get_modelmeta().custom_metadata_map.get("weights_sha256"),
                )
            self._split = sessions
        return self._split

    def encode(self, images: np.ndarray) -> EncodedBatch:
        """The encoder graph on ``(B, 1, H, W)`` float32 images."""
        encoder = self._split_sessions()[0]
        present = {o.name for o in encoder.get_outputs()}
        names = [name for name in ENCODER_OUTPUTS if name in present]
        values = encoder.run(names, {ENCODER_INPUT: np.ascontiguousarray(images, dtype=np.float32)})
        return EncodedBatch(*values)

    def match(self, encoded0: EncodedBatch, encoded1: EncodedBatch) -> ModelOutputs:
        """The matcher graph on two encodings of the same batch size."""
        matcher = self._split_sessions()[1]
        values = encoded0.matcher_feeds(encoded1)
        feeds = {name: values[name] for name in _input_names(matcher)}
        names = [name for name in self.output_names if name != "confidence"]
        stride = self.geometry.stride
        shapes = [tuple(int(n) * stride for n in e.coarse.shape[-2:]) for e in (encoded0, encoded1)]
        return self._outputs(dict(zip(names, matcher.run(names, feeds))), *shapes)

    def feed(self, images0: np.ndarray, images1: np.ndarray) -> dict[str, np.ndarray]:
        """``(B, 1, H, W)`` float32 arrays -> the session's feed; a static graph's batch is filled by
        repeating a single pair (outputs then have the graph's batch)."""
        return {name: self._fill_batch(images) for name, images in zip(INPUTS, (images0, images1))}

    def _fill_batch(self, images: np.ndarray) -> np.ndarray:
        """One pair repeated to a static graph's batch; any other batch as given."""
        batch = self.geometry.batch
        if batch > 1 and len(images) != batch:
            if len(images) != 1:
                raise ValueError(f"{self.path} takes a batch of {batch} pairs (static), not {len(images)}")
            images = np.broadcast_to(images, (batch, *images.shape[1:]))
        return np.ascontiguousarray(images, dtype=np.float32)

    def run(self, feeds: dict[str, np.ndarray]) -> ModelOutputs:
        """The graph on a feed from :meth:`feed`."""
        values = dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        return self._outputs(values, feeds["image0"].shape[-2:], feeds["image1"].shape[-2:])

    def _outputs(
        self, values: dict[str, np.ndarray], shape0: tuple[int, int], shape1: tuple[int, int]
    ) -> ModelOutputs:
        """A graph's outputs by name as :class:`ModelOutputs` (``shape0`` / ``shape1``: the inputs' ``(H, W)``)."""
        match_ids = np.asarray(values["match_ids"]).astype(np.int64)
        if "points1" in values:
            points0, points1 = (np.asarray(values[key], np.float32) for key in ("points0", "points1"))
        else:
            points0, points1 = cell_centre_points(match_ids, shape0, shape1, self.geometry.stride)
        optional = {
            key: np.asarray(values[key], np.float32)
            for key in ("match_uncertainty", "confidence")
            if key in values
        }
        return ModelOutputs(
            match_ids=match_ids,
            match_confidence=np.asarray(values["match_confidence"], np.float32),
            points0=points0,
            points1=points1,
            **optional,
        )


def _input_names(session: Any) -> list[str]:
    """A session's input names (a student without refinement has no fine maps)."""
    return [i.name for i in session.get_inputs()]
