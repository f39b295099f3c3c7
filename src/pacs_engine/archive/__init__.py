"""The lossless archive: Zarr v3 pixels, header blobs, the index, export and verify.

Names are imported on first use, so that `pacs_engine.archive.format` (the marker,
which the input walker asks about) is importable without the whole storage layer.
"""

from pacs_engine.lazy import lazy_exports

_EXPORTS = {
    "Archive": "pacs_engine.archive.archive",
    "ArchiveError": "pacs_engine.archive.format",
    "Corrections": "pacs_engine.archive.corrections",
    "ExportError": "pacs_engine.archive.archive",
    "IngestReport": "pacs_engine.archive.report",
    "VerifyReport": "pacs_engine.archive.verify",
    "is_pacs_archive": "pacs_engine.archive.format",
    "open_archive": "pacs_engine.archive.archive",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
