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
import sys
import tempfile
from pathlib import Path
from typing import Any

from loftr_kd.bench.profiling import (  # noqa: F401 - load_preset is public here (tests, notebooks)
    load_preset,
    profile,
    profile_backbone_variants,
    report_text,
)
from loftr_kd.cli import ArgumentParser

PROG = "loftr-kd-profile"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
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
        "--force", action="store_true", help="replace a --json file that loftr-kd did not write"
    )
    parser.add_argument(
        "--backbone-variants",
        action="store_true",
        help="instead: compare candidate backbones (fast_student.md's table) at the first size",
    )
    return parser


def _sizes(values: list[str]) -> list[tuple[int, int]]:
    """``--sizes`` as (height, width) pairs; a malformed or non-positive size is a ``ValueError``."""
    sizes = []
    for text in values:
        height, sep, width = text.lower().partition("x")
        try:
            size = (int(height), int(width)) if sep else None
        except ValueError:
            size = None
        if size is None:
            raise ValueError(f"--sizes {text!r}: expected HEIGHTxWIDTH in pixels, e.g. 480x640")
        if min(size) < 1:
            raise ValueError(f"--sizes {text!r}: height and width must be positive")
        sizes.append(size)
    return sizes


def _check_json(path: Path, force: bool) -> None:
    """``--json``: a file path whose folder can exist, and not a user's file (unless ``force``)."""
    from loftr_kd.files import check_outputs, check_writable_folder

    check_writable_folder(path.parent, f"--json {path}: its folder")  # before minutes of timing
    try:
        check_outputs([path], force=force, force_hint="--force")
    except ValueError as error:
        raise ValueError(f"--json {error}") from None


def check_args(args: argparse.Namespace) -> list[tuple[int, int]]:
    """Every option checked before any export or timing; returns the sizes.

    Raises:
        ValueError: the option and what is wrong with it (a preset that cannot be built at a size
            included: a missing ``conf/student`` file, a bad override, a size not divisible by its stride).
            Nothing is exported or timed before every option is checked.
    """
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    sizes = _sizes(args.sizes)
    if args.json is not None:
        _check_json(args.json, args.force)
    if not args.backbone_variants:
        for name in args.presets:
            for height, width in sizes:
                try:
                    load_preset(name.split(":")[0], height, width, fuse=False)
                except (ValueError, FileNotFoundError, TypeError) as error:
                    # TypeError: an override of the wrong type (initial_dim=abc), a user's value too
                    raise ValueError(f"--presets {name} at --sizes {height}x{width}: {error}") from error
    return sizes


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Profile as the command line says; prints a Markdown table, optionally writes JSON, returns the
    results (the command's ``main`` returns its exit status instead).

    Raises:
        ValueError: a bad option (the message names it), before any work.
    """
    args = build_parser().parse_args(argv)
    sizes = check_args(args)
    if args.backbone_variants:
        with tempfile.TemporaryDirectory(prefix="profile_students_") as tmp:
            table = profile_backbone_variants(*sizes[0], args.repeats, Path(tmp))
        print(f"1-min load average {os.getloadavg()[0]:.1f}")
        print(table)
        result: dict[str, Any] = {"backbone_variants": table}
    else:
        with tempfile.TemporaryDirectory(prefix="profile_students_") as tmp:
            result = profile(args.presets, sizes, args.threads, args.repeats, Path(tmp))
        print(report_text(result, args.presets[0]))
    if args.json is not None:
        from loftr_kd.files import record_outputs, write_text

        write_text(args.json, json.dumps(result, indent=2))
        record_outputs([args.json], PROG)
    return result


def main(argv: list[str] | None = None) -> int:
    """``loftr-kd-profile``: exit status 0 on success, 2 (one line on stderr) on a bad input."""
    from loftr_kd.errors import exit_status

    return exit_status(PROG, lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
