"""Pairs of real images without geometry: sequences (videos, numbered frames) and unordered photos.

``data=unlabeled data.root=FOLDER`` trains on such pairs with a sparse teacher's matches as pseudo ground
truth (:mod:`loftr_kd.data.labels` labels them once, checks them with RANSAC and caches them;
:func:`loftr_kd.supervision.coarse_ground_truth` turns the matches into coarse ground truth). What counts
as what under ``root``:

- a **video** (``.mp4``, ``.avi``, ``.mov``, ``.mkv``, ``.mpeg``, ``.mpg``, ``.webm``) is a sequence; its
  frames are decoded once into the label cache;
- a **folder whose images end in frame numbers** (``image0001.pgm``, ``frame_12.png``: at least
  ``min_sequence`` of them, one name stem with a varying number) is a sequence in number order;
- any other images of a folder are **unordered photos**: every pair of them is a candidate, and the
  teacher decides which overlap (pairs without enough RANSAC-checked matches are dropped).

Sequence pairs are frames ``gap`` apart for every ``gap`` in ``gaps`` (small gaps: easy pairs; large: wide
baselines). At most ``max_pairs`` pairs are drawn, deterministically from ``seed``.

Symlinked folders are followed, each folder once (a link back to a folder already searched, such as
``self -> .``, is skipped and said). Label caches (``labels_dir``, or any folder of decoded video frames or
labels) are left out, so labels kept inside ``root`` never become data. Every image and video is checked
when it is found (an image's header and completeness, a video's first frame): a bad file is an error naming
it before any teacher runs, or, with ``on_bad_data="skip"``, left out with one warning listing them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loftr_kd.data.homography import IMAGE_EXTENSIONS
from loftr_kd.errors import ON_BAD_DATA
from loftr_kd.images import MIN_TRAINING_SIDE

log = logging.getLogger(__name__)

__all__ = [
    "VIDEO_EXTENSIONS",
    "FrameRef",
    "PairSpec",
    "UnlabeledSettings",
    "candidate_pairs",
    "discover",
    "media_problem",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".mpeg", ".mpg", ".webm", ".m4v")
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True)
class FrameRef:
    """One image: a file (``frame`` is ``None``) or frame ``frame`` of a video file."""

    path: str
    frame: int | None = None

    @property
    def label(self) -> str:
        return self.path if self.frame is None else f"{self.path}#{self.frame}"


@dataclass(frozen=True)
class PairSpec:
    """A candidate pair and where it came from (``sequence`` with its frame gap, or ``photos``)."""

    image0: FrameRef
    image1: FrameRef
    kind: str
    gap: int = 0


@dataclass(frozen=True)
class UnlabeledSettings:
    """How candidate pairs are drawn from a folder (``conf/data/unlabeled.yaml``)."""

    gaps: tuple[int, ...] = (2, 4, 8, 16)
    min_sequence: int = 8
    max_pairs: int = 3000
    max_photo_pairs_per_folder: int = 200
    seed: int = 0
    # Videos are decoded into the label cache with their long side at most this (INTER_AREA); null: full
    # resolution (a minute of 4K video is about 10 GB of PNG frames).
    video_max_side: int | None = 1280

    def __post_init__(self) -> None:
        if not self.gaps or any(int(g) < 1 for g in self.gaps):
            raise ValueError(f"data.pairs.gaps={list(self.gaps)!r}: expected frame gaps >= 1")
        if self.min_sequence < 2:
            raise ValueError(f"data.pairs.min_sequence={self.min_sequence!r}: expected >= 2")
        if self.max_pairs < 1:
            raise ValueError(f"data.pairs.max_pairs={self.max_pairs!r}: expected >= 1")
        if self.video_max_side is not None and self.video_max_side < 64:
            raise ValueError(
                f"data.pairs.video_max_side={self.video_max_side!r}: expected >= 64 pixels, or null (full size)"
            )


def _frame_number(path: Path) -> tuple[str, int] | None:
    match = _NUMBERED.match(path.stem)
    return (match.group(1), int(match.group(2))) if match else None


def discover(
    root: str | Path,
    min_sequence: int = 8,
    exclude: Sequence[str | Path] = (),
    on_bad_data: str = "raise",
) -> tuple[list[list[FrameRef]], list[list[FrameRef]]]:
    """Sequences and groups of unordered photos under ``root`` (recursive, deterministic order).

    Args:
        root: folder of videos and images; symlinked folders are followed, each folder once.
        min_sequence: numbered images of one name stem in a folder that make a sequence.
        exclude: folders left out (the label cache's ``labels_dir``); folders holding a label cache
            (decoded video frames, labels) are left out wherever they are.
        on_bad_data: ``"raise"``: an unreadable, truncated or too small image, or a video that cannot be
            opened or gives no frame, is an error naming it; ``"skip"``: such files are left out, with one
            warning listing them.

    Returns:
        ``(sequences, photo_groups)``: each a list of frames in order (videos as one entry per video with
        ``frame=None`` until decoded: see :func:`video_frames`).

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no usable image and no video.
        NotADirectoryError: ``root`` is a file.
        ValueError: a bad image or video (``on_bad_data="raise"``), or an unknown ``on_bad_data``.
    """
    if on_bad_data not in ON_BAD_DATA:
        raise ValueError(f"data.on_bad_data={on_bad_data!r}: expected one of {', '.join(ON_BAD_DATA)}")
    root = Path(root)
    if root.is_file():
        raise NotADirectoryError(
            f"data.root={root} is a file; unlabeled data needs a folder of images or videos"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={root}: folder does not exist")
    files = sorted(_walk_files(root, [Path(p) for p in exclude]))
    videos = [p for p in files if p.suffix.lower() in VIDEO_EXTENSIONS]
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS and not p.stem.endswith("_masked")]
    if not videos and not images:
        raise FileNotFoundError(
            f"data.root={root}: no images ({', '.join(IMAGE_EXTENSIONS)}) and no videos "
            f"({', '.join(VIDEO_EXTENSIONS)}) found"
        )
    bad = {path: reason for path in videos + images if (reason := media_problem(path)) is not None}
    if bad:
        reasons = list(bad.values())
        if on_bad_data == "raise":
            more = f"; {len(reasons) - 1} more bad files under data.root={root}" if len(reasons) > 1 else ""
            raise ValueError(f"{reasons[0]}{more} (data.on_bad_data=skip leaves such files out)")
        log.warning(
            "data.root=%s: left out %d bad files (data.on_bad_data=skip): %s",
            root,
            len(bad),
            "; ".join(reasons),
        )
        videos = [p for p in videos if p not in bad]
        images = [p for p in images if p not in bad]
        if not videos and not images:
            raise FileNotFoundError(f"data.root={root}: no usable image or video is left (every file is bad)")
    sequences: list[list[FrameRef]] = [[FrameRef(str(v))] for v in videos]
    groups: list[list[FrameRef]] = []
    by_folder: dict[Path, list[Path]] = {}
    for image in images:
        by_folder.setdefault(image.parent, []).append(image)
    for folder in sorted(by_folder):
        numbered: dict[str, list[tuple[int, Path]]] = {}
        loose = []
        for image in by_folder[folder]:
            key = _frame_number(image)
            if key is None:
                loose.append(image)
            else:
                numbered.setdefault(key[0] + image.suffix.lower(), []).append((key[1], image))
        for stem in sorted(numbered):
            frames = sorted(numbered[stem])
            if len(frames) >= min_sequence:
                # Camera photos (IMG_0001.jpg ...) are numbered too: say so, they would lose their pairs.
                log.info(
                    "%d numbered images in %s taken as a sequence (data.pairs.min_sequence=%d: only frames "
                    "data.pairs.gaps apart are paired; for numbered photos, set data.pairs.min_sequence "
                    "above their count or rename them)",
                    len(frames),
                    folder,
                    min_sequence,
                )
                sequences.append([FrameRef(str(p)) for _, p in frames])
            else:
                loose.extend(p for _, p in frames)
        if len(loose) >= 2:
            groups.append([FrameRef(str(p)) for p in sorted(loose)])
    return sequences, groups


def _walk_files(root: Path, exclude: Sequence[Path]) -> list[Path]:
    """Every file under ``root``, following symlinked folders that lead outside it (a data folder of links to
    sequences elsewhere; pathlib's rglob does not) and entering each folder once, by ``(st_dev, st_ino)``:
    os.walk does not detect cycles, and one ``self -> .`` link listed every image 41 times, two never ended.
    A link to a folder inside ``root`` is skipped (the folder is searched under its own path). Label caches
    are left out."""
    excluded = {_folder_id(p) for p in exclude if p.is_dir()}
    inside_root = root.resolve()
    visited = {_folder_id(root)}
    inward: list[Path] = []  # links to folders inside root: those are searched under their own paths
    repeated: list[Path] = []
    caches: list[Path] = []
    files: list[Path] = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        here = Path(folder)
        kept = []
        for name in sorted(subfolders):
            path = here / name
            try:
                identity = _folder_id(path)
                target = path.resolve() if path.is_symlink() else None
            except (OSError, RuntimeError):  # vanished, or a link that cannot be followed
                continue
            if identity in excluded or _holds_label_cache(path):
                caches.append(path)
            elif target is not None and (target == inside_root or inside_root in target.parents):
                inward.append(path)
            elif identity in visited:
                repeated.append(path)
            else:
                visited.add(identity)
                kept.append(name)
        subfolders[:] = kept
        files += [here / name for name in names if (here / name).is_file()]
    for skipped, why in (
        (
            inward,
            "lead back inside it (searched under their own paths; a loop such as `self -> .` would list "
            "every image again and again)",
        ),
        (repeated, "lead to a folder outside it already searched through another link"),
    ):
        if skipped:
            log.warning(
                "data.root=%s: skipped %d linked folders that %s: %s",
                root,
                len(skipped),
                why,
                ", ".join(str(p) for p in skipped),
            )
    if caches:
        log.info("data.root=%s: left out label caches: %s", root, ", ".join(str(p) for p in caches))
    return files


def _folder_id(path: Path) -> tuple[int, int]:
    """A folder's identity through any link: ``(st_dev, st_ino)``."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _holds_label_cache(folder: Path) -> bool:
    """A folder :func:`video_frames` decoded a video into, or a label cache of :mod:`loftr_kd.data.labels`."""
    if (folder / "frames.txt").is_file() and (folder / "frame_000000.png").is_file():
        return True
    return (folder / "labels.json").is_file() and (
        (folder / "complete.json").is_file() or any(folder.glob("shard_*.npz"))
    )


def media_problem(path: str | Path) -> str | None:
    """Why an image or video cannot be labelled, found cheaply (an image's header and its end, a video's
    first frame), as ``"<file>: <problem>"``; ``None`` when it looks usable."""
    from loftr_kd.images import check_file_complete, read_image_size, too_small_reason

    path = Path(path)
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        import cv2

        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                return f"{path}: cannot open the video (unsupported codec or corrupt file)"
            ok, frame = capture.read()
        finally:
            capture.release()
        if not ok or frame is None:
            return f"{path}: the video gave no frame"
        if min(frame.shape[:2]) < MIN_TRAINING_SIDE:
            return (
                f"{path}: frames of {frame.shape[1]}x{frame.shape[0]} pixels, too small to label and train on "
                f"(the shorter side needs {MIN_TRAINING_SIDE} px)"
            )
        return None
    try:
        height, width = read_image_size(path)
        check_file_complete(path)
    except (ValueError, OSError) as error:  # ImageError is a ValueError; FileNotFoundError an OSError
        return str(error) if str(path) in str(error) else f"{path}: {error}"
    small = too_small_reason(height, width)
    return f"{path}: {small}" if small else None


def candidate_pairs(
    sequences: Sequence[Sequence[FrameRef]], groups: Sequence[Sequence[FrameRef]], settings: UnlabeledSettings
) -> list[PairSpec]:
    """The candidate pairs: frames ``gap`` apart in each sequence, and pairs of photos within a folder.

    Sequences and photo pairs share ``max_pairs`` in proportion to how many candidates each gives; the
    draw is deterministic from ``settings.seed``.
    """
    rng = np.random.default_rng([settings.seed, 11])
    from_sequences: list[PairSpec] = []
    for frames in sequences:
        for gap in sorted({int(g) for g in settings.gaps}):
            from_sequences += [
                PairSpec(frames[i], frames[i + gap], "sequence", gap) for i in range(len(frames) - gap)
            ]
    from_photos: list[PairSpec] = []
    for photos in groups:
        pairs = [(i, j) for i in range(len(photos)) for j in range(i + 1, len(photos))]
        if len(pairs) > settings.max_photo_pairs_per_folder:
            keep = rng.choice(len(pairs), settings.max_photo_pairs_per_folder, replace=False)
            pairs = [pairs[k] for k in sorted(keep)]
        from_photos += [PairSpec(photos[i], photos[j], "photos") for i, j in pairs]
    everything = from_sequences + from_photos
    if len(everything) <= settings.max_pairs:
        return everything
    keep = np.sort(rng.choice(len(everything), settings.max_pairs, replace=False))
    return [everything[k] for k in keep]


def video_frames_folder(path: str | Path, frames_dir: Path, max_side: int | None) -> Path:
    """Where :func:`video_frames` decodes a video: ``frames_dir/<hash>``, the hash of the video's path and
    content, and of ``max_side`` only for a video it shrinks (a smaller video keeps the folder, and so the
    labels, it had before frames were shrunk)."""
    import cv2

    from loftr_kd.files import sha256_file

    video = Path(path)
    text = f"{video.resolve()}:{sha256_file(video)}"
    capture = cv2.VideoCapture(str(video))
    try:
        long_side = max(capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if long_side <= 0:  # a container that does not say: the first frame does
            ok, frame = capture.read()
            long_side = max(frame.shape[:2]) if ok else 0
    finally:
        capture.release()
    if max_side is not None and long_side > max_side:
        text += f":max_side={max_side}"
    return Path(frames_dir) / hashlib.sha256(text.encode()).hexdigest()[:16]


def video_frames(
    path: str | Path, out_dir: Path, every: int = 1, max_side: int | None = None
) -> list[FrameRef]:
    """Decode a video's frames once into ``out_dir`` (PNG, atomically); reuse frames already there.

    Args:
        every: keep every ``every``-th frame.
        max_side: shrink frames whose long side is larger to this (aspect kept, ``INTER_AREA``); ``None``:
            full resolution.

    Raises:
        ValueError: the video cannot be opened or gives no frame.
    """
    import cv2

    from loftr_kd.files import write_image

    out_dir.mkdir(parents=True, exist_ok=True)
    done = out_dir / "frames.txt"
    if done.is_file():
        return [FrameRef(str(out_dir / name)) for name in done.read_text().split()]
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: cannot open the video (unsupported codec or corrupt file)")
    names = []
    index = 0
    announced = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # 0 where the container does not say
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            if index == 0 and min(frame.shape[:2]) < MIN_TRAINING_SIDE:
                raise ValueError(
                    f"{path}: frames of {frame.shape[1]}x{frame.shape[0]} pixels, too small to label and train "
                    f"on (the shorter side needs {MIN_TRAINING_SIDE} px)"
                )
            if index % every == 0:
                name = f"frame_{index:06d}.png"
                gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                if max_side is not None and max(gray.shape) > max_side:
                    scale = max_side / max(gray.shape)
                    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
                    gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
                write_image(out_dir / name, gray)
                names.append(name)
            index += 1
    finally:
        capture.release()
    if not names:
        raise ValueError(f"{path}: the video gave no frame")
    if announced and index < announced:  # as loftr-kd-demo reports it: the frames read are kept
        log.warning(
            "%s: the video ended after %d of the %d frames its container announces (truncated or corrupt); "
            "the %d frames read are used",
            path,
            index,
            announced,
            index,
        )
    from loftr_kd.files import write_text

    write_text(done, "\n".join(names) + "\n")
    return [FrameRef(str(out_dir / name)) for name in names]


def describe(pairs: Sequence[PairSpec]) -> dict[str, Any]:
    """Counts by kind and gap, for logs and the cache's record."""
    kinds: dict[str, int] = {}
    for pair in pairs:
        key = pair.kind if pair.kind != "sequence" else f"sequence gap {pair.gap}"
        kinds[key] = kinds.get(key, 0) + 1
    return {"pairs": len(pairs), "by_kind": dict(sorted(kinds.items()))}
