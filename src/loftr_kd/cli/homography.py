"""``loftr-kd-homographies``: photos -> HPatches-layout pairs with exact homographies, for
``loftr-kd-evaluate homography.root=`` (:mod:`loftr_kd.data.homography`); ``python -m loftr_kd.cli.homography``
is the same command.

Like ``loftr-kd-synth``, it writes into a new or empty folder; a folder holding only this command's own,
unchanged pairs (recorded in each pair's ``.loftr-kd-outputs.json``) is rewritten, saying so, and its pairs
beyond ``--pairs`` are removed. Anything else in it (another program's files, a pair edited since) is
refused unless ``--force``, which replaces the pairs' files and leaves every other file alone. The pairs are
written in a temporary folder beside ``--out`` first: a failed run leaves ``--out`` as it was."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from loftr_kd.cli import ArgumentParser, nonnegative_int

PROG = "loftr-kd-homographies"
PAIR_FILES = ("1.png", "2.png", "H_1_2")
_PAIR_FOLDER = re.compile(r"h_\d{4,}")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
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
        help="a named photo set (loftr-kd-photos --list)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output folder (HPatches layout): new, empty, or holding this command's own unchanged pairs",
    )
    parser.add_argument("--pairs", type=int, default=100, help="number of pairs (default 100)")
    parser.add_argument(
        "--seed", type=nonnegative_int, default=2026, help="random seed of the homographies (default 2026)"
    )
    parser.add_argument(
        "--height", type=int, default=480, help="height of both images in pixels (default 480, >= 32)"
    )
    parser.add_argument(
        "--width", type=int, default=640, help="width of both images in pixels (default 640, >= 32)"
    )
    parser.add_argument(
        "--on-bad-data",
        choices=("raise", "skip"),
        default="raise",
        help="--images holding an unreadable, too small or blank image: stop (default) or leave it out",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into an --out folder holding other files or edited pairs: the pairs' files are replaced, "
        "everything else is left alone",
    )
    return parser


def check_args(args: argparse.Namespace) -> None:
    """The numbers and the --images folder, before anything is read or written.

    Raises:
        ValueError, FileNotFoundError, NotADirectoryError: the option and what is wrong with it.
    """
    from loftr_kd.images import MIN_TRAINING_SIDE

    if args.pairs < 1:
        raise ValueError(f"--pairs must be at least 1, got {args.pairs}")
    for option, value in (("--height", args.height), ("--width", args.width)):
        if value < MIN_TRAINING_SIDE:
            raise ValueError(
                f"{option} must be at least {MIN_TRAINING_SIDE} pixels (what the matchers accept), got {value}"
            )
    if args.images is not None:
        images = Path(args.images)
        if not images.exists():
            raise FileNotFoundError(f"--images {images}: no such folder; give a folder of photos")
        if not images.is_dir():
            raise NotADirectoryError(f"--images {images} is a file, not a folder; give a folder of photos")
        out = Path(args.out).resolve()
        if out == images.resolve() or images.resolve() in out.parents:
            # its pairs would be read as photos by the next run (searched recursively)
            raise ValueError(f"--out {args.out} is inside --images {images}; choose an --out outside it")
        if out in images.resolve().parents:
            raise ValueError(f"--images {images} is inside --out {args.out}; choose an --out outside it")


def _own_pair(folder: Path) -> bool:
    """A pair folder holding only this command's unchanged files (and their manifest)."""
    from loftr_kd.files import OUTPUT_MANIFEST, is_own_output

    if folder.is_symlink() or not folder.is_dir() or not _PAIR_FOLDER.fullmatch(folder.name):
        return False
    return all(
        p.name == OUTPUT_MANIFEST or (p.name in PAIR_FILES and is_own_output(p)) for p in folder.iterdir()
    )


def check_out(out: Path, count: int, force: bool) -> tuple[list[Path], list[str]]:
    """What ``--out`` holds: (this command's earlier pairs, other entries).

    Raises:
        ValueError: ``out`` (or a folder above it) is a file; it holds something this command did not
            write, or an edited pair, and not ``force``; or a path a pair is written to is not a
            regular file (a folder where ``H_1_2`` goes), even with ``force``.
    """
    from loftr_kd.files import check_folder_path, check_outputs, describe_entries

    check_folder_path(out, "--out")
    if not out.is_dir():
        return [], []
    own, other = [], []
    for entry in sorted(out.iterdir()):
        (own if _own_pair(entry) else other).append(entry)
    if other and not force:
        raise ValueError(
            f"--out {out} holds {describe_entries([p.name for p in other])}, which {PROG} did not write (or which "
            f"was edited since); it writes only into a new or empty folder or over its own unchanged pairs "
            "and never replaces other files: choose a new or empty folder, or pass --force to replace the "
            "pairs' files (other files are left alone)"
        )
    for i in range(count):
        folder = out / f"h_{i:04d}"
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise ValueError(f"--out {out}: {folder.name} is not a folder; remove it or choose another --out")
    try:
        check_outputs([out / f"h_{i:04d}" / name for i in range(count) for name in PAIR_FILES], force=force)
    except ValueError as error:
        raise ValueError(f"--out {out}: {error}") from None
    return own, [p.name for p in other]


def _generate(args: argparse.Namespace, staging: Path) -> int:
    """Write the pairs into ``staging`` (a new folder); returns the number of source photos."""
    from loftr_kd.data.homography import HomographyPairDataset, write_hpatches_layout, write_photo_set_pairs

    if args.photo_set:
        try:
            write_photo_set_pairs(
                args.photo_set, staging, args.pairs, seed=args.seed, height=args.height, width=args.width
            )
        except FileNotFoundError as error:  # a photo of the set is not installed
            message = str(error).replace(
                " (or pass allow_missing)", f" (loftr-kd-photos --set {args.photo_set} --list)"
            )
            raise FileNotFoundError(f"--photo-set {args.photo_set}: {message}") from error
        return 0
    try:
        dataset = HomographyPairDataset(
            args.images, height=args.height, width=args.width, seed=args.seed, on_bad_data=args.on_bad_data
        )
    except (FileNotFoundError, ValueError) as error:
        message = str(error).replace("data.on_bad_data=skip", "--on-bad-data skip")
        raise type(error)(f"--images {message}") from error
    write_hpatches_layout(dataset, staging, args.pairs)
    return len(dataset.images)


def write_pairs(args: argparse.Namespace) -> str:
    """Check, generate, install; returns the line saying what was done."""
    from loftr_kd.files import OUTPUT_MANIFEST, describe_entries, record_outputs, remove_own_output

    check_args(args)
    out = Path(args.out)
    own, other = check_out(out, args.pairs, args.force)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        staging = work / "pairs"
        photos = _generate(args, staging)
        for i in range(args.pairs):
            name = f"h_{i:04d}"
            missing = [f for f in PAIR_FILES if not (staging / name / f).is_file()]
            if missing:  # cv2.imwrite reports a failure only by returning False
                raise ValueError(f"--out {out}: could not write {name}/{', '.join(missing)} (OpenCV failed)")
        written = []
        for i in range(args.pairs):
            folder = out / f"h_{i:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for f in PAIR_FILES:
                os.replace(staging / folder.name / f, folder / f)
                written.append(folder / f)
            record_outputs(written[-len(PAIR_FILES) :], PROG)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Earlier pairs beyond --pairs would be evaluated with these; they are this command's, unchanged.
    stale = [p for p in own if int(p.name[2:]) >= args.pairs]
    for folder in stale:
        for f in PAIR_FILES:
            remove_own_output(folder / f)
        if {p.name for p in folder.iterdir()} <= {OUTPUT_MANIFEST}:
            (folder / OUTPUT_MANIFEST).unlink(missing_ok=True)
            folder.rmdir()
    source = f"of the photo set {args.photo_set!r}" if args.photo_set else f"from {photos} photos"
    line = f"wrote {args.pairs} HPatches-layout pairs {source} to {args.out}"
    targets = {f"h_{i:04d}" for i in range(args.pairs)}
    replaced = len(own) - len(stale)
    forced = [name for name in other if name in targets]
    left = [name for name in other if name not in targets]
    notes = []
    if replaced:
        notes.append(f"replaced {replaced} earlier pairs of {PROG}")
    if stale:
        notes.append(f"removed {len(stale)} earlier pairs beyond --pairs {args.pairs}")
    if forced:
        notes.append(f"--force replaced the files of {describe_entries(forced)}")
    if left:
        notes.append(f"left alone: {describe_entries(left)}")
    if notes:
        line += f" ({'; '.join(notes)})"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    """``loftr-kd-homographies (--images DIR | --photo-set NAME) --out DIR``: HPatches-layout pairs.

    Returns the exit status: 0, or 2 with one line on stderr for a bad input (``loftr_kd.errors``).
    """
    from loftr_kd.errors import exit_status

    args = build_parser().parse_args(argv)
    return exit_status(PROG, lambda: print(write_pairs(args)))


if __name__ == "__main__":
    sys.exit(main())
