"""``loftr-kd-homographies``: a folder of photos -> HPatches-layout pairs with exact homographies, for
``loftr-kd-evaluate homography.root=`` (``loftr_kd.data.homography``); ``python -m loftr_kd.cli.homography``
is the same command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from loftr_kd.data.homography import HomographyPairDataset, write_hpatches_layout


def main(argv: Sequence[str] | None = None) -> None:
    """``loftr-kd-homographies --images DIR --out DIR``: HPatches-layout pairs from photos."""
    parser = argparse.ArgumentParser(prog="loftr-kd-homographies", description=main.__doc__)
    parser.add_argument("--images", required=True, help="folder of photos (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder (HPatches layout)")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args(argv)
    dataset = HomographyPairDataset(args.images, height=args.height, width=args.width, seed=args.seed)
    written = write_hpatches_layout(dataset, args.out, args.pairs)
    print(f"wrote {len(written)} HPatches-layout pairs from {len(dataset.images)} photos to {args.out}")


if __name__ == "__main__":
    main()
