"""The archive's memory-mapped index: instance rows, series and study records, C-FIND queries."""

from pacs_engine.index.core import Index
from pacs_engine.index.integrity import DamagedIndexError
from pacs_engine.index.matching import LEVELS, compile_query, level_of, matches
from pacs_engine.scanning import SERIES_KEYWORDS, STUDY_KEYWORDS

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
