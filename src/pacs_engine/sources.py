"""Find the files to work on: folders (walked without recursion) and single files."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

LINK_INSIDE = "symbolic link inside the source: not followed (its target is read where it is)"
LINK_OUTSIDE = "symbolic link to outside the source: not followed (follow links to read it)"
LINK_DANGLING = "dangling symbolic link"
WALKED_ALREADY = "folder already walked: a link back to it is not walked again"


def iter_files(
    sources: Iterable[str | os.PathLike],
    on_error: Callable[[str, str], None],
    keep: Callable[[str], bool] | None = None,
    follow_links: bool = False,
) -> Iterator[str]:
    """Yield every regular file under the sources, sorted within each folder.

    A folder for which `keep(folder)` is true is yielded itself, not walked (the
    folder of an archive read as one input source). Symbolic links met in a walk
    are not followed unless `follow_links` (a folder reached twice is then walked
    once). Whatever is not read is passed to on_error(path, reason): a missing
    source, a folder that cannot be listed, a link, a fifo, a device. A source
    that is itself a link is read: it was named.
    """
    for source in sources:
        path = os.fspath(source)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            on_error(path, LINK_DANGLING if os.path.islink(path) else "no such file or folder")
            continue
        except OSError as error:
            on_error(path, f"cannot stat: {error.strerror or error}")
            continue
        if stat.S_ISDIR(info.st_mode):
            if keep is not None and keep(path):
                yield path
            else:
                yield from _walk(path, on_error, keep, follow_links)
        elif stat.S_ISREG(info.st_mode):
            # A named link is read as its target, so that inputs are opened without
            # following links (a file swapped for one after the walk is refused).
            yield os.path.realpath(path) if os.path.islink(path) else path
        else:
            on_error(path, f"not a regular file or folder: {file_kind(info.st_mode)}")


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words ("fifo", "character device")."""
    for test, name in (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "regular file" if stat.S_ISREG(mode) else "unknown file type"


def _walk(
    root: str,
    on_error: Callable[[str, str], None],
    keep: Callable[[str], bool] | None,
    follow_links: bool,
) -> Iterator[str]:
    """Depth first, with a stack of listings (never Python recursion: trees may be deep)."""
    real_root = os.path.realpath(root)
    # Only followed links can lead back to a folder: then each is walked once.
    walked: set[tuple[int, int]] | None = None
    if follow_links:
        info = os.stat(root)
        walked = {(info.st_dev, info.st_ino)}
    stack = [_listing(root, on_error)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        path = entry.path
        try:
            # The listing's file types cost no system call; only links and odd files are stat'ed.
            if entry.is_symlink():
                problem = _link_problem(path, real_root, follow_links)
                if problem is not None:
                    on_error(path, problem)
                    continue
                mode = os.stat(path).st_mode
            elif entry.is_dir(follow_symlinks=False):
                mode = stat.S_IFDIR
            elif entry.is_file(follow_symlinks=False):
                mode = stat.S_IFREG
            else:
                mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode) and walked is not None:
                info = os.stat(path)
                folder = (info.st_dev, info.st_ino)
        except OSError as error:
            on_error(path, f"cannot stat: {error.strerror or error}")
            continue
        if stat.S_ISDIR(mode):
            if keep is not None and keep(path):
                yield path
            elif walked is not None and folder in walked:
                on_error(path, WALKED_ALREADY)
            else:
                if walked is not None:
                    walked.add(folder)
                stack.append(_listing(path, on_error))
        elif stat.S_ISREG(mode):
            yield path
        else:
            on_error(path, f"not a regular file or folder: {file_kind(mode)}")


def _listing(folder: str, on_error: Callable[[str, str], None]) -> Iterator[os.DirEntry]:
    """The entries of a folder, sorted by name; none (and the reason passed on) if unlistable."""
    try:
        with os.scandir(folder) as listing:
            return iter(sorted(listing, key=lambda e: e.name))
    except OSError as error:
        on_error(folder, f"cannot list folder: {error.strerror or error}")
        return iter(())


def _link_problem(path: str, real_root: str, follow_links: bool) -> str | None:
    """Why a symbolic link met in a walk is not followed; None when it is."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return LINK_DANGLING
    except OSError as error:  # a loop of links, a target that cannot be reached
        return f"symbolic link cannot be followed: {error.strerror or error}"
    if follow_links:
        return None
    target = os.path.realpath(path)
    inside = os.path.commonpath([real_root, target]) == real_root
    return LINK_INSIDE if inside else LINK_OUTSIDE


def sample_data_dir() -> Path:
    """The folder of real DICOM test files that ships inside pydicom."""
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"
