"""pacs_engine: a native-accelerated DICOM archive engine.

Names are imported on first use, so that importing one part (a zarr codec
loaded through its entry point, say) does not load the others.
"""

from pacs_engine.interrupt import quiet_while_starting

quiet_while_starting()  # first: the `pacs-engine` command imports for a second or two
from pacs_engine.lazy import lazy_exports  # noqa: E402

_EXPORTS = {
    "HEADER_KEYWORDS": "pacs_engine.scanning",
    "scan": "pacs_engine.scanning",
    "scan_many": "pacs_engine.scanning",
    "PacsEngineError": "pacs_engine.errors",
    "ScanError": "pacs_engine.errors",
    "Header": "pacs_engine.header",
    "PixelLocation": "pacs_engine.header",
    "Archive": "pacs_engine.ingest.archive",  # the storage Archive with ingest()
    "ArchiveError": "pacs_engine.archive",
    "IngestReport": "pacs_engine.archive",
    "open_archive": "pacs_engine.ingest.archive",
    "Series": "pacs_engine.read",
    "Volume": "pacs_engine.read",
    "VolumeError": "pacs_engine.read",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
