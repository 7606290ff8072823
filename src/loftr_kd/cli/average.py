"""``loftr-kd-average CKPT CKPT [...] --out FILE``: the uniform weight average of student checkpoints of one
architecture (the epochs of one run, or seeds of one stage), written as a ``save_student`` file. Inference
settings (``match_threshold``, ``refine_query``, ``refine_points``, ``border_removal``, input size) may
differ; the file carries the first checkpoint's and a line names those that differed.

``--out`` is never one of the inputs, and an existing file there is replaced only when loftr-kd wrote it
(an earlier, unchanged output, recorded in the folder's ``.loftr-kd-outputs.json``) or with ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from loftr_kd.cli import ArgumentParser

PROG = "loftr-kd-average"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Average the weights of student checkpoints fine-tuned from one initialisation (a model "
        "soup / SWA over saved checkpoints) and write a save_student file. BatchNorm statistics are averaged "
        "too; the report says whether they differed.",
    )
    parser.add_argument("checkpoints", nargs="+", help="two or more checkpoints of one student architecture")
    parser.add_argument(
        "--out",
        required=True,
        help="save_student file to write (atomically; never an input, and an existing file only if loftr-kd "
        "wrote it, or with --force)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an --out file that loftr-kd did not write (a user's file of the same name); without "
        "it such a file is never replaced",
    )
    return parser


def run(args: argparse.Namespace) -> None:
    from loftr_kd.averaging import average_students
    from loftr_kd.cli.convert import load_error
    from loftr_kd.files import check_output_file, record_outputs, replaced_line, same_file
    from loftr_kd.models.student import save_student

    out = Path(args.out)
    sources = [Path(p) for p in args.checkpoints]
    if any(same_file(out, s) for s in sources):
        raise ValueError(f"refusing to write over the input {out}; choose another --out")
    own = check_output_file(out, args.force, label="--out")
    try:
        student, report = average_students(sources)
    except (KeyError, RuntimeError) as error:
        raise load_error(error) from error
    own = check_output_file(out, args.force, label="--out")  # again: a file may have appeared meanwhile
    replaced = replaced_line(out, own)
    save_student(student, out)
    record_outputs([out], PROG)
    if replaced:
        print(replaced)
    held = (
        "identical"
        if report.max_batchnorm_spread == 0
        else f"differ by up to {report.max_batchnorm_spread:.3g}"
    )
    print(
        f"wrote {out}: the mean of {report.count} checkpoints (largest change from the first: "
        f"{report.max_parameter_change:.3g}; BatchNorm statistics {held})"
    )
    if report.differing_settings:  # inference settings only: the weights are averaged all the same
        kept = ", ".join(
            f"{name} {values[0]!r} (the others: {', '.join(repr(v) for v in values[1:])})"
            for name, values in report.differing_settings.items()
        )
        print(f"inference settings differed; {out.name} carries the first checkpoint's: {kept}")


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for bad input, with one line on stderr)."""
    from loftr_kd.errors import exit_status

    args = build_parser().parse_args(argv)
    return exit_status(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
