"""The evaluation's reports: Markdown tables comparing the methods on each benchmark, and the cumulative
error curves as PNGs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loftr_kd.evaluation.homography import MILD_ROTATION_DEG, MILD_ZOOM
from loftr_kd.evaluation.scoring import cumulative_curve

__all__ = ["markdown_report", "plot_auc_curves"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Markdown table lines (header, separator, rows) and a blank line after it."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def markdown_report(results: dict[str, Any]) -> str:
    """Markdown tables (one per benchmark) comparing the methods."""
    methods = results["methods"]
    lines = ["# Evaluation", ""]

    def pct(x: float) -> str:  # "–" where there is nothing to average (a kind of pair with no pairs)
        return "–" if x is None or x != x else f"{100 * x:.1f}"

    homography = {n: e["homography"] for n, e in methods.items() if "homography" in e}
    if homography:
        first = next(iter(homography.values()))
        auc_keys, prec_keys = list(first["auc"]), list(first["precision"])
        lines += ["## Homography (corner error AUC, %)", ""]
        epe = first.get("epe_correct")
        lines += _table(
            ["method", *(f"AUC@{k:g}px" for k in auc_keys), *(f"prec@{k:g}px" for k in prec_keys)]
            + ["matches", "failures", "ms/pair"]
            + ([f"EPE <{epe['threshold_px']:g}px median / p90", "ms mean"] if epe else []),
            [
                [name, *(pct(r["auc"][k]) for k in auc_keys), *(pct(r["precision"][k]) for k in prec_keys)]
                + [f"{r['num_matches']:.0f}", f"{r['failures']}/{r['num_pairs']}", f"{r['time_ms']:.1f}"]
                + (
                    [
                        f"{r['epe_correct']['median']:.2f} / {r['epe_correct']['p90']:.2f}",
                        f"{r['time_ms_mean']:.1f}",
                    ]
                    if epe and "epe_correct" in r
                    else (["—", "—"] if epe else [])
                )
                for name, r in homography.items()
            ],
        )
        if epe:
            lines += [
                "ms/pair is the median matcher call, ms mean its mean; EPE: end-point error of the matches within "
                f"{epe['threshold_px']:g} px of the true homography's point, over all pairs.",
                "",
            ]
        if all("by_difficulty" in r for r in homography.values()):
            split = first["by_difficulty"]
            lines += [
                f"By difficulty of the true homography (mild: rotation ≤ {MILD_ROTATION_DEG:g}° and zoom ≤ "
                f"{MILD_ZOOM:g}×, {split['mild']['num_pairs']} pairs; hard: the other "
                f"{split['hard']['num_pairs']}), AUC %:",
                "",
            ]
            lines += _table(
                ["method", *(f"{part} @{k:g}px" for part in ("mild", "hard") for k in auc_keys)],
                [
                    [
                        name,
                        *(
                            pct(r["by_difficulty"][part]["auc"][k])
                            for part in ("mild", "hard")
                            for k in auc_keys
                        ),
                    ]
                    for name, r in homography.items()
                ],
            )
            kinds = {
                "rotated": f"rotated > {MILD_ROTATION_DEG:g}° only",
                "zoomed": f"zoomed > {MILD_ZOOM:g}× only",
                "rotated_and_zoomed": "both",
            }
            if all(kind in r["by_difficulty"] for r in homography.values() for kind in kinds):
                thresholds = " / ".join(f"{k:g}" for k in auc_keys)
                lines += [f"The hard pairs by kind, AUC@{thresholds} px %:", ""]
                lines += _table(
                    ["method", *(f"{label} ({split[kind]['num_pairs']})" for kind, label in kinds.items())],
                    [
                        [
                            name,
                            *(
                                " / ".join(pct(r["by_difficulty"][kind]["auc"][k]) for k in auc_keys)
                                for kind in kinds
                            ),
                        ]
                        for name, r in homography.items()
                    ],
                )
    pose = {n: e["pose"] for n, e in methods.items() if "pose" in e}
    if pose:
        auc_keys = list(next(iter(pose.values()))["auc"])
        lines += ["## Relative pose (AUC of max(R, t) angle error, %)", ""]
        lines += _table(
            ["method", *(f"AUC@{k:g}°" for k in auc_keys), "epi. prec.", "matches", "failures", "ms/pair"],
            [
                [name, *(pct(r["auc"][k]) for k in auc_keys), pct(r["epipolar_precision"])]
                + [f"{r['num_matches']:.0f}", f"{r['failures']}/{r['num_pairs']}", f"{r['time_ms']:.1f}"]
                for name, r in pose.items()
            ],
        )
    coarse = {n: e["coarse"] for n, e in methods.items() if "coarse" in e}
    if coarse:
        lines += ["## Matches against exact ground truth (loftr_kd.metrics)", ""]
        lines += _table(
            ["method", "precision @1 / 3 / 5 px %", "recall %", "EPE median / p90 px", "matches", "pairs"],
            [
                [
                    name,
                    " / ".join(pct(r[f"precision@{t}px"]) for t in (1, 3, 5)),
                    pct(r["recall"]),
                    f"{r['epe_median_px']:.2f} / {r['epe_p90_px']:.2f}",
                    f"{r['num_matches']:.0f}",
                    f"{r['num_pairs']}",
                ]
                for name, r in coarse.items()
            ],
        )
        gains = {n: r["correct_cells"] for n, r in coarse.items() if r.get("correct_cells")}
        if gains:
            lines += [
                "End-point error of the matches whose coarse cell is right: at the cell centre vs as returned "
                "(refined where the model refines).",
                "",
            ]
            lines += _table(
                ["method", "matches", "cell centre median / p90 px", "returned median / p90 px"],
                [
                    [
                        name,
                        f"{g['num_matches']:.0f}",
                        f"{g['coarse_epe_median_px']:.2f} / {g['coarse_epe_p90_px']:.2f}",
                        f"{g['refined_epe_median_px']:.2f} / {g['refined_epe_p90_px']:.2f}",
                    ]
                    for name, g in gains.items()
                ],
            )
    return "\n".join(lines)


def plot_auc_curves(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Cumulative error curves per benchmark (``homography_auc.png``, ``pose_auc.png``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = []
    for key, max_error, unit in (
        ("homography", 10.0, "corner error (px)"),
        ("pose", 20.0, "pose error (deg)"),
    ):
        entries = {n: e[key] for n, e in results["methods"].items() if key in e}
        if not entries:
            continue
        fig = Figure(figsize=(5, 4))
        FigureCanvasAgg(fig)  # headless: no pyplot, no GUI backend
        ax = fig.add_subplot()
        for name, r in entries.items():
            x, y = cumulative_curve(r["errors"], max_error)
            aucs = ", ".join(f"{100 * v:.0f}" for v in r["auc"].values())
            ax.plot(x, y, label=f"{name} (AUC {aucs})")
        ax.set_xlabel(unit)
        ax.set_ylabel("fraction of pairs")
        ax.set_xlim(0, max_error)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(out_dir) / f"{key}_auc.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written
