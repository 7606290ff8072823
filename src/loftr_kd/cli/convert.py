"""``loftr-kd-convert SRC DST``: any student checkpoint the project reads (a published Coarse_LoFTR_TRT
``LoFTR_teacher.pt``, a Lightning checkpoint, a ``save_student`` file) -> the project's own
``save_student`` format, optionally for another input size."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loftr-kd-convert",
        description="Convert any student checkpoint the project reads (a published Coarse_LoFTR_TRT "
        "LoFTR_teacher.pt, a Lightning checkpoint, a save_student file) to the project's own save_student "
        "format, optionally for another input size.",
    )
    parser.add_argument("source", help="checkpoint to read")
    parser.add_argument("destination", help="save_student file to write (atomically; never the source)")
    parser.add_argument(
        "--height", type=int, default=None, help="input height to store (default: the source's)"
    )
    parser.add_argument("--width", type=int, default=None, help="input width to store")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for bad input, with one line on stderr)."""
    args = build_parser().parse_args(argv)

    from pathlib import Path

    from loftr_kd.models.student import count_parameters, load_student, save_student

    source, destination = Path(args.source), Path(args.destination)
    if destination.exists() and destination.resolve() == source.resolve():
        print(f"loftr-kd-convert: refusing to write over the source {source}", file=sys.stderr)
        return 2
    try:
        model = load_student(source, input_height=args.height, input_width=args.width)
    except (FileNotFoundError, IsADirectoryError, KeyError, RuntimeError, ValueError) as error:
        print(f"loftr-kd-convert: {error}", file=sys.stderr)
        return 2
    save_student(model, destination)
    cfg = model.config
    print(
        f"wrote {destination}: {count_parameters(model):,} parameters, {cfg.input_width}x{cfg.input_height}, "
        f"stride {cfg.coarse_stride}, refine {cfg.refine}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
