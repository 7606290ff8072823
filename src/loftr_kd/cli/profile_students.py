"""``loftr-kd-profile``: time student presets in onnxruntime, whole model and per stage.

``loftr-kd-profile [--presets paper fast] [--sizes 480x640 240x320]
[--threads 2] [--repeats 30] [--json out.json] [--backbone-variants]``

The work is :mod:`loftr_kd.bench.profiling` (what is exported, how it is timed, what the columns mean);
this module parses the command line and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from loftr_kd.bench.profiling import (  # noqa: F401 - load_preset is public here (tests, notebooks)
    load_preset,
    profile,
    profile_backbone_variants,
    report_text,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loftr-kd-profile",
        description="Time student presets in onnxruntime, whole model and per stage "
        "(backbone / transformer / matching).",
    )
    parser.add_argument(
        "--presets",
        nargs="+",
        default=["paper", "fast"],
        help=(
            "conf/student presets; the first is the reference; field overrides follow '+' "
            "(fast+block_depths=[1,2,3]); append ':unfused' to skip re-parameterisation"
        ),
    )
    parser.add_argument(
        "--sizes", nargs="+", default=["480x640", "240x320"], help="input sizes HxW (default 480x640 240x320)"
    )
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per measurement (default 30)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--backbone-variants",
        action="store_true",
        help="instead: compare candidate backbones (fast_student.md's table) at the first size",
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; prints a Markdown table, optionally writes JSON."""
    args = build_parser().parse_args(argv)
    sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes]
    if args.backbone_variants:
        with tempfile.TemporaryDirectory(prefix="profile_students_") as tmp:
            table = profile_backbone_variants(*sizes[0], args.repeats, Path(tmp))
        print(f"1-min load average {os.getloadavg()[0]:.1f}")
        print(table)
        return {"backbone_variants": table}
    with tempfile.TemporaryDirectory(prefix="profile_students_") as tmp:
        result = profile(args.presets, sizes, args.threads, args.repeats, Path(tmp))
    print(report_text(result, args.presets[0]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
