"""Well-known locations of the repository (the package is installed editable from ``src/``)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(os.environ.get("LOFTR_KD_ROOT", Path(__file__).resolve().parents[2]))
CONFIG_DIR = REPO_ROOT / "conf"
WEIGHTS_DIR = REPO_ROOT / "weights"
OUTPUTS_DIR = REPO_ROOT / "outputs"
DATA_DIR = REPO_ROOT / "data"

# The student shipped with the project (trained by `make train`-style runs, see weights/README.md).
DEFAULT_STUDENT_WEIGHTS = WEIGHTS_DIR / "student_paper_refine.pt"
