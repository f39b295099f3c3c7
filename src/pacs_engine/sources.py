"""Find the files to work on: folders (walked recursively) and single files."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pydicom


def iter_files(
    sources: Iterable[str | os.PathLike],
    on_error: Callable[[str, str], None],
    keep: Callable[[str], bool] | None = None,
) -> Iterator[str]:
    """Yield every regular file under the sources, sorted within each folder.

    A folder for which `keep(folder)` is true is yielded itself, not walked (the
    folder of an archive read as one input source). A source that does not
    exist, or a folder that cannot be listed, is passed to on_error(path, reason)
    and skipped: one bad folder never stops a walk.
    """
    for source in sources:
        path = os.fspath(source)
        if os.path.isdir(path):
            if keep is not None and keep(path):
                yield path
            else:
                yield from _walk(path, on_error, keep)
        elif os.path.isfile(path):
            yield path
        else:
            on_error(path, "no such file or folder")


def _walk(
    folder: str, on_error: Callable[[str, str], None], keep: Callable[[str], bool] | None
) -> Iterator[str]:
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as error:
        on_error(folder, f"cannot list folder: {error.strerror or error}")
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if keep is not None and keep(entry.path):
                    yield entry.path
                else:
                    yield from _walk(entry.path, on_error, keep)
            elif entry.is_file():
                yield entry.path
        except OSError as error:
            on_error(entry.path, f"cannot stat: {error.strerror or error}")


def sample_data_dir() -> Path:
    """The folder of real DICOM test files that ships inside pydicom."""
    return Path(pydicom.__file__).parent / "data" / "test_files"
