"""Inputs for a migration: files, folders, members of zip/tar archives (read in place), and
the instances of another pacs_engine archive (exported one by one, never to disk)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import lzma
import os
import re
import stat
import sys
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import IO

from pacs_engine.archive.format import MARKER, ArchiveError, is_pacs_archive
from pacs_engine.archive.input_keys import (
    ARCHIVE_SUFFIXES,
    SEPARATOR,
    archive_kind,
    container_kind,
    join_key,
    split_key,
)
from pacs_engine.archive.prepare import MAX_INPUT_BYTES
from pacs_engine.errors import PacsEngineError
from pacs_engine.index.rows import Row
from pacs_engine.sources import file_kind, iter_files
from pacs_engine.storage import folder_identity
from pacs_engine.workers import PerProcess

#: Members of a pacs_engine archive source that are files in its quarantine, named by their
#: sha256 (an instance member is a SOP Instance UID, which holds no "/").
QUARANTINED = "quarantine/"
_SHA256 = re.compile("[0-9a-f]{64}")
OPEN_ARCHIVES = 8

_CHUNK = 1 << 20  # bytes read at a time when an input is streamed
#: Inputs whose reads `Readahead` starts ahead of the one being worked on, and the bytes of
#: each it asks for (the kernel's own readahead follows a longer file's sequential read).
READAHEAD_FILES = 4
READAHEAD_BYTES = 16 << 20
#: Bytes asked for per posix_fadvise call: Linux reads at most the device's readahead
#: window per call (read_ahead_kb, 128 KiB by default), so a file is asked for in steps.
READAHEAD_STEP = 128 << 10
_GZIP_MAGIC = b"\x1f\x8b"
_TAR_BLOCK = 512
# One gzip seek point holds a 32 KiB window: cap the points per archive so a huge
# .tar.gz costs at most ~32 MiB of index, at the price of a longer inflate per read.
# Members are small, so a small read buffer: indexed_gzip's default (4 x spacing)
# inflates megabytes past every member read at random (measured: 4x slower).
_MIN_SPACING = 256 << 10
_MAX_POINTS = 1024
_GZIP_BUFFER = 64 << 10
_ZIP_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_ZIP_METHOD_NAMES = {9: "Deflate64", 6: "implode", 93: "zstd", 95: "xz", 98: "ppmd", 99: "AES"}
# What damaged archives raise in zipfile, tarfile, zlib, lzma, indexed_gzip (ZranError is an
# OSError); UnicodeDecodeError: a zip member's name flagged UTF-8 that is not.
_ARCHIVE_ERRORS = (
    OSError,
    EOFError,
    UnicodeDecodeError,
    zlib.error,
    lzma.LZMAError,
    zipfile.BadZipFile,
    tarfile.TarError,
)


@dataclass(frozen=True, slots=True)
class InputPolicy:
    """How inputs are walked, read and quarantined."""

    # No input of more bytes is read into memory (declared sizes are checked first):
    # it is quarantined with its size, sha256 and first bytes.
    max_bytes: int = MAX_INPUT_BYTES
    # Follow symbolic links met in folders (out of the source too), and open files
    # through links; otherwise links are listed as skipped inputs.
    follow_links: bool = False
    # Keep the whole bytes of a file that is not DICOM in the quarantine, not its head.
    keep_non_dicom: bool = False


DEFAULT_POLICY = InputPolicy()


@dataclass(frozen=True, slots=True)
class InputRef:
    """One input: a file on disk, a member of a zip/tar archive, or an instance
    (`member` = its SOP Instance UID) of a pacs_engine archive."""

    container: str
    member: str | None = None

    def __post_init__(self) -> None:
        if split_key(self.key) != (self.container, self.member):
            raise ValueError(
                f"{self.key}: cannot be named unambiguously "
                f"(a member needs a {'/'.join(ARCHIVE_SUFFIXES)} container or a pacs_engine "
                f"archive folder, whose path has no '<archive>{SEPARATOR}' in it)"
            )

    @property
    def key(self) -> str:
        """Stable unique text: the path, or `container::member`."""
        return join_key(self.container, self.member)

    @classmethod
    def from_key(cls, key: str) -> InputRef:
        """The input a key names (the inverse of `key`)."""
        return cls(*split_key(key))


class InputError(PacsEngineError):
    """An input that cannot be read; str() is `<key>: <reason>`."""

    def __init__(self, key: str, reason: str) -> None:
        # Both as args, so the error pickles back from a worker process.
        super().__init__(key, reason)
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


class InputTooLarge(InputError):
    """An input of more bytes than the limit: never read into memory."""


def _too_large(key: str, size: int | str, limit: int) -> InputTooLarge:
    return InputTooLarge(key, f"too large: {size} bytes, more than the limit of {limit} bytes")


def iter_inputs(
    sources: Iterable[str | os.PathLike],
    on_error: Callable[[str, str], None],
    exclude: Iterable[str | os.PathLike] = (),
    follow_links: bool = False,
    unchanged: Callable[[str], bool] | None = None,
) -> Iterator[InputRef]:
    """Every input under the sources, in a stable order.

    Sorted within a folder, in archive order within a zip/tar, by SOP Instance
    UID within a pacs_engine archive (given as a source or met in a walked
    folder; its folder is not walked for files). Archives are listed as they are
    read, never held whole. The archive folders in `exclude` (the one being
    ingested into) are skipped. A bad source, folder, archive or member, and
    whatever is not read (links, fifos, devices, link members), is passed to
    on_error(key, reason) and skipped. A zip or tar archive for which
    `unchanged(path)` is true is skipped without being opened.
    """
    skipped = {folder_identity(p) for p in exclude}
    archives: set[str] = set()  # the archive folders the walk yields instead of walking them

    def is_archive(folder: str) -> bool:
        if is_pacs_archive(folder):
            archives.add(folder)
            return True
        return False

    for source in sources:
        for path in iter_files([source], on_error, keep=is_archive, follow_links=follow_links):
            kind = archive_kind(path)
            if path in archives:
                if folder_identity(path) not in skipped:
                    yield from _walk_pacs(path, on_error)
            elif kind is None:
                ref = _make_ref(path, None, on_error)
                if ref is not None:
                    yield ref
            elif unchanged is None or not unchanged(path):
                yield from _walk_container(path, kind, on_error)


def _walk_container(
    path: str, kind: str, on_error: Callable[[str, str], None]
) -> Iterator[InputRef]:
    """The members of one zip or tar archive; an archive that cannot be read is named."""
    try:
        if kind == "zip":
            yield from _walk_zip(path, on_error)
        else:
            yield from _walk_tar(path, kind, on_error)
    except _ARCHIVE_ERRORS as error:
        on_error(path, _archive_reason(kind, error))


def archived_row(ref: InputRef) -> Row | None:
    """The index row of an input that is an instance of a pacs_engine archive, else None.

    Its SOP and series UIDs, Instance Number and frames are what a scan of the
    exported file would give, without exporting it (which may decode every frame).
    """
    if ref.member is None or ref.member.startswith(QUARANTINED):
        return None
    if container_kind(ref.container) != "pacs":
        return None
    row = _pacs_archive(ref).archive.index.get(ref.member)
    if row is None:
        raise InputError(ref.key, "no such instance in the archive")
    return row


def quarantine_record(ref: InputRef) -> dict | None:
    """The source archive's quarantine record of an input that is one of its quarantined
    files (where it came from, why it was refused); None for any other input, or when
    the record is gone or damaged."""
    if not _is_quarantined_member(ref):
        return None
    return _pacs_archive(ref).quarantined(ref)


def refused_for_instance(ref: InputRef, sop_instance_uid: str) -> bool:
    """True when `ref` is a quarantined file of a pacs_engine archive that holds an instance
    with this SOP Instance UID: a file the archive refused in favour of that instance."""
    if not _is_quarantined_member(ref):
        return False
    return _pacs_archive(ref).archive.index.get(sop_instance_uid) is not None


def _is_quarantined_member(ref: InputRef) -> bool:
    return (
        ref.member is not None
        and ref.member.startswith(QUARANTINED)
        and container_kind(ref.container) == "pacs"
    )


def _pacs_archive(ref: InputRef) -> _PacsArchive:
    archive = _open_archive(ref, "pacs")
    assert isinstance(archive, _PacsArchive)
    return archive


def read_input(ref: InputRef, policy: InputPolicy = DEFAULT_POLICY) -> bytes:
    """The bytes of one input; raises InputError naming it and the reason.

    InputTooLarge when it holds more than `policy.max_bytes`: declared sizes are
    checked first, and no more than the limit and one byte is ever read.
    """
    if ref.member is None:
        with _open_file(ref, policy) as (file, size):
            if size > policy.max_bytes:
                raise _too_large(ref.key, size, policy.max_bytes)
            data = _read_bounded(file, size, policy.max_bytes, ref.key)
        if len(data) > policy.max_bytes:
            raise _too_large(ref.key, f"more than {policy.max_bytes}", policy.max_bytes)
        return data
    return _open_member_archive(ref).read(ref, policy.max_bytes)


def prefetch(ref: InputRef, policy: InputPolicy = DEFAULT_POLICY) -> None:
    """Ask the kernel to start reading a file input into the page cache, without waiting.

    Only a hint: a member of a container, anything but a regular file (opened as the
    read will open it, without following a link the policy does not follow), a file over
    the policy's limit, and any error are left to the read, which reports them.
    """
    if ref.member is not None or not hasattr(os, "posix_fadvise"):  # not on macOS
        return
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if policy.follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(ref.container, flags)
    except OSError:
        return
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_size <= policy.max_bytes:
            for offset in range(0, min(info.st_size, READAHEAD_BYTES), READAHEAD_STEP):
                os.posix_fadvise(fd, offset, READAHEAD_STEP, os.POSIX_FADV_WILLNEED)
    except OSError:  # EINVAL where the file system has no page cache to fill (a pipe-like fs)
        pass
    finally:
        os.close(fd)


class Readahead:
    """Starts the reads of the next inputs of a list while one is worked on.

    A worker reads a file, then encodes it for several times as long: on a migration's
    files, not in memory yet, each read would leave a core idle for the disk or the
    network file system. Hinted `READAHEAD_FILES` ahead, their reads overlap the
    encodes. Each input is hinted once, never the one about to be read.
    """

    def __init__(self, keys: Sequence[str], policy: InputPolicy = DEFAULT_POLICY) -> None:
        self.keys, self.policy = keys, policy
        self.read = 0  # inputs read before the one about to be

    def step(self) -> None:
        """Call before reading each input, in the list's order."""
        # The first read starts the next READAHEAD_FILES; each later one, one more.
        start = 1 if self.read == 0 else self.read + READAHEAD_FILES
        for key in self.keys[start : self.read + 1 + READAHEAD_FILES]:
            prefetch(InputRef.from_key(key), self.policy)
        self.read += 1


#: The SOP class of a DICOMDIR (a media directory: it lists files and holds no instance).
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


def is_media_directory(head: bytes) -> bool:
    """True for a DICOMDIR: Media Storage SOP Class UID 1.2.840.10008.1.3.10 in the file
    meta information `head` (the file's first bytes) holds."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    stream = BytesIO(head)
    try:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
    except Exception:  # a file pydicom cannot read is no DICOMDIR
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY


def media_directory_reason(
    ref: InputRef, head: bytes | None, reason: str, policy: InputPolicy = DEFAULT_POLICY
) -> str:
    """The quarantine reason of a file refused for its UIDs: said to be a DICOMDIR when it is
    one (`head`: its bytes, or None to read its first chunk)."""
    if head is None:
        with contextlib.suppress(InputError, StopIteration):
            head = next(iter(read_chunks(ref, policy)))
    if head is not None and is_media_directory(head):
        return f"a DICOMDIR (a media directory, no instance: nothing to archive): {reason}"
    return reason


def read_chunks(ref: InputRef, policy: InputPolicy = DEFAULT_POLICY) -> Iterator[bytes]:
    """The bytes of one input, whatever its size, a chunk at a time; raises InputError."""
    if ref.member is None:
        with _open_file(ref, policy) as (file, _):
            while chunk := _read(file, _CHUNK, ref.key):
                yield chunk
        return
    yield from _open_member_archive(ref).chunks(ref)


@contextlib.contextmanager
def _open_file(ref: InputRef, policy: InputPolicy) -> Iterator[tuple[IO[bytes], int]]:
    """The input file, open, and its size; InputError unless it is a regular file.

    Not through a link unless the policy follows links: a file swapped for one
    after the walk is refused.
    """
    try:
        file, size = _open_regular(ref.container, policy.follow_links)
    except _NotRegular as error:
        raise InputError(ref.key, error.strerror or str(error)) from None
    except OSError as error:
        if error.errno == errno.ELOOP and not policy.follow_links:
            raise InputError(ref.key, "symbolic link: not followed") from None
        raise InputError(ref.key, f"cannot read: {_os_reason(error)}") from None
    with file:
        yield file, size


class _NotRegular(PacsEngineError, OSError):
    """A path that names a fifo, a device or a socket, not a file."""


def _open_regular(path: str, follow_links: bool = True) -> tuple[IO[bytes], int]:
    """A regular file open for reading, and its size (what was opened is checked).

    Opened without blocking: a fifo put where a file was would wait forever for a
    writer. Raises OSError, `_NotRegular` for anything but a file.
    """
    extra = os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    file = open(path, "rb", opener=lambda name, flags: os.open(name, flags | extra))  # noqa: SIM115
    info = os.fstat(file.fileno())
    if not stat.S_ISREG(info.st_mode):
        file.close()
        raise _NotRegular(errno.EINVAL, f"not a regular file: {file_kind(info.st_mode)}")
    return file, info.st_size


def _read(file: IO[bytes], size: int, key: str) -> bytes:
    try:
        return file.read(size)
    except OSError as error:
        raise InputError(key, f"cannot read: {_os_reason(error)}") from None


def _read_bounded(file: IO[bytes], expected: int, limit: int, key: str) -> bytes:
    """All of `file` (said to hold `expected` bytes), or limit + 1 bytes if it holds more."""
    # One read of the size it says it holds; more only if it holds more than it said.
    parts = [_read(file, min(expected, limit) + 1, key)]
    total = len(parts[0])
    while total > expected and total <= limit and parts[-1]:
        parts.append(_read(file, min(_CHUNK, limit + 1 - total), key))
        total += len(parts[-1])
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _open_member_archive(ref: InputRef) -> _ZipArchive | _TarArchive | _PacsArchive:
    kind = container_kind(ref.container)
    if kind is None:  # an archive folder that is gone, or no longer an archive
        raise InputError(ref.key, "cannot open archive: not a zip, tar or pacs_engine archive")
    return _open_archive(ref, kind)


# --- walking ----------------------------------------------------------------


def _make_ref(
    container: str, member: str | None, on_error: Callable[[str, str], None]
) -> InputRef | None:
    try:
        return InputRef(container, member)
    except ValueError as error:
        on_error(join_key(container, member), str(error))
        return None


def _walk_zip(path: str, on_error: Callable[[str, str], None]) -> Iterator[InputRef]:
    with _open_regular(path)[0] as file, zipfile.ZipFile(file) as archive:
        entries = [
            (info.filename, _zip_problem(info)) for info in archive.infolist() if _zip_listed(info)
        ]
    yield from _walk_members(path, entries, on_error)


def _walk_tar(path: str, kind: str, on_error: Callable[[str, str], None]) -> Iterator[InputRef]:
    with _open_tar_stream(path, kind) as stream:
        entries = ((name, problem) for name, problem, _, _ in _tar_entries(stream))
        yield from _walk_members(path, entries, on_error)


def _walk_members(
    path: str, entries: Iterable[tuple[str, str | None]], on_error: Callable[[str, str], None]
) -> Iterator[InputRef]:
    """The inputs of an archive's (name, problem) entries, each under its own member key.

    A name's first copy is yielded as it is listed; later copies of a repeated name
    once the whole listing is known (see `_copy_keys`). A member with a problem (a
    link, a device, an encrypted member) is passed to on_error under its key.
    """
    names: set[str] = set()
    repeats: list[tuple[str, str | None]] = []
    damage: BaseException | None = None
    try:
        for name, problem in entries:
            if name in names:
                repeats.append((name, problem))
                continue
            names.add(name)
            yield from _member_ref(path, name, problem, on_error)
    except _ARCHIVE_ERRORS as error:  # the copies listed before the damage are inputs too
        damage = error
    keys = _copy_keys(names, [name for name, _ in repeats])
    for key, (_, problem) in zip(keys, repeats, strict=True):
        yield from _member_ref(path, key, problem, on_error)
    if damage is not None:
        raise damage


def _member_ref(
    path: str, key: str, problem: str | None, on_error: Callable[[str, str], None]
) -> Iterator[InputRef]:
    if problem is not None:
        on_error(join_key(path, key), problem)
        return
    ref = _make_ref(path, key, on_error)
    if ref is not None:
        yield ref


def _copy_keys(names: set[str], repeats: list[str]) -> list[str]:
    """The member keys of the later copies of repeated names, in archive order.

    The n-th copy of `name` is `name#n`, or the next number free when a member is
    called that: keys are unique, a name's first copy keeps its name (so keys of
    earlier runs still match), and the listing alone decides them, so reading by
    key reads that very copy.
    """
    taken: set[str] = set()
    last: dict[str, int] = {}
    keys = []
    for name in repeats:
        number = last.get(name, 1) + 1
        while f"{name}#{number}" in names or f"{name}#{number}" in taken:
            number += 1
        last[name] = number
        taken.add(f"{name}#{number}")
        keys.append(f"{name}#{number}")
    return keys


def _walk_pacs(path: str, on_error: Callable[[str, str], None]) -> Iterator[InputRef]:
    from pacs_engine.archive.archive import open_archive  # zarr, pydicom: only for archives

    try:
        archive = open_archive(path)
    except Exception as error:  # ArchiveError, or an index that cannot be opened
        on_error(path, f"cannot open archive: {error}")
        return
    with archive:
        for row in archive.index:
            ref = _make_ref(path, row["SOPInstanceUID"], on_error)
            if ref is not None:
                yield ref
        # Files the source could not take are inputs too: tried again, and kept again
        # (with the source's record) if they still cannot be archived. Listed by their
        # records' names; a record is only read (and may be damaged) when its input is.
        folder = archive.quarantine.root
        names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        for name in names:
            if _SHA256.fullmatch(name):
                ref = _make_ref(path, QUARANTINED + name, on_error)
                if ref is not None:
                    yield ref


def _zip_listed(info: zipfile.ZipInfo) -> bool:
    """A zip entry that is an input or reported as one: anything but a folder."""
    return bool(info.filename) and not info.is_dir()


def _zip_problem(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # Unix file type bits, when set
        return f"not a regular file: {file_kind(mode)} member"
    if info.flag_bits & 0x1:
        return "encrypted member: cannot be read without the password"
    if info.compress_type not in _ZIP_METHODS:
        name = _ZIP_METHOD_NAMES.get(info.compress_type, "unknown")
        return f"compression method {info.compress_type} ({name}) is not supported"
    return None


def _open_tar_stream(path: str, kind: str) -> IO[bytes]:
    file = _open_regular(path)[0]
    if kind == "tar":
        return file
    with file:  # checked here: indexed_gzip opens the file again, by name
        if file.read(2) != _GZIP_MAGIC:
            raise tarfile.ReadError("not a gzip file")
    import indexed_gzip  # only for a .tar.gz

    spacing = max(_MIN_SPACING, os.path.getsize(path) // _MAX_POINTS)
    return indexed_gzip.IndexedGzipFile(
        path, spacing=spacing, drop_handles=False, buffer_size=_GZIP_BUFFER
    )


def _tar_entries(stream: IO[bytes]) -> Iterator[tuple[str, str | None, int, int]]:
    """(name, problem, data offset, size) of every member but folders, in archive order.

    The problem is None for a regular member, else why it is not read (a link, a
    device, a fifo, a sparse member).
    """
    archive = tarfile.open(fileobj=stream, mode="r:")  # noqa: SIM115 (the caller owns stream)
    while (info := archive.next()) is not None:
        # TarFile keeps every header it has read: 100k members would pile up in memory.
        archive.members.clear()  # type: ignore[attr-defined]  # real, but not in typeshed
        if info.isdir():
            continue
        yield info.name, _tar_problem(info), info.offset_data, info.size
    # tarfile ends quietly at a damaged header or at the end of data: a whole tar ends
    # with a zero block, so anything else means members were lost.
    stream.seek(archive.offset)
    end = stream.read(_TAR_BLOCK)
    if not end:
        raise tarfile.ReadError(
            f"no end-of-archive marker at byte {archive.offset}: the archive may be cut short"
        )
    if end.strip(b"\0"):
        raise tarfile.ReadError(
            f"unreadable header at byte {archive.offset}: the members after it are skipped"
        )


def _tar_problem(info: tarfile.TarInfo) -> str | None:
    if info.issparse():
        return "sparse member: not supported"
    if info.isreg():
        return None
    kind = {
        tarfile.SYMTYPE: "symbolic link",
        tarfile.LNKTYPE: "hard link",
        tarfile.CHRTYPE: "character device",
        tarfile.BLKTYPE: "block device",
        tarfile.FIFOTYPE: "fifo",
    }.get(info.type, f"type {info.type!r}")
    return f"not a regular file: {kind} member"


def _archive_reason(kind: str, error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"cannot read archive: {_os_reason(error)}"
    what = {"zip": "zip", "tar": "tar", "tgz": "tar.gz", "pacs": "pacs_engine"}[kind]
    return f"bad {what} archive: {error}"


def _os_reason(error: OSError) -> str:
    return error.strerror or str(error)


# --- reading, with a per-process cache of open archives -----------------------


class _ZipArchive:
    """An open zip and its members by key (`_copy_keys` names the later copies of a name)."""

    def __init__(self, path: str, identity: tuple[int, int, int]) -> None:
        self.identity = identity
        self.file = _open_regular(path)[0]
        try:
            self.zip = zipfile.ZipFile(self.file)
        except BaseException:
            self.file.close()
            raise
        self.infos: dict[str, zipfile.ZipInfo] = {}
        repeats: list[zipfile.ZipInfo] = []
        for info in self.zip.infolist():
            if _zip_listed(info):
                if info.filename in self.infos:
                    repeats.append(info)
                else:
                    self.infos[info.filename] = info
        keys = _copy_keys(set(self.infos), [info.filename for info in repeats])
        self.infos.update(zip(keys, repeats, strict=True))

    def __del__(self) -> None:
        # Dropped from the cache, so no thread reads through it any more.
        with contextlib.suppress(AttributeError):  # __init__ failed before opening it
            self.file.close()

    def read(self, ref: InputRef, limit: int) -> bytes:
        info = self._info(ref)
        if info.file_size > limit:  # declared: checked before anything is inflated
            raise _too_large(ref.key, info.file_size, limit)
        try:
            with self.zip.open(info) as member:
                # zipfile stops at the declared size; bounded anyway.
                data = _read_bounded(member, info.file_size, limit, ref.key)
        except (*_ARCHIVE_ERRORS, NotImplementedError, RuntimeError) as error:
            raise InputError(ref.key, f"damaged member: {error}") from None
        if len(data) > limit:
            raise _too_large(ref.key, f"more than {limit}", limit)
        return data

    def chunks(self, ref: InputRef) -> Iterator[bytes]:
        info = self._info(ref)
        try:
            with self.zip.open(info) as member:
                while chunk := member.read(_CHUNK):
                    yield chunk
        except (*_ARCHIVE_ERRORS, NotImplementedError, RuntimeError) as error:
            raise InputError(ref.key, f"damaged member: {error}") from None

    def _info(self, ref: InputRef) -> zipfile.ZipInfo:
        info = self.infos.get(ref.member or "")
        if info is None:
            raise InputError(ref.key, "no such member in the archive")
        problem = _zip_problem(info)
        if problem is not None:
            raise InputError(ref.key, problem)
        return info


class _TarArchive:
    """An open tar or tar.gz and where each member's data starts, by member key."""

    def __init__(self, path: str, identity: tuple[int, int, int], kind: str) -> None:
        self.identity = identity
        self.kind = kind
        self.stream = _open_tar_stream(path, kind)
        self.lock = threading.Lock()
        self.members: dict[str, tuple[str | None, int, int]] = {}  # problem, offset, size
        repeats: list[tuple[str, tuple[str | None, int, int]]] = []
        self.problem: str | None = None
        try:
            for name, problem, offset, size in _tar_entries(self.stream):
                if name in self.members:
                    repeats.append((name, (problem, offset, size)))
                else:
                    self.members[name] = (problem, offset, size)
        except _ARCHIVE_ERRORS as error:
            # The members listed before the damage stay readable.
            self.problem = _archive_reason(kind, error)
        keys = _copy_keys(set(self.members), [name for name, _ in repeats])
        self.members.update(zip(keys, (entry for _, entry in repeats), strict=True))

    def __del__(self) -> None:
        # Dropped from the cache, so no thread reads through it any more.
        with contextlib.suppress(AttributeError):  # __init__ failed before opening it
            self.stream.close()

    def read(self, ref: InputRef, limit: int) -> bytes:
        offset, size = self._member(ref)
        if size > limit:  # declared in the member's header: checked before reading
            raise _too_large(ref.key, size, limit)
        data = self._read_at(ref, offset, size)
        if len(data) != size:
            raise InputError(ref.key, f"truncated: {len(data)} of {size} bytes in the archive")
        return data

    def chunks(self, ref: InputRef) -> Iterator[bytes]:
        offset, size = self._member(ref)
        done = 0
        while done < size:
            chunk = self._read_at(ref, offset + done, min(_CHUNK, size - done))
            if not chunk:
                raise InputError(ref.key, f"truncated: {done} of {size} bytes in the archive")
            done += len(chunk)
            yield chunk

    def _member(self, ref: InputRef) -> tuple[int, int]:
        entry = self.members.get(ref.member or "")
        if entry is None:
            raise InputError(ref.key, self.problem or "no such member in the archive")
        problem, offset, size = entry
        if problem is not None:
            raise InputError(ref.key, problem)
        return offset, size

    def _read_at(self, ref: InputRef, offset: int, size: int) -> bytes:
        try:
            if self.kind == "tar":
                return os.pread(self.stream.fileno(), size, offset)
            with self.lock:  # seek + read on one shared stream
                self.stream.seek(offset)
                return self.stream.read(size)
        except _ARCHIVE_ERRORS as error:
            raise InputError(ref.key, f"damaged member: {error}") from None


class _PacsArchive:
    """An open pacs_engine archive (read-only): its instances, exported as their files."""

    def __init__(self, path: str, identity: tuple[int, int, int]) -> None:
        from pacs_engine.archive.archive import open_archive  # zarr, pydicom: only here

        self.identity = identity
        self.archive = open_archive(path)

    def quarantined(self, ref: InputRef) -> dict | None:
        """The quarantine record of a quarantined-file member (None: gone or damaged)."""
        name = (ref.member or "").removeprefix(QUARANTINED)
        if not _SHA256.fullmatch(name):
            return None
        try:
            record = json.loads((self.archive.quarantine.root / f"{name}.json").read_bytes())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def chunks(self, ref: InputRef) -> Iterator[bytes]:
        yield self.read(ref, sys.maxsize)  # exported in memory in any case

    def read(self, ref: InputRef, limit: int) -> bytes:
        data = self._read(ref)
        if len(data) > limit:
            raise _too_large(ref.key, len(data), limit)
        return data

    def _read(self, ref: InputRef) -> bytes:
        if (ref.member or "").startswith(QUARANTINED):
            return self._read_quarantined(ref)
        row = self.archive.index.get(ref.member or "")
        if row is None:
            raise InputError(ref.key, "no such instance in the archive")
        try:
            data = self.archive.export_bytes(row["SOPInstanceUID"])
        except Exception as error:  # a damaged pack or shard can fail in any layer
            raise InputError(ref.key, f"cannot export the instance: {error}") from None
        # A transcoded instance exports other bytes by design; any other must be its file.
        if (
            not row.get("transcoded")
            and row["source_sha256"]  # "": a copy's native frames, checked by export
            and hashlib.sha256(data).hexdigest() != row["source_sha256"]
        ):
            raise InputError(ref.key, "the exported file differs from the archived file's sha256")
        return data

    def _read_quarantined(self, ref: InputRef) -> bytes:
        name = (ref.member or "").removeprefix(QUARANTINED)
        if not _SHA256.fullmatch(name):  # never a path: the name is the bytes' sha256
            raise InputError(ref.key, "not the name of a quarantined file")
        stored = self.archive.quarantine.root / f"{name}.dcm"
        if stored.is_file():  # kept bytes are named by their sha256, whatever the record says
            data = stored.read_bytes()
            if hashlib.sha256(data).hexdigest() != name:
                raise InputError(ref.key, "the quarantined file differs from its sha256")
            return data
        record = self.quarantined(ref) or {}
        # An input the source could not even read, only the head of one too large, or
        # the record alone of one not DICOM: the whole of it is not there to try again.
        kept = (
            f"only the first {record['kept_bytes']} bytes"
            if record.get("kept_bytes")
            else "no bytes"
        )
        raise InputError(
            ref.key,
            f"the archive kept {kept} of {record.get('path', 'it')}: "
            f"{record.get('reason', 'its quarantine record is damaged')}",
        )


_OPEN: PerProcess[str, _ZipArchive | _TarArchive | _PacsArchive] = PerProcess(OPEN_ARCHIVES)


def _open_archive(ref: InputRef, kind: str) -> _ZipArchive | _TarArchive | _PacsArchive:
    """This process's open archive of `ref` (a forked child opens its own)."""
    path = ref.container
    try:
        st = os.stat(os.path.join(path, MARKER) if kind == "pacs" else path)
    except OSError as error:
        raise InputError(ref.key, f"cannot open archive: {_os_reason(error)}") from None
    identity = (st.st_ino, st.st_size, st.st_mtime_ns)

    def make() -> _ZipArchive | _TarArchive | _PacsArchive:
        if kind == "zip":
            return _ZipArchive(path, identity)
        if kind == "pacs":
            return _PacsArchive(path, identity)
        return _TarArchive(path, identity, kind)

    try:
        # Reopened when the file changed since (another archive now has its name).
        return _OPEN.get(path, make, lambda archive: archive.identity == identity)
    except (*_ARCHIVE_ERRORS, ArchiveError) as error:
        raise InputError(ref.key, _archive_reason(kind, error)) from None
