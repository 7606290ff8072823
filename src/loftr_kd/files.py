"""Files that are never half-written, and values that JSON can hold.

Every artefact the project writes (checkpoints, ONNX graphs, engines, reports, run metadata) goes through
:func:`replacing`: the content is written to a temporary file beside the target and renamed over it, so a
reader — or a run killed mid-write — sees either the previous complete file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np


def check_input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """A path that can be read as a file: it exists, is a regular file (not a folder, a named pipe, a
    device or a socket, which would hang or never end) and is not empty.

    Raises:
        FileNotFoundError: no such path.
        IsADirectoryError: a folder.
        ValueError: not a regular file, or empty; the message names the path.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} not found") from None
    except OSError as error:
        raise ValueError(f"{what} {path}: cannot read it ({error.strerror})") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        kind = (
            "a named pipe"
            if stat.S_ISFIFO(mode)
            else "a character device"
            if stat.S_ISCHR(mode)
            else "a block device"
            if stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise ValueError(f"{what} {path} is {kind}, not a regular file; give a file")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path}: the file is empty (0 bytes)")
    return path


@contextmanager
def replacing(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    The parent folder is created. On an exception the temporary file is removed and ``path`` is left as
    it was. ``suffix`` matters for writers that look at the name (``.onnx``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file or a broken link where a folder must be
        check_folder_path(path.parent, f"output {path}: its folder")
        raise
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as error:  # a read-only or full folder: name the target, not a temporary name
        raise OSError(error.errno, error.strerror, str(path)) from error
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result gets the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        if error.filename is None or str(error.filename) == str(tmp):  # name the target, not the temp file
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


def temporary_folder(parent: str | os.PathLike, prefix: str) -> Path:
    """A new, unique folder in ``parent`` (``tempfile.mkdtemp``) with the usual permissions: mkdtemp makes
    0700, and a folder renamed into place from it (a scene, a set of pairs) was unreadable to other users."""
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(folder, 0o777 & ~_umask())
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` atomically, flushed to disk before the rename."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload: Any, indent: int = 2) -> Path:
    """Write ``payload`` as JSON atomically (see :func:`to_jsonable`; anything else becomes ``str``)."""
    return write_text(path, json.dumps(to_jsonable(payload), indent=indent, default=str) + "\n")


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically, flushed to disk before the rename."""
    import torch

    with replacing(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: dataclasses (with an ``ok`` property kept), paths, numpy scalars and arrays.

    JSON has no inf/nan, so non-finite floats become ``null`` (a failed estimate reads as missing).
    """
    if is_dataclass(value) and not isinstance(value, type):
        d = asdict(value)
        if hasattr(value, "ok"):
            d["ok"] = value.ok
        return to_jsonable(d)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------------
# Outputs the commands wrote: recognised by content, never by name alone
# --------------------------------------------------------------------------------------------------

OUTPUT_MANIFEST = ".loftr-kd-outputs.json"


class OutputExistsError(ValueError):
    """An output path holds a file that loftr-kd did not write there; it is never replaced silently."""


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content, read in 1 MB blocks (the manifest, label caches, evaluation records)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / OUTPUT_MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def is_own_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file a loftr-kd command wrote there, unchanged since.

    The folder's ``.loftr-kd-outputs.json`` lists what the commands wrote with the SHA-256 of each file;
    a file of that name with other content (edited, or put there by someone else) is not ours.
    """
    path = Path(path)
    entry = _manifest(path.parent).get(path.name)
    if not isinstance(entry, dict) or not path.is_file() or path.is_symlink():
        return False
    try:
        return entry.get("sha256") == sha256_file(path)
    except OSError:
        return False


def check_outputs(
    paths: Iterable[str | os.PathLike], force: bool = False, force_hint: str = "--force"
) -> None:
    """Refuse, before any work, to replace a file that loftr-kd did not write.

    A path that does not exist, or holds an unchanged earlier output of a loftr-kd command, is free.
    Anything else (a user's file of the same name, a folder, a device) is refused in one line naming the
    path and the option that allows replacing it; ``force`` allows replacing regular files.

    Raises:
        OutputExistsError: the first path that may not be replaced.
    """
    for path in map(Path, paths):
        if path.name == OUTPUT_MANIFEST:
            raise OutputExistsError(
                f"output {path}: {OUTPUT_MANIFEST} is the name of loftr-kd's record of the files it wrote in a "
                "folder; choose another name"
            )
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_dir():
            raise OutputExistsError(f"output {path} is a folder; choose a file path")
        if not path.is_file() or path.is_symlink():
            raise OutputExistsError(f"output {path} exists and is not a regular file; choose another path")
        if force or is_own_output(path):
            continue
        raise OutputExistsError(
            f"output {path} already exists and was not written by loftr-kd; it is never replaced "
            f"without {force_hint}: choose another path, or pass {force_hint} to replace it"
        )


def record_outputs(paths: Iterable[str | os.PathLike], command: str) -> None:
    """Add written files to their folders' manifests (so a later run may replace or remove them)."""
    by_folder: dict[Path, list[Path]] = {}
    for path in map(Path, paths):
        if path.is_file():
            by_folder.setdefault(path.parent, []).append(path)
    for folder, written in by_folder.items():
        with _manifest_lock(folder):
            files = _manifest(folder)
            for path in written:
                files[path.name] = {"sha256": sha256_file(path), "command": command}
            write_json(folder / OUTPUT_MANIFEST, {"written_by": "loftr-kd", "files": files})


@contextmanager
def _manifest_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s manifest for one read-modify-write: two commands recording into one folder at
    once would otherwise each write the manifest it read, and one's entries would be lost. The lock is
    the folder itself (``flock`` on its descriptor), so no lock file is left behind."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        with suppress(OSError):  # a file system without flock on folders (NFS): unlocked, as before the lock
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_own_output(path: str | os.PathLike) -> bool:
    """Delete ``path`` only if it is an unchanged loftr-kd output (:func:`is_own_output`)."""
    path = Path(path)
    if not is_own_output(path):
        return False
    path.unlink()
    with _manifest_lock(path.parent):
        files = _manifest(path.parent)
        files.pop(path.name, None)
        write_json(path.parent / OUTPUT_MANIFEST, {"written_by": "loftr-kd", "files": files})
    return True


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Encode ``image`` by its file extension (OpenCV) and write it atomically.

    ``cv2.imwrite`` only returns False on failure; this raises ``OSError`` (a read-only or full location)
    or ``ValueError`` (an extension OpenCV cannot encode).
    """
    import cv2

    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise ValueError(f"cannot encode an image as {path.suffix!r} for {path}")
    return write_bytes(path, encoded.tobytes())


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one existing file (a symlink or a hard link to it included)."""
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def check_folder_path(folder: Path, label: str) -> None:
    """``folder`` is a folder or can become one: neither it nor the nearest existing folder above it is a file.

    Raises:
        NotADirectoryError: ``<label>`` and the file in the way.
    """
    for path in (folder, *folder.parents):
        if path.is_symlink() and not path.exists():
            where = "is" if path == folder else f"is inside {path}, which is"
            raise NotADirectoryError(
                f"{label} {folder} {where} a broken symbolic link (to {os.readlink(path)}); choose another path"
            )
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == folder else f"is inside {path}, which is a file"
                raise NotADirectoryError(f"{label} {folder} {where}, not a folder; choose another path")
            return


def check_writable_folder(folder: Path, label: str) -> None:
    """``folder`` is (or can become) a folder this process may write into: :func:`check_folder_path`, then a
    probe file in the nearest existing folder (permissions alone miss read-only mounts). Nothing is created.

    Raises:
        NotADirectoryError: a file in the way.
        OSError: the location cannot be written (its errno; the filename names the folder and ``label``).
    """
    check_folder_path(folder, label)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        # errors.one_line says what the errno means and what to do, naming the folder
        raise OSError(error.errno, error.strerror, f"{existing} ({label} {folder})") from None


def check_output_file(path: Path, force: bool, label: str = "output") -> bool:
    """Refuse, before any work, a destination that may not be written; returns whether it is an earlier,
    unchanged output of loftr-kd (replaced silently but for one line).

    Raises:
        OutputExistsError: ``path`` is a folder, not a regular file, or a file loftr-kd did not write
            (unless ``force``).
        NotADirectoryError: a folder above ``path`` is a file.
    """
    check_outputs([path], force=force, force_hint="--force")
    check_folder_path(path.parent, f"{label} {path}: its folder")
    return is_own_output(path)


def replaced_line(path: Path, own: bool) -> str | None:
    """The one line that says an existing file was replaced (None when there was none)."""
    if own:
        return f"replaced {path}: an earlier output of loftr-kd, unchanged since"
    if path.is_file():
        return f"replaced {path} (--force; loftr-kd had not written it)"
    return None


def describe_entries(names: Sequence[str], shown: int = 5) -> str:
    """The first ``shown`` of a folder's entry names, and how many there are when more: for error lines."""
    return ", ".join(names[:shown]) + (f" ... ({len(names)} entries)" if len(names) > shown else "")
