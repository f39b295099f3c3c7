"""Bulk migration: its sources, the parallel, resumable orchestrator, the worker's encode,
and the `Archive` users open (the storage archive with `ingest`).

Names are imported on first use, so that a worker importing `ingest.tasks`, or a
reader of `ingest.inputs`, does not import the orchestrator. The executors live at
the bottom of the layers (`pacs_engine.executors`, verify makes them too); their
names here are kept for their users.
"""

from pacs_engine.lazy import lazy_exports

_EXPORTS = {
    "Archive": "pacs_engine.ingest.archive",
    "open_archive": "pacs_engine.ingest.archive",
    "DaskExecutor": "pacs_engine.executors",
    "InlineExecutor": "pacs_engine.executors",
    "LocalExecutor": "pacs_engine.executors",
    "make_executor": "pacs_engine.executors",
    "IngestStopped": "pacs_engine.ingest.run",
    "Progress": "pacs_engine.ingest.run",
    "run_ingest": "pacs_engine.ingest.run",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
