"""Durable file writes: a file is either absent, or whole (write, fsync, rename).

Permissions follow the folder written into: a new file gets its folder's read and
write bits, a new folder its parent's mode (and, on a setgid folder, its group). An
archive created 0700 therefore stays 0700/0600 whoever writes into it, without
relying on the umask of the writing process (docs/archive.md, "Permissions").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

from pacs_engine.stages import stage

#: Permission bits a folder passes on (setgid keeps a group archive's group).
_FOLDER_BITS = 0o777 | stat.S_ISGID
#: Files (folders) `write_atomic_many` (`fsync_dirs(at_once=True)`) writes (syncs) at once.
WRITERS = 8


#: A UID as DICOM defines it: digits in dot-separated components, at most 64 characters.
_DICOM_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_DICOM_UID_CHARS = 64


def series_folder(series_uid: str) -> str:
    """The folder name of a series below `pixels/` and `headers/`.

    A UID of DICOM's form (digits and dots) names its folder as it is: no archive
    file is named so. Any other value (`zarr.json`, `index`, unicode, very long)
    is named by a digest, so no series can collide with the archive's own files.
    Archives written before kept every series under its UID: rows store their
    paths, and `legacy_series_folder` finds them.
    """
    if len(series_uid) <= _DICOM_UID_CHARS and _DICOM_UID.fullmatch(series_uid):
        return series_uid
    digest = hashlib.sha256(series_uid.encode("utf-8", "surrogateescape")).hexdigest()
    return f"uid-{digest[:32]}"


def legacy_series_folder(series_uid: str) -> str | None:
    """The folder name earlier versions gave the series, when it differs from today's."""
    if series_folder(series_uid) == series_uid or not series_uid:
        return None
    if "/" in series_uid or "\\" in series_uid or series_uid.startswith(".") or "\0" in series_uid:
        return None  # never a folder name: earlier versions refused such series
    return series_uid


def series_folders(series_uid: str) -> set[str]:
    """The folder names the series may have: today's, and the one earlier versions gave it."""
    legacy = legacy_series_folder(series_uid)
    return {series_folder(series_uid)} if legacy is None else {series_folder(series_uid), legacy}


def make_dirs(path: str | os.PathLike) -> None:
    """Create `path` and missing parents, each with its parent's mode."""
    missing = []
    path = Path(path)
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # made meanwhile by another writer
        os.chmod(folder, folder.parent.stat().st_mode & _FOLDER_BITS)


def file_mode(folder: str | os.PathLike) -> int:
    """The mode of a new file in `folder`: the folder's read and write bits."""
    return os.stat(folder).st_mode & 0o666


def umask_for(folder: str | os.PathLike) -> int:
    """The umask under which files and folders made by others (zarr, LMDB) match `folder`."""
    return 0o777 & ~(os.stat(folder).st_mode & 0o777)


def adopt_permissions(root: str | os.PathLike) -> None:
    """Set this process's umask from the archive folder `root`, for writes made by libraries.

    zarr and LMDB create files with their own calls; the process umask is the one
    setting they honour. Set once per writing process (the writer's open, each
    ingest task) rather than around writes, which would race with other threads.
    """
    os.umask(umask_for(root))


def write_atomic(
    path: str | os.PathLike,
    data: bytes | bytearray,
    dirs: set[Path] | None = None,
    *,
    durable: bool = True,
) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part.

    The rename is made durable at once, or, when `dirs` is given, the folder is
    added to it for one `fsync_dirs` call after a batch of writes. Not `durable`:
    neither the file nor the rename is synced (a crash may lose the write, never
    leave part of it). The file gets its folder's read and write bits.
    """
    with stage("write"):
        _write_atomic(Path(path), data, dirs, durable, stage)


def write_atomic_many(files: Sequence[tuple[Path, bytes]], dirs: set[Path]) -> None:
    """`write_atomic(path, data, dirs)` of each file, WRITERS at a time: concurrent fsyncs
    share the file system's journal commits (ext4 here: 150 small files in 0.6 s one by
    one, 0.07 s eight at a time). Timed as one "write" stage: the stage clock is the
    process's, not a thread's."""
    with stage("write"), ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(lambda f: _write_atomic(f[0], f[1], dirs, True, _untimed), files))


def _untimed(name: str) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


def _write_atomic(
    path: Path,
    data: bytes | bytearray,
    dirs: set[Path] | None,
    durable: bool,
    timed: Callable[[str], AbstractContextManager[None]],
) -> None:
    make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with open(fd, "wb") as f:
            os.fchmod(fd, file_mode(path.parent))
            f.write(data)
            f.flush()
            if durable:
                with timed("fsync"):
                    os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk: leave no half-written temporary taking space
        tmp.unlink(missing_ok=True)
        raise
    if not durable:
        return
    if dirs is None:
        fsync_dir(path.parent)
    else:
        dirs.add(path.parent)  # one call, atomic: safe from `write_atomic_many`'s threads


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete what `write_atomic` calls killed before their rename left in `folder`.

    Only while no other process writes there (an ingest's tidy step).
    """
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable."""
    with stage("fsync"):
        _fsync_dir(path)


def _fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(dirs: set[Path], at_once: bool = False) -> None:
    """Make the renames of a batch of `write_atomic` calls durable (`at_once`: WRITERS
    folders at a time, see `write_atomic_many`)."""
    if at_once and len(dirs) > 1:
        with stage("fsync"), ThreadPoolExecutor(WRITERS) as pool:
            list(pool.map(_fsync_dir, sorted(dirs)))
    else:
        for folder in sorted(dirs):
            fsync_dir(folder)
    dirs.clear()
