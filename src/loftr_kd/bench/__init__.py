"""Speed measurements as library code: the benchmark behind ``loftr-kd-bench`` (:mod:`~loftr_kd.bench.speed`,
:mod:`~loftr_kd.bench.report`) and the student profiler behind ``loftr-kd-profile``
(:mod:`~loftr_kd.bench.profiling`, imported on its own: it needs torch). Students run through the
:mod:`loftr_kd.runtime` backends.
"""

from loftr_kd.bench.report import (
    add_speedups,
    bar_chart,
    machine_info,
    markdown_table,
    target_checks,
    write_outputs,
)
from loftr_kd.bench.speed import (
    CLASSICAL,
    ROW_KEYS,
    STUDENT_BACKENDS,
    TEACHERS,
    BenchSettings,
    PeakMemory,
    bench,
    measure_row,
    plan_rows,
)

__all__ = [
    "CLASSICAL",
    "ROW_KEYS",
    "STUDENT_BACKENDS",
    "TEACHERS",
    "BenchSettings",
    "PeakMemory",
    "add_speedups",
    "bar_chart",
    "bench",
    "machine_info",
    "markdown_table",
    "measure_row",
    "plan_rows",
    "target_checks",
    "write_outputs",
]
