"""``loftr-kd-homographies``: photos -> HPatches-layout pairs with exact homographies, for
``loftr-kd-evaluate homography.root=`` (:mod:`loftr_kd.data.homography`); ``python -m loftr_kd.cli.homography``
is the same command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loftr-kd-homographies",
        description="Write HPatches-layout pairs (<out>/h_NNNN/1.png, 2.png, H_1_2) with exact homographies "
        "from a folder of photos (--images) or from a named photo set of the installed packages (--photo-set, "
        "as loftr-kd-photos writes it). The README's held-out pairs: --photo-set heldout --pairs 120 --seed 2026.",
    )
    from loftr_kd.data.photos import PHOTO_SETS

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of photos (searched recursively)")
    source.add_argument(
        "--photo-set",
        choices=sorted(PHOTO_SETS),
        help="a named photo set (loftr-kd-photos --list); --out must then be a new or empty folder",
    )
    parser.add_argument("--out", required=True, help="output folder (HPatches layout)")
    parser.add_argument("--pairs", type=int, default=100, help="number of pairs (default 100)")
    parser.add_argument(
        "--seed", type=int, default=2026, help="random seed of the homographies (default 2026)"
    )
    parser.add_argument(
        "--height", type=int, default=480, help="height of both images in pixels (default 480)"
    )
    parser.add_argument("--width", type=int, default=640, help="width of both images in pixels (default 640)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``loftr-kd-homographies (--images DIR | --photo-set NAME) --out DIR``: HPatches-layout pairs."""
    from loftr_kd.data.homography import HomographyPairDataset, write_hpatches_layout, write_photo_set_pairs

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.photo_set:
        try:
            written = write_photo_set_pairs(
                args.photo_set, args.out, args.pairs, seed=args.seed, height=args.height, width=args.width
            )
        except (FileExistsError, FileNotFoundError, ValueError) as error:
            parser.error(str(error))
        print(f"wrote {len(written)} HPatches-layout pairs of the photo set {args.photo_set!r} to {args.out}")
        return
    dataset = HomographyPairDataset(args.images, height=args.height, width=args.width, seed=args.seed)
    written = write_hpatches_layout(dataset, args.out, args.pairs)
    print(f"wrote {len(written)} HPatches-layout pairs from {len(dataset.images)} photos to {args.out}")


if __name__ == "__main__":
    main()
