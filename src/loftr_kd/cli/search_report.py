"""``loftr-kd-search-report SWEEP_DIR``: (re)write the table and plot of a student search.

The end of every ``hparams_search=student_latency`` sweep writes them itself
(``loftr_kd.cli.search_sweeper.SearchCallback``); this rewrites them from the trials' ``search_trial.json``
files, e.g. for a sweep that was interrupted or after more trials (another sweep into a sub-folder) were
added.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from loftr_kd.cli import ArgumentParser
from loftr_kd.errors import exit_status, report


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="loftr-kd-search-report",
        description="(Re)write the table and plot of a student search (hparams_search=student_latency) from "
        "its trials' search_trial.json files, e.g. for an interrupted sweep.",
    )
    parser.add_argument("sweep_dir", help="the sweep directory (holds <job>/search_trial.json)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace report files loftr-kd did not write (a report edited by hand); without it they are kept",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for bad input, with one line on stderr)."""
    args = build_parser().parse_args(argv)

    from pathlib import Path

    from loftr_kd.search import write_report

    sweep_dir = Path(args.sweep_dir)
    if not sweep_dir.is_dir():
        what = "is a file, not a sweep directory" if sweep_dir.exists() else "no such sweep directory"
        return report("loftr-kd-search-report", NotADirectoryError(f"{sweep_dir}: {what}"))

    def run() -> None:
        paths = write_report(sweep_dir, force=args.force)
        print("wrote " + ", ".join(str(p) for p in paths.values()))

    return exit_status("loftr-kd-search-report", run)  # read-only folder, Ctrl-C: one line


if __name__ == "__main__":
    sys.exit(main())
