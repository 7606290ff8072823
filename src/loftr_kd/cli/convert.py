"""``loftr-kd-convert SRC DST``: any student checkpoint the project reads (a published Coarse_LoFTR_TRT
``LoFTR_teacher.pt``, a Lightning checkpoint, a ``save_student`` file) -> the project's own
``save_student`` format, optionally for another input size.

``DST`` is never the source, and an existing file there is replaced only when loftr-kd wrote it (an
earlier, unchanged output, recorded in the folder's ``.loftr-kd-outputs.json``) or with ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from loftr_kd.cli import ArgumentParser

PROG = "loftr-kd-convert"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Convert any student checkpoint the project reads (a published Coarse_LoFTR_TRT "
        "LoFTR_teacher.pt, a Lightning checkpoint, a save_student file) to the project's own save_student "
        "format, optionally for another input size.",
    )
    parser.add_argument("source", help="checkpoint to read")
    parser.add_argument(
        "destination",
        help="save_student file to write (atomically; never the source, and an existing file only if "
        "loftr-kd wrote it, or with --force)",
    )
    parser.add_argument(
        "--height", type=int, default=None, help="input height to store (default: the source's)"
    )
    parser.add_argument("--width", type=int, default=None, help="input width to store")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace a destination file that loftr-kd did not write (a user's file of the same name); "
        "without it such a file is never replaced",
    )
    return parser


def load_error(error: Exception) -> ValueError:
    """A checkpoint that cannot be read, as a user's error (a KeyError's message without its quotes)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return ValueError(str(text))


def run(args: argparse.Namespace) -> None:
    from loftr_kd.files import check_output_file, record_outputs, replaced_line, same_file
    from loftr_kd.models.student import count_parameters, load_student, save_student

    source, destination = Path(args.source), Path(args.destination)
    if same_file(destination, source):
        raise ValueError(f"refusing to write over the source {source}; choose another destination")
    own = check_output_file(destination, args.force)
    try:
        model = load_student(source, input_height=args.height, input_width=args.width)
    except (KeyError, RuntimeError) as error:
        raise load_error(error) from error
    except ValueError as error:
        if "input_height" in str(error) or "input_width" in str(error):  # the size asked for, not the file
            options = (("height", args.height), ("width", args.width))
            given = " ".join(f"--{k} {v}" for k, v in options if v is not None) or f"{source}'s stored size"
            raise ValueError(f"{given}: {error}") from error
        raise
    config = model.config
    if min(config.input_height, config.input_width) < 2 * config.coarse_stride:  # the Matcher refuses it
        raise ValueError(
            f"input size {config.input_width}x{config.input_height}: a student matches at least two coarse "
            f"cells a side ({2 * config.coarse_stride} px at stride {config.coarse_stride}); give --height and "
            "--width of at least that"
        )
    own = check_output_file(destination, args.force)  # again: a file may have appeared during the work
    replaced = replaced_line(destination, own)
    save_student(model, destination)
    record_outputs([destination], PROG)
    if replaced:
        print(replaced)
    cfg = model.config
    print(
        f"wrote {destination}: {count_parameters(model):,} parameters, {cfg.input_width}x{cfg.input_height}, "
        f"stride {cfg.coarse_stride}, refine {cfg.refine}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for bad input, with one line on stderr)."""
    from loftr_kd.errors import exit_status

    args = build_parser().parse_args(argv)
    return exit_status(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
