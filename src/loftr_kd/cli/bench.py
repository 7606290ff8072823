"""``loftr-kd-bench`` / ``make bench``: speed of the teacher, the students and classical matchers.

The benchmark itself is :mod:`loftr_kd.bench` (rows, memory, outputs: see :mod:`loftr_kd.bench.speed`);
this module is its Hydra entry point (``conf/bench.yaml``): it turns the composed config into
:class:`~loftr_kd.bench.BenchSettings` and calls :func:`~loftr_kd.bench.bench`.
"""

from __future__ import annotations

import dataclasses

from loftr_kd.bench import (  # noqa: F401 - re-exported: long-standing import paths (tests, notebooks)
    ROW_KEYS,
    STUDENT_BACKENDS,
    BenchSettings,
    add_speedups,
    bench,
    markdown_table,
    measure_row,
    plan_rows,
)
from loftr_kd.cli import hydra_command


def settings_from_config(cfg) -> BenchSettings:
    """``BenchSettings`` from a composed ``conf/bench.yaml`` (``quick`` shrinks every count)."""
    from omegaconf import OmegaConf

    names = [f.name for f in dataclasses.fields(BenchSettings)]
    # Only our keys are resolved: `paths`/`hydra` interpolate Hydra's runtime, absent under compose().
    kwargs = {
        k: OmegaConf.to_container(OmegaConf.create({"v": cfg[k]}), resolve=True)["v"]
        for k in names
        if k in cfg
    }
    quick = bool(cfg.get("quick", False))
    if quick:
        kwargs.update(iters=2, warmup=1, teacher_iters=1, teacher_warmup=0, pairs=1, calibration_pairs=2)
    return BenchSettings(**kwargs)


def run(cfg) -> dict:
    """The benchmark of a composed ``conf/bench.yaml``."""
    return bench(settings_from_config(cfg))


main = hydra_command(
    "loftr-kd-bench",
    "bench",
    run,
    summary="measure the speed of the teacher, the students (PyTorch, onnxruntime, INT8, TensorRT) and ORB/SIFT",
)


if __name__ == "__main__":
    main()
