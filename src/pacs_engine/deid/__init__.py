"""De-identified research copies of an archive, by DICOM PS3.15 Annex E (docs/deidentify.md)."""

from pacs_engine.deid.engine import Deidentifier, DeidError, Result
from pacs_engine.deid.key import Key, KeyFileError, make_key
from pacs_engine.deid.profile import OPTIONS, ProfileError, table
from pacs_engine.deid.run import DeidReport, deidentify

__all__ = [
    "OPTIONS",
    "DeidError",
    "DeidReport",
    "Deidentifier",
    "Key",
    "KeyFileError",
    "ProfileError",
    "Result",
    "deidentify",
    "make_key",
    "table",
]
