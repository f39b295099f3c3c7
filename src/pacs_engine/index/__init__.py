"""The archive's memory-mapped index: instance rows, series and study records, C-FIND queries."""

from pacs_engine.index.core import Index
from pacs_engine.index.integrity import DamagedIndexError
from pacs_engine.index.matching import (
    LEVELS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
    compile_query,
    level_of,
    matches,
)

__all__ = [
    "LEVELS",
    "SERIES_KEYWORDS",
    "STUDY_KEYWORDS",
    "DamagedIndexError",
    "Index",
    "compile_query",
    "level_of",
    "matches",
]
