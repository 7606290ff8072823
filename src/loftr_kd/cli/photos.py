"""``loftr-kd-photos``: write a named set of installed photographs to a folder, for
``data=homography data.root=<folder>`` (training) or ``loftr-kd-homographies --images <folder>``
(held-out evaluation pairs); ``--set sequences``: real camera sequences for ``data=unlabeled``. The sets
are defined in ``loftr_kd.data.photos`` and ``loftr_kd.data.sequences``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from loftr_kd.data.photos import PHOTO_SETS, collect_photos, photo_set


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loftr-kd-photos",
        description="Write a named set of photographs from the installed packages to a folder (loftr-kd-photos "
        "--set train --out DIR), for data=homography data.root=DIR or loftr-kd-homographies --images DIR.",
    )
    parser.add_argument(
        "--set",
        default="train",
        choices=[*sorted(PHOTO_SETS), "sequences"],
        help="photo set (default train); sequences: real camera sequences (visp-images-data) for data=unlabeled",
    )
    parser.add_argument("--out", help="output folder (PNG files + photos.json)")
    parser.add_argument("--max-side", type=int, default=1600, help="long side of the written photos")
    parser.add_argument(
        "--allow-missing", action="store_true", help="write what is installed instead of failing"
    )
    parser.add_argument("--list", action="store_true", help="list the set and what is installed, then exit")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``loftr-kd-photos --set train --out DIR``: copy a photo set out of the installed packages."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.set == "sequences":
        _sequences(parser, args)
        return
    photos = photo_set(args.set)
    if args.list:
        for p in photos:
            source = p.locate()
            where = str(source) if source is not None else "MISSING, " + p.install_hint
            print(f"{p.name:24s} {p.package:28s} {where}")
        return
    if not args.out:
        parser.error("--out is required (or --list)")
    try:
        rows = collect_photos(photos, args.out, max_side=args.max_side, allow_missing=args.allow_missing)
    except (FileNotFoundError, ValueError) as e:
        from loftr_kd.errors import debug_enabled

        if debug_enabled():
            raise
        parser.error(str(e))
    print(f"wrote {len(rows)} of {len(photos)} photos of set {args.set!r} to {args.out}")


def _sequences(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--set sequences``: the camera sequences of ``loftr_kd.data.sequences``."""
    from loftr_kd.data.sequences import SEQUENCES, collect_sequences

    if args.list:
        for s in SEQUENCES:
            frames = s.frames()
            print(
                f"{s.name:24s} {s.package:28s} {len(frames)} frames"
                if frames
                else f"{s.name:24s} MISSING, {s.install_hint}"
            )
        return
    if not args.out:
        parser.error("--out is required (or --list)")
    try:
        rows = collect_sequences(args.out, allow_missing=args.allow_missing)
    except (FileNotFoundError, ValueError) as e:
        from loftr_kd.errors import debug_enabled

        if debug_enabled():
            raise
        parser.error(str(e))
    print(f"wrote {len(rows)} frames of {len(SEQUENCES)} camera sequences to {args.out}")


if __name__ == "__main__":
    main()
