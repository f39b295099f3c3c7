"""Writing exported files: names safe on any filesystem, and never through a link.

A UID may hold any character but NUL, `/` and `\\` (the index refuses those): `*`,
`?`, `:`, a newline or a leading `-` would make a file name some filesystems refuse
or some tools misread. `safe_name` maps every UID to a name of digits, lower-case
letters, dots and `_` escapes, one to one. Files are written as a temporary in their
folder (created with O_EXCL | O_NOFOLLOW) renamed over the name: a link already in
the output folder is replaced, never written through, and a folder on the way that
is a link is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path

_KEPT = frozenset("0123456789abcdefghijklmnopqrstuvwxyz.")
#: Names Windows keeps for devices, whatever follows the first dot.
_DEVICES = frozenset(
    ["con", "prn", "aux", "nul", *(f"{d}{i}" for d in ("com", "lpt") for i in range(10))]
)
#: Longest name made by escaping (filesystems allow 255 bytes; room for suffixes).
MAX_NAME = 200


def safe_name(value: str) -> str:
    """A file name for `value` (a UID) on any filesystem: one name per value, and no two alike.

    Digits, lower-case letters and dots are kept; any other character, a leading or
    trailing dot, and the first letter of a Windows device name become `_XX` per
    UTF-8 byte (upper-case hex). `_` is never kept as itself, so the names decode
    back, also where case is ignored. A name longer than MAX_NAME (or an empty
    value) becomes `_h` and the value's sha256 (`h` follows no escape).
    """
    last = len(value) - 1
    name = "".join(
        char if char in _KEPT and not (char == "." and index in (0, last)) else _escape(char)
        for index, char in enumerate(value)
    )
    if name.split(".")[0] in _DEVICES:
        name = _escape(name[0]) + name[1:]
    if not name or len(name) > MAX_NAME:
        name = "_h" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    return name


def version_name(sop_instance_uid: str, number: int) -> str:
    """The file name of an earlier version (`number` from 1, oldest first): `<sop>_v<n>.dcm`."""
    return f"{safe_name(sop_instance_uid)}_v{number}.dcm"  # no safe name holds "_v"


def write_file(root: Path, folders: list[str], name: str, data: bytes) -> Path:
    """Write `data` as root/folders.../name without following a link below `root`.

    Raises OSError (with the path) when a folder on the way is a link or not a folder,
    or the name is taken by a folder.
    """
    descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    where = root
    try:
        for folder in folders:
            where = where / folder
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, dir_fd=descriptor)
            try:
                inner = os.open(
                    folder,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=descriptor,
                )
            except OSError as error:  # ELOOP: a link; ENOTDIR: a file
                raise OSError(error.errno, "not a folder (a link or a file)", str(where)) from None
            os.close(descriptor)
            descriptor = inner
        temporary = f".{name}.{uuid.uuid4().hex[:12]}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(temporary, flags, 0o666, dir_fd=descriptor)
        try:
            with open(out, "wb") as f:
                f.write(data)
            os.rename(temporary, name, src_dir_fd=descriptor, dst_dir_fd=descriptor)
        except OSError as error:
            os.unlink(temporary, dir_fd=descriptor)
            raise OSError(error.errno, error.strerror, str(where / name)) from None
    finally:
        os.close(descriptor)
    return where / name


def _escape(char: str) -> str:
    return "".join(f"_{byte:02X}" for byte in char.encode("utf-8", "surrogateescape"))
