"""Durable file writes: a file is either absent, or whole (write, fsync, rename).

Permissions follow the folder written into: a new file gets its folder's read and
write bits, a new folder its parent's mode (and, on a setgid folder, its group). An
archive created 0700 therefore stays 0700/0600 whoever writes into it, without
relying on the umask of the writing process (docs/archive.md, "Permissions").
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import os
import re
import resource
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pacs_engine.stages import stage

#: Threads that sync a batch's files at once (`fsync_dirs`): enough for one journal commit.
_SYNC_THREADS = 16
_SYNC_NAME = "fsync"  # their names' prefix
_SYNC_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (its process, the pool)
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of the range's dirty pages
#: Share of the soft RLIMIT_NOFILE that deferred writes may hold open in a process, waiting
#: for their batch's sync (the rest: the index, inputs, sockets, libraries' own files).
_HELD_SHARE = 4
#: File descriptors deferred writes hold open in this process (any batch, any thread).
_held = 0
_HELD_LOCK = threading.Lock()
#: Permission bits a folder passes on (setgid keeps a group archive's group).
_FOLDER_BITS = 0o777 | stat.S_ISGID


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


def make_dirs(path: str | os.PathLike) -> list[Path]:
    """Create `path` and missing parents, each with its parent's mode; the folders made
    here (a durable write syncs their parents, where their entries are)."""
    missing = []
    path = Path(path)
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    made = []
    for folder in reversed(missing):
        mode = folder.parent.stat().st_mode & _FOLDER_BITS
        try:
            os.mkdir(folder, mode & 0o777)
        except FileExistsError:
            continue  # made meanwhile by another writer, whose write syncs its parent
        # Set only when the umask took bits off or setgid was not inherited: a chmod is
        # one more journalled change a folder, where a stat is not.
        if os.stat(folder).st_mode & _FOLDER_BITS != mode:
            os.chmod(folder, mode)
        made.append(folder)
    return made


def make_dirs_durable(path: str | os.PathLike) -> None:
    """`make_dirs`, then the folders holding the entries of those it made synced: the
    folder stays after a power cut once what is written into it is acknowledged."""
    made = make_dirs(path)
    if made:
        _fsync_folders({folder.parent for folder in made})


def folder_identity(folder: str | os.PathLike) -> tuple[int, int] | str:
    """What makes a folder itself whatever path names it (a link, a bind mount)."""
    # One stat: resolving a path took one lstat per component, and misses a bind mount.
    try:
        st = os.stat(folder)
    except OSError:  # missing or unreadable: its path, which its users report as such
        return os.path.realpath(folder)
    return st.st_dev, st.st_ino


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


class DeferredWrites(set[Path]):
    """Folders to sync after a batch of writes, and files the batch left in their temporaries.

    `write_atomic` into it writes each file to its temporary only; `fsync_dirs` then
    syncs every temporary at once (from several threads: the file system commits
    its journal once for all of them, where one fsync after another waits for a
    commit each), renames them into place and syncs their folders, at once too.
    A file is absent or whole as ever; it is reachable only once all are durable.

    Each temporary is synced through the descriptor that wrote it, held open until then:
    a write error is reported to the descriptors open on the file when it happens, and a
    descriptor opened later (once the inode was evicted) would sync with no error, a file
    lost reported durable. Past `held_budget` descriptors in the process (read as the batch
    begins), a file is synced as it is written instead. Used as a context manager, it
    deletes on leaving what it was left holding (an abandoned batch's): no temporary
    stays, no descriptor leaks.
    """

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[Path, Path] = {}  # path -> its temporary, written, not yet renamed
        self.fds: dict[Path, int] = {}  # path -> the descriptor that wrote it, not yet synced
        self.budget = held_budget()  # once a batch, not a getrlimit call per file

    def __enter__(self) -> DeferredWrites:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard_since(0)

    def discard_since(self, count: int) -> None:
        """Delete the temporaries of the files written after the first `count` (a failed
        part's): they are not to be made durable.

        Each is tried and its descriptor closed whatever fails (a file system gone
        read-only fails every delete); the first error is raised once all are.
        """
        first: Exception | None = None
        for path in list(self.files)[count:]:
            tmp, fd = self.files.pop(path), self.fds.pop(path, None)
            try:
                try:
                    tmp.unlink(missing_ok=True)
                finally:
                    if fd is not None:
                        _close_held(fd)
            except Exception as error:  # the others are still deleted and closed
                if first is None:
                    first = error
        if first is not None:
            raise first


def write_atomic(
    path: str | os.PathLike,
    data: bytes | bytearray | memoryview | Sequence[bytes | memoryview],
    dirs: set[Path] | None = None,
    *,
    durable: bool = True,
) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part.

    `data` may be one buffer or a list of parts, written one after the other (a shard's
    chunks from their own buffers: no copy of the whole into one first).

    The rename is made durable at once, or, when `dirs` is given, the folder is
    added to it for one `fsync_dirs` call after a batch of writes; a `DeferredWrites`
    also leaves the file in its temporary for that call to sync and rename. Not
    `durable`: neither the file nor the rename is synced (a crash may lose the write,
    never leave part of it). The file gets its folder's read and write bits.
    """
    with stage("write"):
        path = Path(path)
        batch = dirs if durable and isinstance(dirs, DeferredWrites) else None
        if batch is not None and path in batch.files:
            # Its temporary is this write's too, and a rewrite reads the old file.
            raise ValueError(f"{path}: written twice in one batch of deferred writes")
        # The rename's folder, and those holding the entries of the folders made for it
        # (a new array's): durable before a row may reference a file in them.
        folders = {path.parent, *(folder.parent for folder in make_dirs(path.parent))}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        mode = file_mode(path.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        held = False  # the descriptor left open for the batch's sync, which closes it
        try:
            with open(fd, "wb", closefd=False) as f:
                # Set only when the umask took bits off (or the temporary was an old
                # one): a chmod is one more journalled change a file, where a stat is not.
                if os.fstat(fd).st_mode & 0o777 != mode:
                    os.fchmod(fd, mode)
                for part in (data,) if isinstance(data, bytes | bytearray | memoryview) else data:
                    f.write(part)
            if batch is not None and _hold(batch.budget):
                held = True
                start_writeback(fd)  # synced later, with the batch: its writeback begins now
            elif durable:
                with stage("fsync"):
                    os.fsync(fd)
            if batch is not None:
                batch.files[path] = tmp
                if held:
                    batch.fds[path] = fd
                batch.update(folders)  # synced with the batch
                return
            os.replace(tmp, path)
        except BaseException:  # a full disk: leave no half-written temporary taking space
            if batch is not None and batch.files.get(path) == tmp:  # interrupted as it was kept
                del batch.files[path]
                batch.fds.pop(path, None)
            if held:
                held = False
                _release()
            tmp.unlink(missing_ok=True)
            raise
        finally:
            if not held:
                os.close(fd)
        if not durable:
            return
        if dirs is None:
            _fsync_folders(folders)
        else:
            dirs.update(folders)


def write_together(
    files: Sequence[tuple[Path, bytes | bytearray | memoryview | Sequence[bytes | memoryview]]],
) -> None:
    """Write `files` atomically and make them durable together: one round of fsyncs for
    all of them (`DeferredWrites`), not two one after another per file."""
    with DeferredWrites() as writes:  # a failed write leaves no temporary, no descriptor open
        for path, data in files:
            write_atomic(path, data, writes)
        fsync_dirs(writes)


def start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages to disk, without waiting for them (Linux).

    A batch's files are synced at its end (`fsync_dirs`): begun as each is written, their
    writeback runs while the batch goes on (its header packs, its next parts), so that
    sync waits for less of it. Only a hint: durability is still the fsync's, on the same
    descriptor, which reports any write error.
    """
    call = _sync_file_range()
    if call is not None:
        # Its result is not read: a hint that fails (EINVAL where the file system has no
        # writeback to start, EIO) leaves the pages dirty, and the fsync writes them or
        # reports the error.
        call(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # 0, 0: the whole file


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """sync_file_range(2) from the C library, None where it has none (not Linux)."""
    import ctypes

    call: Any = getattr(ctypes.CDLL(None), "sync_file_range", None)
    if call is not None:
        call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return call


def held_budget() -> int:
    """How many descriptors deferred writes may hold open in this process at once."""
    # A share of the soft limit (1,024 by default on Linux): a batch of small series
    # holds ~3 files a series. Where the limit is RLIM_INFINITY (-1; never on Linux, whose
    # limit is at most fs.nr_open), none is held: each file is synced as it is written.
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] // _HELD_SHARE


def _hold(budget: int) -> bool:
    """Count one more descriptor held for a batch's sync, unless the process holds `budget`
    (`held_budget`) already."""
    global _held
    with _HELD_LOCK:
        if _held >= budget:
            return False
        _held += 1
        return True


def _release() -> None:
    """Count one descriptor held for a batch's sync fewer."""
    global _held
    with _HELD_LOCK:
        _held -= 1


def _close_held(fd: int) -> None:
    """Close a descriptor held for a batch's sync."""
    try:
        os.close(fd)
    finally:
        _release()


def unused_path(name: Callable[[int], Path], first: int = 0) -> Path:
    """`name(first)`, `name(first + 1)`... the first path that does not exist: of two files
    named after the same second, the second must not replace the first. Whoever calls it
    holds what keeps another process from taking that name meanwhile, or accepts the race."""
    n = first
    while (path := name(n)).exists():
        n += 1
    return path


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
    _fsync_folders({Path(path)})


def _fsync_folders(folders: set[Path]) -> None:
    """Make the entries of `folders` durable, at once (one journal commit for them all)."""
    with stage("fsync"):
        _sync_folders(sorted(folders))


def fsync_dirs(dirs: set[Path]) -> None:
    """Make the renames of a batch of `write_atomic` calls durable (and, for a
    `DeferredWrites`, first its files: synced, then renamed)."""
    files = dirs.files if isinstance(dirs, DeferredWrites) else {}
    held = dirs.fds if isinstance(dirs, DeferredWrites) else {}
    fds = list(held.values())
    held.clear()  # `_sync_held` closes each, whatever happens
    with stage("fsync"):
        try:
            _sync_held(fds)
        except BaseException:
            for tmp in files.values():  # none is renamed: drop them all
                tmp.unlink(missing_ok=True)
            files.clear()
            raise
    with stage("write"):
        for path, tmp in files.items():
            os.replace(tmp, path)
            dirs.add(path.parent)
        files.clear()
    _fsync_folders(dirs)
    dirs.clear()


def _sync_folders(paths: list[Path]) -> None:
    """fsync each of the folders `paths`, from several threads when there are several."""

    def sync(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    if len(paths) <= 1:
        for path in paths:
            sync(path)
        return
    list(_sync_pool().map(sync, paths))  # list(): raise the first error


def _sync_held(fds: list[int]) -> None:
    """fsync and close descriptors held for a batch's sync, from several threads when there
    are several: each is closed whatever happens, and the first error raised once all are."""
    if len(fds) <= 1:
        for fd in fds:
            _sync_and_close(fd)
        return
    futures: list[concurrent.futures.Future[None]] = []
    try:
        for fd in fds:
            futures.append(_sync_pool().submit(_sync_and_close, fd))
        for future in futures:
            future.result()
    finally:
        for n, fd in enumerate(fds):
            if n >= len(futures) or futures[n].cancel():  # not started (an interrupt)
                _close_held(fd)
        concurrent.futures.wait(futures)  # the started ones closed theirs


def _sync_and_close(fd: int) -> None:
    """fsync a descriptor held for a batch's sync, then close it (synced or not)."""
    try:
        os.fsync(fd)
    finally:
        _close_held(fd)


def _sync_pool() -> ThreadPoolExecutor:
    """This process's threads for `_sync_folders` and `_sync_held`, started once (per process)."""
    global _SYNC_POOL
    if _SYNC_POOL is None or _SYNC_POOL[0] != os.getpid():
        _SYNC_POOL = (os.getpid(), ThreadPoolExecutor(_SYNC_THREADS, _SYNC_NAME))
    return _SYNC_POOL[1]


def is_sync_thread(thread: threading.Thread) -> bool:
    """True for one of this process's sync threads (`_sync_held`, `_sync_folders`): idle
    whenever no call of them runs (each waits for all its syncs), so that a process may end
    without joining it."""
    return thread.name.startswith(f"{_SYNC_NAME}_")
