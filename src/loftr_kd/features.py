"""Encoded images: what :meth:`loftr_kd.matcher.Matcher.encode` returns and a Matcher call takes in place of
an image (``matcher(features0, image1)``, ``matcher(image0, features1)``, ``matcher(features0, features1)``).

An :class:`ImageFeatures` is the per-image half of the student for one image (its backbone maps at the coarse
and fine levels, position-encoded, through the transformer's self layers before the first cross layer), as
plain read-only NumPy arrays, with the geometry that maps matches back to the image's own pixels and the
identity of the model and size rule that made it. It holds no session, device buffer or reference to the
Matcher: keep it as long as you like (a reference frame for a video, minutes or hours). The Matcher that
encoded it, or another over the same weights and backend, takes it; any other matcher refuses it with a
:class:`~loftr_kd.runtime.MatcherError` saying why (another model, another long side).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loftr_kd.resizing import Letterbox

__all__ = ["ImageFeatures"]


def _read_only(array: np.ndarray | None, dtype: type = np.float32) -> np.ndarray | None:
    """A read-only view as ``dtype`` (a copy only where the dtype differs)."""
    if array is None:
        return None
    view = np.asarray(array, dtype).view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class ImageFeatures:
    """One image encoded by a :class:`~loftr_kd.matcher.Matcher` (``matcher.encode(image)``).

    Attributes:
        coarse: ``(C, H/s, W/s)`` float32 coarse features of the model input (``H x W``, stride ``s``): the
            backbone's coarse map plus the position encoding, through the transformer's leading self layers.
        fine: ``(D, H/f, W/f)`` float32 unit fine descriptors of the refinement stage (fine stride ``f``),
            ``None`` for a student without refinement.
        box: the image's size as given and the model input it was resized (or letterboxed) to.
        size: the long side it was resized to (models that take any size); ``None``: letterboxed into a
            static file's one input size.
        model: the weights and backend that encoded it (``Matcher.model_id``).
        queries: ``(H/s * W/s,)`` int64 refinement query of each cell (students with ``refine_query="corner"``;
            ``(H/s * W/s, k)`` with ``refine_points=k``), else ``None``.
    """

    coarse: np.ndarray
    fine: np.ndarray | None
    box: Letterbox
    size: int | None
    model: str
    queries: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "coarse", _read_only(self.coarse))
        object.__setattr__(self, "fine", _read_only(self.fine))
        object.__setattr__(self, "queries", _read_only(self.queries, np.int64))

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the model input the image was encoded at."""
        return self.box.input_height, self.box.input_width

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the image as given."""
        return self.box.orig_height, self.box.orig_width

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (the fine descriptors dominate: 4.9 MB at 640x480 for the shipped student)."""
        return int(sum(x.nbytes for x in (self.coarse, self.fine, self.queries) if x is not None))

    def __repr__(self) -> str:
        fine = "none" if self.fine is None else "x".join(map(str, self.fine.shape))
        return (
            f"ImageFeatures({self.image_shape[1]}x{self.image_shape[0]} image at "
            f"{self.input_shape[1]}x{self.input_shape[0]}, coarse {'x'.join(map(str, self.coarse.shape))}, "
            f"fine {fine}, model {self.model})"
        )
