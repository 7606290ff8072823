"""The PyTorch backend: a student (from a checkpoint, or a model in memory) run in inference mode, whole or
in its two halves (``encode`` / ``match``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from loftr_kd.runtime.backend import EncodedBatch, MatcherError, ModelGeometry, ModelOutputs

# Torch backend threads unless told otherwise. Measured on 2 cores (docs/usage.md): 1 thread 62 ms per
# 640x480 pair idle and 170 ms while two other processes kept the cores busy; 2 threads 39 ms idle but
# 840 ms median / 5 s p90 under the same load (OpenMP threads waiting on each other). One thread never
# collapses; raise it with ``threads=`` on an idle machine.
DEFAULT_TORCH_THREADS = 1


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run a block with ``threads`` intra-op torch threads and restore the caller's setting afterwards
    (``None``: leave the setting alone)."""
    import torch

    previous = torch.get_num_threads()
    change = threads is not None and previous != threads
    if change:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(previous)


class TorchBackend:
    """A student ``nn.Module`` (``forward(image0, image1) -> CoarseMatchOutput``) behind :class:`Backend`.

    Args:
        model: the student, prepared for inference (:meth:`from_checkpoint` does that); moved to ``device``.
        device: ``"cpu"`` or ``"cuda"``.
        threads: intra-op torch threads around each call (the caller's setting is restored); ``None``
            leaves the process's setting.
        with_confidence: also return the ``(B, L0, L1)`` confidence matrix (parity checks).
        path: the checkpoint the model came from, if any.
    """

    name = "torch"
    can_encode = True  # the student's own encode / match
    split_batch = None

    def __init__(
        self,
        model: Any,
        *,
        device: str = "cpu",
        threads: int | None = None,
        with_confidence: bool = False,
        path: Path | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.threads = threads
        self.with_confidence = with_confidence
        self.path = path
        self.geometry = ModelGeometry.from_student_config(dataclasses.asdict(model.config))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        threads: int | None = None,
        input_size: tuple[int, int] | None = None,
        threshold: float | None = None,
    ) -> TorchBackend:
        """Load a student checkpoint (``.pt``/``.ckpt``), optionally at another configured ``input_size``
        ``(height, width)`` or match ``threshold``, prepared for inference.

        Raises:
            CheckpointError: the file is not a safe, complete torch checkpoint (its own one line).
            MatcherError: the weights do not fit their stored config.
        """
        from loftr_kd.checkpoints import CheckpointError
        from loftr_kd.models.student import load_student

        path = Path(path)
        height, width = input_size if input_size is not None else (None, None)
        try:
            model = load_student(
                path, map_location="cpu", input_height=height, input_width=width, match_threshold=threshold
            )
        except CheckpointError:
            raise  # the file's own one line (code refused, truncated, not a checkpoint)
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise MatcherError(f"cannot load student weights {path}: {err}") from err
        model = model.prepare_for_inference(inplace=True)
        return cls(model, device=device, threads=threads, path=path)

    def feed(self, images0: np.ndarray, images1: np.ndarray) -> tuple[Any, Any]:
        """``(B, 1, H, W)`` float32 arrays -> tensors on the device."""
        import torch

        return tuple(torch.from_numpy(np.asarray(x, np.float32)).to(self.device) for x in (images0, images1))

    def run(self, inputs: tuple[Any, Any]) -> ModelOutputs:
        """The student on tensors from :meth:`feed`."""
        import torch

        with torch_threads(self.threads), torch.inference_mode():
            out = self.model(*inputs)
        return self._outputs(out)

    def encode(self, images: np.ndarray) -> EncodedBatch:
        """The student's ``encode`` on ``(B, 1, H, W)`` float32 images, as NumPy."""
        import torch

        tensor = torch.from_numpy(np.asarray(images, np.float32)).to(self.device)
        with torch_threads(self.threads), torch.inference_mode():
            encoded = self.model.encode(tensor)
        return EncodedBatch(
            encoded.coarse.float().cpu().numpy(),
            None if encoded.fine is None else encoded.fine.float().cpu().numpy(),
            None if encoded.queries is None else encoded.queries.cpu().numpy(),
        )

    def match(self, encoded0: EncodedBatch, encoded1: EncodedBatch) -> ModelOutputs:
        """The student's ``match`` on two encodings."""
        import torch

        from loftr_kd.models.student import EncodedImages

        def tensors(encoded: EncodedBatch) -> EncodedImages:
            return EncodedImages(
                *(
                    None
                    if x is None
                    else torch.from_numpy(np.asarray(x, np.int64 if x.dtype.kind in "iu" else np.float32)).to(
                        self.device
                    )
                    for x in encoded
                )
            )

        with torch_threads(self.threads), torch.inference_mode():
            out = self.model.match(tensors(encoded0), tensors(encoded1))
        return self._outputs(out)

    def _outputs(self, out: Any) -> ModelOutputs:
        """A ``CoarseMatchOutput`` as NumPy: its entries as an export gives them (``match_entries``)."""
        from loftr_kd.models.matching import match_entries

        entries = match_entries(out)
        return ModelOutputs(
            match_ids=entries.match_ids.cpu().numpy(),
            match_confidence=entries.match_confidence.float().cpu().numpy(),
            points0=entries.points0.float().cpu().numpy(),
            points1=entries.points1.float().cpu().numpy(),
            match_uncertainty=entries.match_uncertainty.float().cpu().numpy(),
            confidence=out.confidence.float().cpu().numpy() if self.with_confidence else None,
        )
