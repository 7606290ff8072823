"""Latency-aware student search: one Optuna trial = measure, maybe prune, train, record (docs/search.md).

``hparams_search=student_latency`` runs Hydra's Optuna sweeper over the knobs of ``conf/student/search.yaml``
(:func:`build_search_student`: backbone, stage widths and depths, ``d_model``, heads, attention layers,
coarse stride, refinement and its window) and the main loss weights. Its ``search:`` block builds
:class:`StudentSearch`, the trial hook ``train()`` calls before it loads any data:

1. build the untrained student of the trial (an invalid combination, e.g. ``d_model % nhead != 0``, is a
   *failed* trial with its reason: the job raises :class:`SearchTrialFailed`, the sweeper records it and
   goes on);
2. export it to ONNX at the target size (``search.height`` x ``search.width``) and time it in onnxruntime
   on ``search.threads`` threads: median of ``search.repeats`` runs, warm-up excluded. With
   ``search.budget_reference`` (a preset, ``fast`` by default) that preset is exported and timed
   *interleaved* with the candidate in the same process, and the budget is ``budget_factor`` times its
   median: on a shared or throttled machine both see the same load, so the decision rests on the ratio;
3. over budget: the trial is *pruned* before it trains and returns a penalty below any feasible score;
   else it trains on the configured budget and :meth:`Trial.finish` returns the objective: the best
   ``optimized_metric`` (pixel-level validation F1 from :mod:`loftr_kd.metrics`), or with
   ``search.objective=pareto`` the pair (quality, latency ms) for a two-objective study.

Every trial writes ``search_trial.json`` into its run directory. The sweeper's side (the presets enqueued
as the first trials of the study, the report at the end of the sweep) is Hydra glue in
``loftr_kd.cli.search_sweeper``; :func:`write_report` (also ``loftr-kd-search-report SWEEP_DIR``) writes
the table of all trials and the quality-vs-latency plot with the Pareto front into the sweep directory.

Modules: :mod:`~loftr_kd.search.space` (settings and knobs), :mod:`~loftr_kd.search.latency`,
:mod:`~loftr_kd.search.trials` (records, objective, the trial hook), :mod:`~loftr_kd.search.report`.
"""

from loftr_kd.search.latency import measure_latency
from loftr_kd.search.report import load_records, pareto_front, write_report
from loftr_kd.search.space import (
    OBJECTIVES,
    SearchSettings,
    build_search_student,
    preset_knobs,
    search_student_values,
)
from loftr_kd.search.trials import (
    RECORD_NAME,
    SearchTrialFailed,
    StudentSearch,
    Trial,
    begin_trial,
    finish_trial,
)

__all__ = [
    "OBJECTIVES",
    "RECORD_NAME",
    "SearchSettings",
    "SearchTrialFailed",
    "StudentSearch",
    "Trial",
    "begin_trial",
    "build_search_student",
    "finish_trial",
    "load_records",
    "measure_latency",
    "pareto_front",
    "preset_knobs",
    "search_student_values",
    "write_report",
]
