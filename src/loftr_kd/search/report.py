"""The report of a sweep: every trial's ``search_trial.json`` as a table (``search_report.md`` / ``.json``)
and the quality-vs-latency plot with the Pareto front (``search_report.png``); written at the end of a sweep
and by ``loftr-kd-search-report SWEEP_DIR`` (docs/search.md, "The report")."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from loftr_kd.search.latency import measure_latency
from loftr_kd.search.space import SearchSettings
from loftr_kd.search.trials import RECORD_NAME

log = logging.getLogger("loftr_kd.search")

REPORT_STEM = "search_report"


def load_records(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every ``search_trial.json`` below ``sweep_dir`` (trials in job order), with its run directory."""
    records = []
    for path in sorted(Path(sweep_dir).rglob(RECORD_NAME)):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            record = {"status": "failed", "reason": f"unreadable record: {error}", "job": {}, "invalid": True}
        if not isinstance(record, dict) or "status" not in record:  # `{}`, a list: no trial to show
            record = {
                "status": "failed",
                "reason": "incomplete record (no status)",
                "job": {},
                "invalid": True,
            }
        record["run_dir"] = str(path.parent)
        records.append(record)

    def order(r: dict[str, Any]) -> tuple:
        num = (r.get("job") or {}).get("num")
        return (num is None, num if num is not None else 0, r["run_dir"])

    return sorted(records, key=order)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(latency, quality)`` points (lower latency, higher quality)."""
    front = []
    for i, (lat, q) in enumerate(points):
        dominated = any(
            (l2 <= lat and q2 >= q) and (l2 < lat or q2 > q) for j, (l2, q2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _normalised_latency(records: Sequence[dict[str, Any]]) -> float | None:
    """Median reference latency over the sweep (each trial's ratio times it = comparable ms)."""
    import numpy as np

    refs = [
        r["latency"]["reference_median_ms"]
        for r in records
        if "reference_median_ms" in (r.get("latency") or {})
    ]
    return float(np.median(refs)) if refs else None


def _job_states(study: Any, earlier_trials: Collection[int] = ()) -> dict[int, tuple[str, Any]]:
    """Optuna's state and values of each job of this sweep, by job number.

    Hydra numbers a sweep's jobs from 0 in the order the sweeper asked for trials; the study's own
    numbers also count the trials it held before the sweep (``earlier_trials``, a continued study) and
    trials enqueued but never run. So job ``n`` is the ``n``-th trial started after the earlier ones.
    """
    if study is None:
        return {}
    ran = [t for t in study.trials if t.number not in set(earlier_trials) and t.datetime_start is not None]
    ran.sort(key=lambda t: (t.datetime_start, t.number))
    return {job: (t.state.name, t.values) for job, t in enumerate(ran)}


def _rows(
    records: Sequence[dict[str, Any]], study: Any, earlier_trials: Collection[int] = ()
) -> list[dict[str, Any]]:
    reference_ms = _normalised_latency(records)
    states = _job_states(study, earlier_trials)
    rows = []
    for r in records:
        lat = r.get("latency") or {}
        cfg = r.get("student_config") or {}
        latency = lat.get("median_ms")
        if reference_ms is not None and "ratio" in lat:
            latency = lat["ratio"] * reference_ms
        num = (r.get("job") or {}).get("num")
        state, values = states.get(num, (None, None))
        rows.append(
            {
                "trial": num,
                "status": r.get("status"),
                "preset": r.get("preset"),
                "backbone": cfg.get("backbone", (r.get("knobs") or {}).get("backbone")),
                "stride": cfg.get("coarse_stride", (r.get("knobs") or {}).get("coarse_stride")),
                "widths": cfg.get("block_dims"),
                "depths": cfg.get("block_depths"),
                "d_model": cfg.get("d_model", (r.get("knobs") or {}).get("d_model")),
                "nhead": cfg.get("nhead", (r.get("knobs") or {}).get("nhead")),
                "attention_pairs": len(cfg["layer_names"]) // 2 if cfg.get("layer_names") else None,
                "refine": _refine_label(cfg),
                "w_kd": (r.get("loss") or {}).get("w_kd"),
                "w_refine": (r.get("loss") or {}).get("w_refine"),
                "parameters": r.get("parameters"),
                "latency_ms": latency,
                "measured_ms": lat.get("median_ms"),
                "ratio": lat.get("ratio"),
                "budget_ms": lat.get("budget_ms"),
                "quality": r.get("quality"),
                "optuna_state": state,
                "optuna_values": values,
                "reason": r.get("reason"),
                "run_dir": r.get("run_dir"),
            }
        )
    # Hydra's Optuna sweeper (Optuna 2.x) can ask for a point it has already tried: say so in the table.
    seen: dict[str, Any] = {}
    for row, r in zip(rows, records):
        config = dict(r.get("student_config") or {})
        if config.get("refine") == "none":  # the refinement's sizes do not exist then
            config = {k: v for k, v in config.items() if not k.startswith("refine_")}
        key = json.dumps([config, r.get("loss")], sort_keys=True, default=str)
        if r.get("student_config") and key in seen:
            row["same_as"] = seen[key]
        else:
            seen.setdefault(key, row["trial"])
    return rows


def _refine_label(cfg: Mapping[str, Any]) -> str | None:
    if not cfg:
        return None
    if cfg.get("refine", "none") == "none":
        return "none"
    return f"{cfg['refine']} /{cfg.get('refine_fine_stride')} m{cfg.get('refine_margin')}"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return "·".join(str(v) for v in value)
    return str(value).replace("|", "/")


def _markdown(rows: Sequence[dict[str, Any]], front: Sequence[int], meta: Mapping[str, Any]) -> str:
    lines = [
        "# Student search",
        "",
        f"Latency: onnxruntime, {meta.get('size')}, {meta.get('threads')} threads, median of "
        f"{meta.get('repeats')} runs after {meta.get('warmup')} warm-up runs; "
        + (
            f"budget {meta['budget']}; latency_ms is each trial's ratio to {meta['reference']} times "
            f"{meta['reference']}'s median over the sweep ({_fmt(meta.get('reference_ms'), 2)} ms)."
            if meta.get("reference")
            else f"budget {meta.get('budget')}."
        ),
        f"Quality: best {meta.get('metric')} of the trial's training run. Pareto front: *.",
        *(
            [f"Optuna's objectives (pareto): quality and latency as {meta['optuna_latency']}."]
            if meta.get("optuna_latency")
            else []
        ),
        "",
        "| trial | status | preset | backbone | stride | widths | depths | d_model | heads | attn pairs | refine "
        "| w_kd | w_refine | params | latency ms | ×ref | quality | reason |",
        "| ---: | --- | --- | --- | ---: | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: "
        "| ---: | ---: | --- |",
    ]
    for i, r in enumerate(rows):
        star = " *" if i in front else ""
        lines.append(
            f"| {_fmt(r['trial'])}{star} | {r['status']} | {_fmt(r['preset'])} | {_fmt(r['backbone'])} | "
            f"{_fmt(r['stride'])} | {_fmt(r['widths'])} | {_fmt(r['depths'])} | {_fmt(r['d_model'])} | "
            f"{_fmt(r['nhead'])} | {_fmt(r['attention_pairs'])} | {_fmt(r['refine'])} | {_fmt(r['w_kd'], 2)} | "
            f"{_fmt(r['w_refine'], 2)} | {_fmt(r['parameters'])} | {_fmt(r['latency_ms'], 2)} | "
            f"{_fmt(r['ratio'], 2)} | {_fmt(r['quality'])} | {_fmt(_note(r))} |"
        )
    counts = {s: sum(r["status"] == s for r in rows) for s in ("trained", "pruned", "failed")}
    others = len(rows) - sum(counts.values())
    lines += [
        "",
        f"{len(rows)} trials: {counts['trained']} trained, {counts['pruned']} pruned before training (over "
        f"budget), {counts['failed']} failed" + (f", {others} unfinished" if others else "") + ".",
    ]
    return "\n".join(lines) + "\n"


def _note(row: Mapping[str, Any]) -> str | None:
    """The reason of a pruned/failed trial, and whether it repeats an earlier trial's student."""
    parts = [row["reason"]] if row.get("reason") else []
    if row.get("same_as") is not None:
        parts.append(f"same student and loss weights as trial {row['same_as']}")
    return "; ".join(parts) or None


def _plot(rows: Sequence[dict[str, Any]], front: Sequence[int], meta: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    trained = [i for i, r in enumerate(rows) if r["status"] == "trained" and r["latency_ms"] is not None]
    ax.scatter(
        [rows[i]["latency_ms"] for i in trained],
        [rows[i]["quality"] for i in trained],
        c="tab:blue",
        label="trained trial",
        zorder=3,
    )
    for i in trained:
        ax.annotate(
            str(rows[i]["trial"]),
            (rows[i]["latency_ms"], rows[i]["quality"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    if front:
        ax.plot(
            [rows[i]["latency_ms"] for i in front],
            [rows[i]["quality"] for i in front],
            "-o",
            color="tab:orange",
            label="Pareto front",
            zorder=4,
            mfc="none",
            ms=10,
        )
    pruned = [r for r in rows if r["status"] == "pruned" and r["latency_ms"] is not None]
    if pruned:
        ax.scatter(
            [r["latency_ms"] for r in pruned],
            [0.0] * len(pruned),
            marker="x",
            c="tab:gray",
            label="pruned (over budget, not trained)",
            zorder=2,
        )
    for r in rows:
        if r["preset"] in ("paper", "fast") and r["status"] == "trained":
            ax.scatter([r["latency_ms"]], [r["quality"]], marker="*", s=260, c="tab:red", zorder=5)
            ax.annotate(
                f"{r['preset']} preset",
                (r["latency_ms"], r["quality"]),
                fontsize=9,
                color="tab:red",
                xytext=(6, -12),
                textcoords="offset points",
            )
    for name, latency in (meta.get("preset_latency") or {}).items():
        ax.axvline(latency, color="tab:red", ls=":", lw=1)
        ax.annotate(
            f"{name} preset (latency)",
            (latency, 0.02),
            rotation=90,
            fontsize=8,
            color="tab:red",
            xytext=(2, 0),
            textcoords="offset points",
        )
    if meta.get("budget_line") is not None:
        ax.axvline(
            meta["budget_line"], color="tab:green", ls="--", lw=1.2, label=f"budget ({meta['budget']})"
        )
    shown = [r["latency_ms"] for r in rows if r["latency_ms"]]
    if shown and max(shown) > 5 * min(shown):
        ax.set_xscale("log")  # pruned students can be many times the budget
    ax.set_xlabel(f"latency, ms (onnxruntime, {meta.get('size')}, {meta.get('threads')} threads)")
    ax.set_ylabel(str(meta.get("metric")))
    ax.set_title("Student search: quality vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    from loftr_kd.files import replacing

    with replacing(path, suffix=".png") as tmp:  # readers never see a half-written plot
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def write_report(
    sweep_dir: str | os.PathLike,
    study: Any = None,
    force: bool = False,
    earlier_trials: Collection[int] = (),
) -> dict[str, Path]:
    """Table (``search_report.md`` / ``.json``) and plot (``search_report.png``) of every trial in a sweep.

    Failed or pruned trials are listed with their reason. Presets that were trained in the sweep are
    marked; otherwise the ``paper`` / ``fast`` presets' latency (measured here, untrained) is marked.

    Args:
        sweep_dir: the sweep directory (``<job>/search_trial.json`` below it).
        study: the sweep's Optuna study, for each trial's state and value(s) in the JSON; optional.
        force: replace report files that loftr-kd did not write (a report edited by hand); without it they
            are refused before anything is written (``files.check_outputs``). Earlier reports are replaced.
        earlier_trials: numbers of the study's trials that ran before this sweep (a study continued from
            a database storage): left out when matching the study's trials to this sweep's jobs.

    Returns:
        The paths written, by kind: ``md``, ``json``, ``png``.

    Raises:
        FileNotFoundError: no ``search_trial.json`` below ``sweep_dir``.
    """
    from loftr_kd.files import check_outputs, record_outputs, write_json, write_text

    sweep_dir = Path(sweep_dir)
    records = load_records(sweep_dir)
    if not records:
        raise FileNotFoundError(f"{sweep_dir}: no {RECORD_NAME} below it (not a student search?)")
    if all(r.get("invalid") for r in records):  # a report of nothing but "None" would look like a result
        raise ValueError(
            f"{sweep_dir}: none of its {len(records)} {RECORD_NAME} files is a readable trial record "
            f"(first: {records[0]['run_dir']}/{RECORD_NAME}: {records[0]['reason']})"
        )
    rows = _rows(records, study, earlier_trials)
    trained = [i for i, r in enumerate(rows) if r["status"] == "trained" and r["latency_ms"] is not None]
    front_local = pareto_front([(rows[i]["latency_ms"], rows[i]["quality"]) for i in trained])
    front = [trained[j] for j in front_local]
    settings = next((r["settings"] for r in records if r.get("settings")), {})
    reference_ms = _normalised_latency(records)
    reference = settings.get("budget_reference")
    factor = settings.get("budget_factor", 1.0)
    if reference and reference_ms is not None:
        budget, budget_line = (
            f"{factor:g} x {reference} = {factor * reference_ms:.2f} ms",
            factor * reference_ms,
        )
    elif settings.get("budget_ms"):
        budget, budget_line = f"{settings['budget_ms']:g} ms", settings["budget_ms"]
    else:
        budget, budget_line = "none", None
    meta: dict[str, Any] = {
        "size": f"{settings.get('width')}x{settings.get('height')}",
        "threads": settings.get("threads"),
        "repeats": settings.get("repeats"),
        "warmup": settings.get("warmup"),
        "reference": reference if reference_ms is not None else None,
        "reference_ms": reference_ms,
        "budget": budget,
        "budget_line": budget_line,
        "metric": next((r.get("optimized_metric") for r in records if r.get("optimized_metric")), "quality"),
    }
    if settings.get("objective") == "pareto":  # what trials._objective hands Optuna as the latency
        meta["optuna_latency"] = f"the ratio to {reference} (×ref)" if reference else "the median in ms"
    trained_presets = {r["preset"] for r in rows if r["status"] == "trained"}
    missing = [p for p in ("paper", "fast") if p not in trained_presets]
    if missing and settings:
        meta["preset_latency"] = _preset_latency(missing, settings, reference_ms)
    payload = {"meta": meta, "pareto_front": [rows[i]["trial"] for i in front], "trials": rows}
    stem = sweep_dir / REPORT_STEM
    check_outputs([stem.with_suffix(s) for s in (".md", ".json", ".png")], force=force, force_hint="--force")
    paths = {
        "md": write_text(stem.with_suffix(".md"), _markdown(rows, front, meta)),
        "json": write_json(stem.with_suffix(".json"), payload),
        "png": _plot(rows, front, meta, stem.with_suffix(".png")),
    }
    record_outputs(paths.values(), "loftr-kd-search-report")  # what a rerun may replace
    return paths


def _preset_latency(
    names: Sequence[str], settings: Mapping[str, Any], reference_ms: float | None
) -> dict[str, float]:
    """Latency of presets not trained in the sweep (untrained, same measurement), on the plot's scale."""
    from loftr_kd.config import preset_values
    from loftr_kd.models.student import StudentConfig

    known = {f for f in SearchSettings.__dataclass_fields__}
    measure = SearchSettings(**{**{k: v for k, v in settings.items() if k in known}, "presets": ()})
    out = {}
    for name in names:
        try:
            config = StudentConfig.from_dict(
                {**preset_values(name), "input_height": measure.height, "input_width": measure.width}
            )
            latency = measure_latency(config, measure)
        except Exception as error:  # noqa: BLE001 - a marker is not worth failing the report
            log.warning("Search: could not time preset %s for the plot: %s", name, error)
            continue
        value = latency["median_ms"]
        if reference_ms is not None and "ratio" in latency:
            value = latency["ratio"] * reference_ms
        out[name] = value
    return out
