"""Real camera sequences installed by Debian's ``visp-images-data`` (GPL-2): frames of a handheld or
robot camera moving around real objects, for ``data=unlabeled`` (pairs a sparse teacher labels).

``loftr-kd-photos --set sequences --out DIR`` writes each installed sequence's frames into
``DIR/<name>/frame_NNNN.png`` with a manifest (source file and SHA-256 of every frame). Nothing here is
an evaluation benchmark (OpenCV's samples, HPatches, ... are deliberately absent).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["SEQUENCES", "VISP_ROOT", "CameraSequence", "collect_sequences"]

VISP_ROOT = Path("/usr/share/visp-images-data/ViSP-images")


@dataclass(frozen=True)
class CameraSequence:
    """One sequence: a folder of numbered frames inside an installed package."""

    name: str
    folder: str  # under VISP_ROOT
    pattern: str  # glob of its frames
    package: str = "visp-images-data"

    @property
    def install_hint(self) -> str:
        return f"apt-get install {self.package}"

    def frames(self) -> list[Path]:
        """The installed frames in order (empty when the package is not installed)."""
        return sorted((VISP_ROOT / self.folder).glob(self.pattern))


SEQUENCES: tuple[CameraSequence, ...] = (
    CameraSequence("visp_mbt_cube", "mbt/cube", "image*.pgm"),  # 218 frames, 640x480: a cube on a desk
    CameraSequence("visp_cube", "cube", "image.*.pgm"),  # 80 frames, 384x288: a cube over collage
    CameraSequence("visp_mire2", "mire-2", "image.*.pgm"),  # 501 frames, 384x288: a target in a room
    CameraSequence("visp_castel", "mbt-depth/castel/castel", "image_*.pgm"),  # 30 frames, 640x480
    CameraSequence("visp_line", "line", "image.*.pgm"),  # 33 frames
    CameraSequence("visp_ellipse", "ellipse-1", "image.*.pgm"),  # 50 frames
)


def collect_sequences(out_dir: str | os.PathLike, *, allow_missing: bool = False) -> list[dict]:
    """Write the installed sequences' frames to ``out_dir/<name>/`` (PNG) with ``sequences.json``.

    Raises:
        FileNotFoundError: ``visp-images-data`` is not installed (unless ``allow_missing`` and some are).
    """
    from loftr_kd.files import write_bytes, write_json

    missing = [s for s in SEQUENCES if not s.frames()]
    if missing and (not allow_missing or len(missing) == len(SEQUENCES)):  # allowed, but not all: no data set
        raise FileNotFoundError(
            f"{len(missing)} of {len(SEQUENCES)} camera sequences are not installed "
            f"({', '.join(s.name for s in missing)}); install them with: {missing[0].install_hint} "
            "(or pass allow_missing)"
        )
    out = Path(out_dir)
    rows = []
    for sequence in SEQUENCES:
        frames = sequence.frames()
        for number, source in enumerate(frames):
            data = source.read_bytes()
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise ValueError(f"{source}: does not decode as an image")
            ok, png = cv2.imencode(".png", image)
            if not ok:
                raise ValueError(f"{source}: could not be re-encoded as PNG")
            write_bytes(out / sequence.name / f"frame_{number:04d}.png", png.tobytes())
            rows.append(
                {
                    "sequence": sequence.name,
                    "frame": number,
                    "source": str(source),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
    write_json(out / "sequences.json", {"frames": rows, "missing": [s.name for s in missing]})
    return rows
