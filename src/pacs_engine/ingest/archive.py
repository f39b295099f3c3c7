"""The archive users open: the storage `Archive` with `ingest` added.

`pacs_engine.Archive` and `pacs_engine.open_archive` are the names of this module.
The storage layer (`pacs_engine.archive`) sits below `ingest/` and imports nothing
of it, so the entry point of an ingest lives here, beside what it runs; everything
else (create, open_or_create, reading, export, verify, query) is inherited.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from pacs_engine.archive import archive as storage
from pacs_engine.archive.format import ArchiveError
from pacs_engine.archive.prepare import MAX_INPUT_BYTES
from pacs_engine.archive.report import IngestReport
from pacs_engine.ingest.encode import Checks
from pacs_engine.ingest.inputs import InputPolicy
from pacs_engine.ingest.run import Progress, run_ingest
from pacs_engine.storage import folder_identity
from pacs_engine.workers import Executor


class Archive(storage.Archive):
    """A lossless DICOM archive on disk that also ingests. Open with `open_archive`, make
    with `Archive.create` or `Archive.open_or_create` (both return this class)."""

    def ingest(
        self,
        sources: Iterable[str | os.PathLike],
        workers: int | None = None,
        executor: Executor | None = None,
        verify: bool = False,
        progress: Callable[[Progress], None] | None = None,
        trust_bitstreams: bool = False,
        max_input_bytes: int = MAX_INPUT_BYTES,
        follow_links: bool = False,
        keep_non_dicom: bool = False,
        max_frame_bytes: int | None = None,
        launched: float | None = None,
        scheduler: str | None = None,
    ) -> IngestReport:
        """Archive the DICOM files under `sources` (folders, files, zip and tar archives,
        and the instances of other pacs_engine archives).

        Runs `pacs_engine.ingest.run_ingest`: scan in parallel, group by series, encode
        parts of series in `workers` processes (0: in this process; None: one per core), on
        `executor`, or on the dask.distributed cluster at `scheduler` (an address, reached
        once the run starts; not with `executor`: ValueError), and commit each part with its
        journal entries. Every input ends archived, as a duplicate, as a conflict or in
        quarantine; the report counts them. An interrupted run resumes when it is started
        again with the same sources. Compressed frames kept as their original bitstream are
        decoded to hash their pixels, and a file whose frames do not decode is quarantined.
        With `trust_bitstreams` they are stored byte for byte without being decoded (faster;
        a SOP Instance UID seen twice still decodes both copies), and only `Archive.verify`
        finds frames that never decoded. With `verify`, every frame encoded with the archive
        codec is decoded again and checked before it is committed. An input of more than
        `max_input_bytes` is never read into memory, and quarantined with its size, sha256
        and first bytes, as is a file that is not DICOM unless `keep_non_dicom`; symbolic
        links met in folders are listed, not followed, unless `follow_links` (docs/inputs.md).
        Compressed frames that would decode to more than `max_frame_bytes` (None:
        `Checks`' default, 1 GiB) are quarantined.
        The report's `first_encode_seconds` counts from `launched` (epoch seconds; None:
        the call), e.g. a command's launch.
        """
        if executor is not None and scheduler is not None:
            raise ValueError("ingest: give an executor or a scheduler, not both")
        if self.readonly:
            raise ArchiveError(f"{self.path}: opened read-only")
        sources = list(sources)
        own = folder_identity(self.path)
        if any(folder_identity(source) == own for source in sources):
            raise ArchiveError(f"{self.path}: an archive cannot be ingested into itself")
        checks = Checks(
            decode_bitstreams=not trust_bitstreams,
            recheck_encoded=verify,
            inputs=InputPolicy(max_input_bytes, follow_links, keep_non_dicom),
            max_frame_bytes=max_frame_bytes or Checks.max_frame_bytes,
        )
        return run_ingest(
            self,
            sources,
            workers,
            executor,
            checks=checks,
            progress=progress,
            launched=launched,
            scheduler=scheduler,
        )


def open_archive(path: str | os.PathLike, readonly: bool = True) -> Archive:
    """Open an existing archive (read-only unless asked)."""
    return Archive(path, readonly=readonly)
