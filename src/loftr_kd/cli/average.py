"""``loftr-kd-average CKPT CKPT [...] --out FILE``: the uniform weight average of student checkpoints of one
architecture (the epochs of one run, or seeds of one stage), written as a ``save_student`` file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loftr-kd-average",
        description="Average the weights of student checkpoints fine-tuned from one initialisation (a model "
        "soup / SWA over saved checkpoints) and write a save_student file. BatchNorm statistics are averaged "
        "too; the report says whether they differed.",
    )
    parser.add_argument("checkpoints", nargs="+", help="two or more checkpoints of one student architecture")
    parser.add_argument("--out", required=True, help="save_student file to write (atomically)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for bad input, with one line on stderr)."""
    args = build_parser().parse_args(argv)

    from pathlib import Path

    from loftr_kd.averaging import average_students
    from loftr_kd.models.student import save_student

    out = Path(args.out)
    sources = [Path(p) for p in args.checkpoints]
    if out.exists() and any(out.resolve() == s.resolve() for s in sources if s.exists()):
        print(f"loftr-kd-average: refusing to write over the input {out}", file=sys.stderr)
        return 2
    try:
        student, report = average_students(sources)
    except (FileNotFoundError, IsADirectoryError, KeyError, RuntimeError, ValueError) as error:
        print(f"loftr-kd-average: {error}", file=sys.stderr)
        return 2
    save_student(student, out)
    held = (
        "identical"
        if report.max_batchnorm_spread == 0
        else f"differ by up to {report.max_batchnorm_spread:.3g}"
    )
    print(
        f"wrote {out}: the mean of {report.count} checkpoints (largest change from the first: "
        f"{report.max_parameter_change:.3g}; BatchNorm statistics {held})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
