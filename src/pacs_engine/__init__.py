"""pacs_engine: a native-accelerated DICOM archive engine."""

from pacs_engine.errors import ScanError
from pacs_engine.header import Header, PixelLocation
from pacs_engine.scan import HEADER_KEYWORDS, scan, scan_many

__all__ = ["HEADER_KEYWORDS", "Header", "PixelLocation", "ScanError", "scan", "scan_many"]
