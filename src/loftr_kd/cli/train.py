"""``loftr-kd-train`` / ``make train``: Hydra over :func:`loftr_kd.train.train` (``conf/train.yaml``).

``python -m loftr_kd.cli.train`` is the same command; a bad input ends in one line and exit status 2
(``LOFTR_KD_DEBUG=1`` or ``HYDRA_FULL_ERROR=1`` shows the full traceback instead).
"""

from __future__ import annotations

from loftr_kd.cli import hydra_command
from loftr_kd.train import train

main = hydra_command(
    "loftr-kd-train",
    "train",
    train,
    summary="train a student (the embedded default: minutes on a CPU; README, docs/usage.md)",
)


if __name__ == "__main__":
    main()
