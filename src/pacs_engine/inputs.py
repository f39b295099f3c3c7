"""Inputs for a migration: files, folders, members of zip/tar archives (read in place), and
the instances of another pacs_engine archive (exported one by one, never to disk)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import stat
import tarfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

import indexed_gzip

from pacs_engine.sources import iter_files

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
PACS_ARCHIVE_MARKER = "archive.json"  # the file that makes a folder a pacs_engine archive
PACS_ARCHIVE_FORMAT = "pacs_engine archive"  # its "format", which another tool's file lacks
SEPARATOR = "::"
#: Members of a pacs_engine archive source that are files in its quarantine, named by their
#: sha256 (an instance member is a SOP Instance UID, which holds no "/").
QUARANTINED = "quarantine/"
_SHA256 = re.compile("[0-9a-f]{64}")
OPEN_ARCHIVES = 8

_DUPLICATE = "duplicate member name: only the first copy is read"
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
# What damaged archives raise in zipfile, tarfile, zlib, indexed_gzip (ZranError is an OSError).
_ARCHIVE_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError)


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
        if self.member is None:
            return self.container
        return f"{self.container}{SEPARATOR}{self.member}"

    @classmethod
    def from_key(cls, key: str) -> InputRef:
        """The input a key names (the inverse of `key`)."""
        return cls(*split_key(key))


def split_key(key: str) -> tuple[str, str | None]:
    """(container, member) of a key: split at the first `::` that follows an archive suffix."""
    # Containers always end in an archive suffix, so member names may hold `::` freely
    # and a container path may hold `::` anywhere but right after `.zip`, `.tar`...
    start = key.find(SEPARATOR)
    while start != -1:
        if container_kind(key[:start]) is not None:
            return key[:start], key[start + len(SEPARATOR) :]
        start = key.find(SEPARATOR, start + 1)
    return key, None


class InputError(Exception):
    """An input that cannot be read; str() is `<key>: <reason>`."""

    def __init__(self, key: str, reason: str) -> None:
        # Both as args, so the error pickles back from a worker process.
        super().__init__(key, reason)
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


def archive_kind(path: str) -> str | None:
    """'zip', 'tar' or 'tgz' by the name's suffix (any case), else None."""
    name = path.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(".tar"):
        return "tar"
    if name.endswith((".tar.gz", ".tgz")):
        return "tgz"
    return None


def is_pacs_archive(path: str) -> bool:
    """True when `path` is the folder of a pacs_engine archive (its marker says so).

    The marker's content is checked: a folder of DICOM files that happens to hold
    another tool's `archive.json` is a folder to walk, not an archive to open. A
    marker that cannot be read or parsed counts as an archive's, so that opening
    it reports the damage rather than its shards and quarantine being walked as
    files.
    """
    try:
        st = os.stat(os.path.join(path, PACS_ARCHIVE_MARKER))
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):  # never open a fifo or a device: it could block
        return False
    return _marker_is_ours(path, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _marker_is_ours(path: str, inode: int, size: int, mtime_ns: int) -> bool:
    """Whether the marker (this version of it, by its stat) is a pacs_engine archive's.

    Cached: every instance key of an archive source asks again.
    """
    try:
        with open(os.path.join(path, PACS_ARCHIVE_MARKER), "rb") as file:
            marker = json.loads(file.read(1 << 20))
    except (OSError, ValueError):  # unreadable or damaged: an archive that will say so
        return True
    return isinstance(marker, dict) and marker.get("format") == PACS_ARCHIVE_FORMAT


def container_kind(path: str) -> str | None:
    """'zip', 'tar', 'tgz' (by suffix), 'pacs' (an archive folder), or None."""
    kind = archive_kind(path)
    if kind is None and is_pacs_archive(path):
        return "pacs"
    return kind


def iter_inputs(
    sources: Iterable[str | os.PathLike],
    on_error: Callable[[str, str], None],
    exclude: Iterable[str | os.PathLike] = (),
) -> Iterator[InputRef]:
    """Every input under the sources, in a stable order.

    Sorted within a folder, in archive order within a zip/tar, by SOP Instance
    UID within a pacs_engine archive (given as a source or met in a walked
    folder; its folder is not walked for files). Archives are listed as they are
    read, never held whole. The archive folders in `exclude` (the one being
    ingested into) are skipped. A bad source, folder, archive or member is passed
    to on_error(key, reason) and skipped.
    """
    skipped = {_identity(p) for p in exclude}
    archives: set[str] = set()  # the archive folders the walk yields instead of walking them

    def is_archive(folder: str) -> bool:
        if is_pacs_archive(folder):
            archives.add(folder)
            return True
        return False

    for source in sources:
        for path in iter_files([source], on_error, keep=is_archive):
            kind = archive_kind(path)
            if path in archives:
                if _identity(path) not in skipped:
                    yield from _walk_pacs(path, on_error)
            elif kind is None:
                ref = _make_ref(path, None, on_error)
                if ref is not None:
                    yield ref
            else:
                yield from _walk_container(path, kind, on_error)


def _identity(folder: str | os.PathLike) -> tuple[int, int] | str:
    """What makes a folder itself whatever path names it (a link, a bind mount)."""
    try:
        st = os.stat(folder)
    except OSError:
        return os.path.realpath(folder)
    return st.st_dev, st.st_ino


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


def archived_row(ref: InputRef) -> dict | None:
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


def read_input(ref: InputRef) -> bytes:
    """The bytes of one input; raises InputError naming it and the reason."""
    if ref.member is None:
        try:
            with open(ref.container, "rb") as file:
                return file.read()
        except OSError as error:
            raise InputError(ref.key, f"cannot read: {_os_reason(error)}") from None
    kind = container_kind(ref.container)
    if kind is None:  # an archive folder that is gone, or no longer an archive
        raise InputError(ref.key, "cannot open archive: not a zip, tar or pacs_engine archive")
    return _open_archive(ref, kind).read(ref)


# --- walking ----------------------------------------------------------------


def _make_ref(
    container: str, member: str | None, on_error: Callable[[str, str], None]
) -> InputRef | None:
    try:
        return InputRef(container, member)
    except ValueError as error:
        on_error(container if member is None else f"{container}{SEPARATOR}{member}", str(error))
        return None


def _walk_zip(path: str, on_error: Callable[[str, str], None]) -> Iterator[InputRef]:
    with zipfile.ZipFile(path) as archive:
        seen: set[str] = set()
        for info in archive.infolist():
            if not _zip_is_file(info):
                continue
            key = f"{path}{SEPARATOR}{info.filename}"
            problem = _zip_problem(info)
            if problem is None and info.filename in seen:
                problem = _DUPLICATE
            if problem is not None:
                on_error(key, problem)
                continue
            seen.add(info.filename)
            ref = _make_ref(path, info.filename, on_error)
            if ref is not None:
                yield ref


def _walk_tar(path: str, kind: str, on_error: Callable[[str, str], None]) -> Iterator[InputRef]:
    with _open_tar_stream(path, kind) as stream:
        seen: set[str] = set()
        for name, _, _ in _tar_entries(stream, path, on_error):
            if name in seen:
                on_error(
                    f"{path}{SEPARATOR}{name}", "duplicate member name: only the first copy is read"
                )
                continue
            seen.add(name)
            ref = _make_ref(path, name, on_error)
            if ref is not None:
                yield ref


def _walk_pacs(path: str, on_error: Callable[[str, str], None]) -> Iterator[InputRef]:
    from pacs_engine.archive import open_archive  # the archive package imports this module

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


def _zip_is_file(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return bool(info.filename) and not info.is_dir() and not stat.S_ISLNK(mode)


def _zip_problem(info: zipfile.ZipInfo) -> str | None:
    if info.flag_bits & 0x1:
        return "encrypted member: cannot be read without the password"
    if info.compress_type not in _ZIP_METHODS:
        name = _ZIP_METHOD_NAMES.get(info.compress_type, "unknown")
        return f"compression method {info.compress_type} ({name}) is not supported"
    return None


def _open_tar_stream(path: str, kind: str) -> IO[bytes]:
    if kind == "tar":
        return open(path, "rb")
    with open(path, "rb") as file:
        if file.read(2) != _GZIP_MAGIC:
            raise tarfile.ReadError("not a gzip file")
    spacing = max(_MIN_SPACING, os.path.getsize(path) // _MAX_POINTS)
    return indexed_gzip.IndexedGzipFile(
        path, spacing=spacing, drop_handles=False, buffer_size=_GZIP_BUFFER
    )


def _tar_entries(
    stream: IO[bytes], path: str, on_error: Callable[[str, str], None]
) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of every regular member, in archive order."""
    archive = tarfile.open(fileobj=stream, mode="r:")  # noqa: SIM115 (the caller owns stream)
    while (info := archive.next()) is not None:
        # TarFile keeps every header it has read: 100k members would pile up in memory.
        archive.members.clear()
        if not info.isreg():
            continue  # directories, links, devices, fifos
        if info.issparse():
            on_error(f"{path}{SEPARATOR}{info.name}", "sparse member: not supported")
            continue
        yield info.name, info.offset_data, info.size
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


def _archive_reason(kind: str, error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"cannot read archive: {_os_reason(error)}"
    what = {"zip": "zip", "tar": "tar", "tgz": "tar.gz", "pacs": "pacs_engine"}[kind]
    return f"bad {what} archive: {error}"


def _os_reason(error: OSError) -> str:
    return error.strerror or str(error)


# --- reading, with a per-process cache of open archives -----------------------


class _ZipArchive:
    """An open zip and its members by name (the first copy of a repeated name)."""

    def __init__(self, path: str, identity: tuple[int, int, int]) -> None:
        self.identity = identity
        self.zip = zipfile.ZipFile(path)
        self.infos: dict[str, zipfile.ZipInfo] = {}
        for info in self.zip.infolist():
            if _zip_is_file(info):
                self.infos.setdefault(info.filename, info)

    def read(self, ref: InputRef) -> bytes:
        info = self.infos.get(ref.member or "")
        if info is None:
            raise InputError(ref.key, "no such member in the archive")
        problem = _zip_problem(info)
        if problem is not None:
            raise InputError(ref.key, problem)
        try:
            with self.zip.open(info) as member:
                return member.read()
        except (*_ARCHIVE_ERRORS, NotImplementedError, RuntimeError) as error:
            raise InputError(ref.key, f"damaged member: {error}") from None


class _TarArchive:
    """An open tar or tar.gz and where each member's data starts."""

    def __init__(self, path: str, identity: tuple[int, int, int], kind: str) -> None:
        self.identity = identity
        self.kind = kind
        self.stream = _open_tar_stream(path, kind)
        self.lock = threading.Lock()
        self.members: dict[str, tuple[int, int]] = {}
        self.problem: str | None = None
        try:
            for name, offset, size in _tar_entries(self.stream, path, lambda key, reason: None):
                self.members.setdefault(name, (offset, size))
        except _ARCHIVE_ERRORS as error:
            # The members listed before the damage stay readable.
            self.problem = _archive_reason(kind, error)

    def read(self, ref: InputRef) -> bytes:
        where = self.members.get(ref.member or "")
        if where is None:
            raise InputError(ref.key, self.problem or "no such member in the archive")
        offset, size = where
        try:
            if self.kind == "tar":
                data = os.pread(self.stream.fileno(), size, offset)
            else:
                with self.lock:  # seek + read on one shared stream
                    self.stream.seek(offset)
                    data = self.stream.read(size)
        except _ARCHIVE_ERRORS as error:
            raise InputError(ref.key, f"damaged member: {error}") from None
        if len(data) != size:
            raise InputError(ref.key, f"truncated: {len(data)} of {size} bytes in the archive")
        return data


class _PacsArchive:
    """An open pacs_engine archive (read-only): its instances, exported as their files."""

    def __init__(self, path: str, identity: tuple[int, int, int]) -> None:
        from pacs_engine.archive import open_archive  # the archive package imports this module

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

    def read(self, ref: InputRef) -> bytes:
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
        if not row.get("transcoded") and hashlib.sha256(data).hexdigest() != row["source_sha256"]:
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
        raise InputError(  # an input the source could not even read: no bytes kept
            ref.key,
            f"the archive kept no bytes of {record.get('path', 'it')}: "
            f"{record.get('reason', 'its quarantine record is damaged')}",
        )


# Evicted handles are not closed here: a thread may still be reading through one,
# and dropping the last reference closes it.
_cache: OrderedDict[str, _ZipArchive | _TarArchive | _PacsArchive] = OrderedDict()
_cache_pid = os.getpid()
_cache_lock = threading.Lock()


def _open_archive(ref: InputRef, kind: str) -> _ZipArchive | _TarArchive | _PacsArchive:
    global _cache_pid
    path = ref.container
    try:
        st = os.stat(os.path.join(path, PACS_ARCHIVE_MARKER) if kind == "pacs" else path)
    except OSError as error:
        raise InputError(ref.key, f"cannot open archive: {_os_reason(error)}") from None
    identity = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        if _cache_pid != os.getpid():
            # A forked child shares its parent's file offsets: never reuse its handles.
            _cache.clear()
            _cache_pid = os.getpid()
        archive = _cache.get(path)
        if archive is not None and archive.identity == identity:
            _cache.move_to_end(path)
            return archive
        try:
            if kind == "zip":
                archive = _ZipArchive(path, identity)
            elif kind == "pacs":
                archive = _PacsArchive(path, identity)
            else:
                archive = _TarArchive(path, identity, kind)
        except (*_ARCHIVE_ERRORS, RuntimeError) as error:  # RuntimeError: ArchiveError
            raise InputError(ref.key, _archive_reason(kind, error)) from None
        _cache[path] = archive
        _cache.move_to_end(path)
        while len(_cache) > OPEN_ARCHIVES:
            _cache.popitem(last=False)
        return archive
