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


def _hydra_main():
    import hydra

    from loftr_kd.config import CONFIG_DIR, register_resolvers

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="bench")
    def main(cfg) -> None:
        from loftr_kd.errors import debug_enabled, is_user_error, report

        register_resolvers()
        try:
            settings = settings_from_config(cfg)
        except Exception as error:  # a bad setting: one line and exit status 2 (loftr_kd.errors)
            if debug_enabled() or not is_user_error(error):
                raise
            raise SystemExit(report("loftr-kd-bench", error)) from None
        bench(settings)

    return main


def main() -> None:
    """``loftr-kd-bench`` (see conf/bench.yaml)."""
    _hydra_main()()


if __name__ == "__main__":
    main()
