"""loftr-kd: distil LoFTR into a tiny real-time coarse matcher."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loftr_kd._version import __version__

__all__ = ["Matcher", "__version__"]

if TYPE_CHECKING:
    from loftr_kd.matcher import Matcher


def __getattr__(name: str) -> Any:
    # Lazy: `import loftr_kd` stays light (no torch/onnxruntime/cv2) until `loftr_kd.Matcher` is used.
    if name == "Matcher":
        from loftr_kd.matcher import Matcher

        return Matcher
    raise AttributeError(f"module 'loftr_kd' has no attribute {name!r}")
