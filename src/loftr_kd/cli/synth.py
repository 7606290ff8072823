"""``loftr-kd-synth``: write synthetic scenes in the BlendedMVS layout (``loftr_kd.data.synthetic``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from loftr_kd.cli import ArgumentParser, nonnegative_int, positive_int
from loftr_kd.data.synthetic import generate_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="loftr-kd-synth", description="Generate synthetic scenes in the BlendedMVS layout."
    )
    parser.add_argument(
        "--out", default=None, help="output root (default: data/synthetic under the current folder)"
    )
    parser.add_argument("--scenes", type=positive_int, default=12, help="number of scenes (default 12)")
    parser.add_argument("--views", type=positive_int, default=8, help="views per scene (default 8)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default 0)")
    parser.add_argument("--height", type=int, default=576, help="image height (default 576)")
    parser.add_argument("--width", type=int, default=768, help="image width (default 768)")
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="parallel processes (default 1; output is the same)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``loftr-kd-synth``: write synthetic BlendedMVS-layout scenes; returns the exit status."""
    from loftr_kd.paths import DATA_DIR

    parser = build_parser()
    args = parser.parse_args(argv)
    args.out = args.out or str(DATA_DIR / "synthetic")
    from loftr_kd.errors import exit_status

    def run() -> None:
        start = time.perf_counter()
        names = generate_dataset(
            args.out, args.scenes, args.views, args.seed, args.height, args.width, args.workers
        )
        elapsed = time.perf_counter() - start
        print(
            f"wrote {len(names)} scenes x {args.views} views ({args.width}x{args.height}) to {args.out} "
            f"in {elapsed:.1f} s"
        )

    # a bad value or an unwritable --out: one line, exit 2; Ctrl-C / SIGTERM: one line, 130 / 143
    return exit_status("loftr-kd-synth", run)


if __name__ == "__main__":
    sys.exit(main())
