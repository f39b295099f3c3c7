"""Bulk migration: the parallel, resumable ingest orchestrator and its executors."""

from pacs_engine.ingest.executors import DaskExecutor, InlineExecutor, LocalExecutor, make_executor
from pacs_engine.ingest.run import IngestStopped, Progress, run_ingest

__all__ = [
    "DaskExecutor",
    "IngestStopped",
    "InlineExecutor",
    "LocalExecutor",
    "Progress",
    "make_executor",
    "run_ingest",
]
