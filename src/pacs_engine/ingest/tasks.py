"""The functions ingest workers run: scan a batch of inputs, encode a part of a series.

Plain module-level functions of picklable arguments, so any executor runs them:
a local process pool, a Dask cluster, or the ingesting process itself. Each
process keeps one PartEncoder per archive.
"""

from __future__ import annotations

import contextlib
import os

from pacs_engine.archive.prepare import PrepareError, check_uids
from pacs_engine.archive.report import Outcome
from pacs_engine.codecs.native import LayoutError, PixelLayout
from pacs_engine.errors import ScanError
from pacs_engine.header import Header
from pacs_engine.index.rows import Row
from pacs_engine.ingest.encode import Checks, Part, PartEncoder, PartResult
from pacs_engine.ingest.inputs import (
    DEFAULT_POLICY,
    InputError,
    InputPolicy,
    InputRef,
    Readahead,
    archived_row,
    media_directory_reason,
    quarantine_record,
    read_input,
    refused_for_instance,
)
from pacs_engine.ingest.journal import Planned
from pacs_engine.scanning import scan
from pacs_engine.stages import Times, add_times, stage, task
from pacs_engine.storage import DeferredWrites, fsync_dirs
from pacs_engine.workers import PerProcess

_ENCODERS: PerProcess[str, PartEncoder] = PerProcess()


def _encoder(root: str) -> PartEncoder:
    """This process's encoder for the archive (a forked child makes its own)."""
    return _ENCODERS.get(root, lambda: PartEncoder(root))


def scan_task(
    root: str, keys: list[str], policy: InputPolicy = DEFAULT_POLICY
) -> tuple[list[Planned], list[Outcome], int, Times]:
    """Scan inputs: the ones to plan, outcomes of those quarantined already, the worker's
    process id and its seconds per stage."""
    with task() as times:
        planned, rejected = _scan(root, keys, policy)
    return planned, rejected, os.getpid(), times


def _scan(root: str, keys: list[str], policy: InputPolicy) -> tuple[list[Planned], list[Outcome]]:
    encoder = _encoder(root)
    planned: list[Planned] = []
    rejected: list[Outcome] = []
    for key in keys:
        ref = InputRef.from_key(key)
        data = None
        try:
            row = archived_row(ref)
            if row is not None:  # another archive's instance: its row says what a scan would
                planned.append(_planned_from_row(key, row))
                continue
            if ref.member is None:
                with stage("scan"):
                    header = scan(ref.container)  # reads the header, not the pixel data
            else:
                with stage("read"):
                    data = read_input(ref, policy)
                with stage("scan"):
                    header = scan(data)
        except InputError as error:
            rejected.append(encoder.reject(key, None, str(error), policy))
            continue
        except ScanError as error:
            rejected.append(encoder.reject(key, data, str(error.reason), policy))
            continue
        try:
            check_uids(header)  # the journal and the index key on them
        except PrepareError as error:
            if data is None:
                # Read once: to tell a DICOMDIR, and for the quarantine to keep its bytes
                # (a file too large to read whole is kept by its head, read on its own).
                with contextlib.suppress(InputError):
                    data = read_input(ref, policy)
            reason = media_directory_reason(ref, data, str(error), policy)
            rejected.append(encoder.reject(key, data, reason, policy))
            continue
        if refused_for_instance(ref, header["SOPInstanceUID"]):
            # A file a source archive refused in favour of an instance it holds: that
            # instance is copied, and this file stays refused, whichever is planned first.
            reason = (quarantine_record(ref) or {}).get("reason", "no record kept")
            rejected.append(
                encoder.reject(
                    key, data, f"refused by the source archive, as before: {reason}", policy
                )
            )
            continue
        planned.append(planned_input(key, header))
    return planned, rejected


def planned_input(key: str, header: Header) -> Planned:
    """The plan entry of a scanned input whose UIDs passed `check_uids`."""
    number = header.get("InstanceNumber")
    return Planned(
        key,
        header["SeriesInstanceUID"],
        header["SOPInstanceUID"],
        number if isinstance(number, int) else None,
        _frames(header),
        _pixel_bytes(header),
    )


def _planned_from_row(key: str, row: Row) -> Planned:
    """An archived instance of another archive, planned as its exported file would be."""
    number = row.get("InstanceNumber")
    return Planned(
        key,
        row["SeriesInstanceUID"],
        row["SOPInstanceUID"],
        number if isinstance(number, int) else None,
        _frame_count(row.get("pixel_keyword") is not None, row.get("NumberOfFrames")),
        row.get("raw_pixel_bytes") or 0,
    )


def _frames(header: Header) -> int:
    """Frames the instance holds (see `_frame_count`)."""
    return _frame_count(header.pixel is not None, header.get("NumberOfFrames"))


def _pixel_bytes(header: Header) -> int:
    """Bytes of the pixel data the header declares (0 when it declares none or cannot
    say): what the run weighs series by, to send the largest first."""
    if header.pixel is None:
        return 0
    try:
        return PixelLayout.from_attributes(header.attributes, header.pixel.keyword).encoded_bytes
    except LayoutError:
        return 0


def _frame_count(has_pixels: bool, number_of_frames: object) -> int:
    """Frames the instance holds, as Number of Frames says (1 when absent, 0 without pixels)."""
    if not has_pixels:
        return 0
    if isinstance(number_of_frames, int) and number_of_frames > 0:
        return number_of_frames
    return 1


def encode_batch(
    root: str, parts: tuple[Part, ...], checks: Checks
) -> tuple[list[PartResult], Exception | None]:
    """Encode parts one after the other (one task for several small series), timing each:
    the results, and the error that stopped the batch (its other parts are not encoded).

    The parts' files are made durable together at the end (`DeferredWrites`: one
    round of fsyncs for the batch, not a few per small series), those of the parts
    encoded before a failure (a full disk) too: they are handed back to be committed,
    as they would have been as tasks of their own. A codec is chosen once per kind
    of frames among the batch's new arrays (`PartEncoder.encode`), so a batch of
    small series does not pay a choice each. The batch's inputs are read ahead
    (`Readahead`): each file's read starts while the files before it are encoded.
    """
    encoder = _encoder(root)
    readahead = Readahead([key for part in parts for key in part.keys], checks.inputs)
    choices: dict = {}
    results: list[PartResult] = []
    error = None
    with DeferredWrites() as writes:  # an interrupt leaves no temporary, no descriptor open
        for part in parts:
            written = len(writes.files)
            try:
                with task() as times:
                    result = encoder.encode(part, checks, choices, writes, readahead)
            except Exception as failure:
                writes.discard_since(written)
                error = failure
                break
            result.worker, result.stages = os.getpid(), times
            results.append(result)
        with task() as times:
            fsync_dirs(writes)  # raises if they cannot be made durable: nothing is committed
    if results:
        add_times(results[-1].stages, times)  # the batch's syncs, charged to its last part
    return results, error


def release(root: str) -> None:
    """Close this process's encoder for the archive (its index maps 1 TiB of address space)."""
    encoder = _ENCODERS.pop(root)
    if encoder is not None:
        encoder.close()
