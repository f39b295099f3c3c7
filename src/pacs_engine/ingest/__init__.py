"""Bulk migration: the parallel, resumable ingest orchestrator and its executors.

Names are imported on first use, so that `pacs_engine.ingest.executors` can start
the forkserver before the heavy modules (zarr, the codecs) are imported.
"""

from pacs_engine.lazy import lazy_exports

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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
