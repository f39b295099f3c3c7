"""The lossless archive: Zarr v3 pixels, header blobs, the index, export and verify."""

from pacs_engine.archive.archive import (
    Archive,
    ArchiveError,
    ExportError,
    VerifyReport,
    open_archive,
)
from pacs_engine.archive.report import IngestReport

__all__ = ["Archive", "ArchiveError", "ExportError", "IngestReport", "VerifyReport", "open_archive"]
