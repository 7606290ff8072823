"""``loftr-kd-photos``: write a named set of installed photographs to a folder, for
``data=homography data.root=<folder>`` (training) or ``loftr-kd-homographies --images <folder>``
(held-out evaluation pairs); ``--set sequences``: real camera sequences for ``data=unlabeled``. The sets
are defined in ``loftr_kd.data.photos`` and ``loftr_kd.data.sequences``.

The output folder may hold other files: they are left alone. A file of a name this command writes is
replaced only when loftr-kd wrote it there and it is unchanged since (``loftr_kd.files`` manifest), or
with ``--force``; photos of an earlier run that this run does not write (another set) are removed, so the
folder holds one set."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from loftr_kd.cli import ArgumentParser
from loftr_kd.data.photos import PHOTO_SETS, collect_photos, photo_set
from loftr_kd.files import check_folder_path, describe_entries
from loftr_kd.images import MIN_TRAINING_SIDE

PROG = "loftr-kd-photos"
# The long side of a written photo: at least the shorter side any reader accepts.
MIN_MAX_SIDE = MIN_TRAINING_SIDE


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
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
    parser.add_argument(
        "--max-side",
        type=int,
        default=1600,
        help=f"long side of the written photos (default 1600, >= {MIN_MAX_SIDE})",
    )
    parser.add_argument(
        "--allow-missing", action="store_true", help="write what is installed instead of failing"
    )
    parser.add_argument("--list", action="store_true", help="list the set and what is installed, then exit")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace files in --out of the names this command writes that loftr-kd did not write (or that were "
        "edited since)",
    )
    return parser


def _earlier_outputs(out: Path, manifest: str, paths_of: Callable[[dict], list[Path]]) -> list[Path]:
    """The files an earlier run listed in ``out/manifest`` (photos.json / sequences.json), when that
    manifest is this command's unchanged output."""
    from loftr_kd.files import is_own_output

    if not is_own_output(out / manifest):
        return []
    try:
        return paths_of(json.loads((out / manifest).read_text()))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What tells a file apart from the one written in its place (written atomically: a new inode)."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size


def write_outputs(
    out: Path,
    planned: list[Path],
    earlier: list[Path],
    force: bool,
    work: Callable[[], list[dict]],
) -> tuple[list[dict], int]:
    """Check ``planned`` (the files ``work`` writes), run ``work``, record what it wrote, remove the
    earlier run's unchanged files that this run did not write. Returns ``work``'s rows and the number of
    files removed.

    Raises:
        ValueError: a planned path holds a file loftr-kd did not write (unless ``force``), or a folder.
    """
    from loftr_kd.files import check_outputs, is_own_output, record_outputs, remove_own_output

    try:
        check_outputs(planned, force=force, force_hint="--force")
    except ValueError as error:
        raise ValueError(f"--out {out}: {error}") from None
    before = {p: _identity(p) for p in planned}
    try:
        rows = work()
    finally:
        # Only what this run wrote is recorded as loftr-kd's: a planned path it did not reach (a failed
        # run) still holds what was there, perhaps a user's file that --force would have replaced.
        written = [p for p in planned if p.is_file() and _identity(p) != before[p]]
        record_outputs(written, PROG)
    replaced = sum(1 for p in written if before[p] is not None)
    if replaced:  # an earlier run's unchanged files (or, with --force, anyone's)
        print(f"replaced {replaced} files that were in {out} before this run")
    planned_set = set(planned)
    stale = [p for p in earlier if p not in planned_set and is_own_output(p)]
    for path in stale:  # another set's photos would be read as part of this one
        remove_own_output(path)
    return rows, len(stale)


def _note_other_files(out: Path, planned: list[Path]) -> None:
    """One line on stderr when ``out`` holds files this run did not write (a data root reads them all)."""
    from loftr_kd.files import OUTPUT_MANIFEST

    ours = {p.name for p in planned if p.parent == out} | {OUTPUT_MANIFEST}
    dirs = {p.parent.name for p in planned if p.parent.parent == out}
    others = sorted(p.name for p in out.iterdir() if p.name not in ours and p.name not in dirs)
    if others:
        from loftr_kd.data.homography import IMAGE_EXTENSIONS

        images = any(Path(name).suffix.lower() in IMAGE_EXTENSIONS for name in others)
        hint = "; a data root reads every image in it" if images else ""
        print(
            f"{PROG}: note: {out} also holds {describe_entries(others)}, not written by this run (left alone){hint}",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``loftr-kd-photos --set train --out DIR``: copy a photo set out of the installed packages.

    Returns the exit status: 0, or 2 with one line on stderr for a bad input (``loftr_kd.errors``).
    """
    from loftr_kd.errors import exit_status

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.list and not args.out:
        parser.error("--out is required (or --list)")
    return exit_status(PROG, lambda: (_sequences if args.set == "sequences" else _photos)(args))


def _option_hint(work: Callable[[], list[dict]]) -> Callable[[], list[dict]]:
    """``work`` with a missing photo's hint naming this command's option (the library's names its argument)."""

    def hinted() -> list[dict]:
        try:
            return work()
        except FileNotFoundError as error:
            raise FileNotFoundError(
                str(error).replace("(or pass allow_missing)", "(or pass --allow-missing)")
            ) from error

    return hinted


def _photos(args: argparse.Namespace) -> None:
    photos = photo_set(args.set)
    if args.list:
        for p in photos:
            source = p.locate()
            where = str(source) if source is not None else "MISSING, " + p.install_hint
            print(f"{p.name:24s} {p.package:28s} {where}")
        return
    if args.max_side < MIN_MAX_SIDE:
        raise ValueError(f"--max-side must be at least {MIN_MAX_SIDE} pixels, got {args.max_side}")
    out = Path(args.out)
    check_folder_path(out, "--out")
    planned = [out / f"{p.name}.png" for p in photos if p.locate() is not None] + [out / "photos.json"]
    earlier = _earlier_outputs(
        out, "photos.json", lambda d: [out / f"{row['name']}.png" for row in d["photos"]]
    )

    def work() -> list[dict]:
        return collect_photos(photos, out, max_side=args.max_side, allow_missing=args.allow_missing)

    rows, removed = write_outputs(out, planned, earlier, args.force, _option_hint(work))
    note = f" (removed {removed} photos of an earlier run of another set)" if removed else ""
    print(f"wrote {len(rows)} of {len(photos)} photos of set {args.set!r} to {args.out}{note}")
    _note_other_files(out, planned)


def _sequences(args: argparse.Namespace) -> None:
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
    out = Path(args.out)
    check_folder_path(out, "--out")
    planned = [out / s.name / f"frame_{n:04d}.png" for s in SEQUENCES for n in range(len(s.frames()))]
    planned.append(out / "sequences.json")
    earlier = _earlier_outputs(
        out,
        "sequences.json",
        lambda d: [out / r["sequence"] / f"frame_{r['frame']:04d}.png" for r in d["frames"]],
    )

    rows, removed = write_outputs(
        out,
        planned,
        earlier,
        args.force,
        _option_hint(lambda: collect_sequences(out, allow_missing=args.allow_missing)),
    )
    note = f" (removed {removed} frames of an earlier run)" if removed else ""
    print(f"wrote {len(rows)} frames of {len(SEQUENCES)} camera sequences to {args.out}{note}")
    _note_other_files(out, planned)


if __name__ == "__main__":
    sys.exit(main())
