"""Which process this is in a distributed job, before Lightning (or anything else) has set it up."""

from __future__ import annotations

import os


def is_rank_zero_process() -> bool:
    """Rank 0 of a (possibly distributed) job, before Lightning has set anything up.

    Lightning's own DDP launcher starts ranks > 0 with ``LOCAL_RANK`` / ``NODE_RANK``; ``torchrun`` sets
    ``RANK``; SLURM (``srun``, one task per GPU, e.g. through the submitit launcher) sets ``SLURM_PROCID``.
    """
    names = ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID")
    return all(int(os.environ.get(name, 0) or 0) == 0 for name in names)
