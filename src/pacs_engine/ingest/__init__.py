"""Bulk migration: the parallel, resumable ingest orchestrator and its executors.

Names are imported on first use, so that `pacs_engine.ingest.executors` can start
the forkserver before the heavy modules (zarr, the codecs) are imported.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DaskExecutor": "pacs_engine.ingest.executors",
    "InlineExecutor": "pacs_engine.ingest.executors",
    "LocalExecutor": "pacs_engine.ingest.executors",
    "make_executor": "pacs_engine.ingest.executors",
    "IngestStopped": "pacs_engine.ingest.run",
    "Progress": "pacs_engine.ingest.run",
    "run_ingest": "pacs_engine.ingest.run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The exported name, imported from its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pacs_engine.ingest' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    """The exported names."""
    return __all__
