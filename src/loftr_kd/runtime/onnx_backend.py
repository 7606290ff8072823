"""The onnxruntime backend: an exported student graph (``.onnx`` with ``loftr-kd-export`` metadata).

Loading a graph imports onnxruntime and NumPy only, never torch (only graphs exported before the
``points0``/``points1`` outputs need torch, to place matches at cell centres).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from loftr_kd.runtime.backend import MatcherError, ModelGeometry, ModelOutputs, cell_centre_points
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

    Raises:
        MatcherError: onnxruntime cannot load the file, or it is not an exported student.
    """

    name = "onnx"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        device: str = "cpu",
        spinning: bool = True,
        with_confidence: bool = False,
    ) -> None:
        self.path = Path(path)
        self.device = device
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            import onnxruntime as ort

            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort_session(self.path, threads=threads, providers=providers, spinning=spinning)
        except Exception as err:  # onnxruntime raises its own exception types
            raise MatcherError(f"onnxruntime cannot load {self.path}: {err}") from err
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        missing = set(INPUTS) - set(inputs) | {"match_ids", "match_confidence"} - outputs
        if missing:
            raise MatcherError(
                f"{self.path} is not an exported student: missing inputs/outputs {sorted(missing)}"
            )
        batch = inputs["image0"].shape[0]
        self.geometry = ModelGeometry.from_onnx_metadata(
            self.session.get_modelmeta().custom_metadata_map,
            self.path,
            batch if isinstance(batch, int) else 1,
        )
        wanted = OUTPUTS if with_confidence else OUTPUTS[:-1]
        self.output_names = [name for name in wanted if name in outputs]

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
        match_ids = np.asarray(values["match_ids"]).astype(np.int64)
        if "points1" in values:
            points0, points1 = (np.asarray(values[key], np.float32) for key in ("points0", "points1"))
        else:
            points0, points1 = cell_centre_points(
                match_ids, feeds["image0"].shape[-2:], feeds["image1"].shape[-2:], self.geometry.stride
            )
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
