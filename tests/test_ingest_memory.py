"""The orchestrator's memory does not grow with a series (issue 11, 14): the plan is read and
cut a page at a time, and a series' transaction is fed part by part, still all at once."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from crash_helpers import Crashing
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from pacs_engine import Archive, open_archive
from pacs_engine.index import Index
from pacs_engine.ingest.journal import Journal, Planned
from pacs_engine.ingest.plan import plan_parts

SERIES = "1.2.826.0.1.3680043.8.498.55.1"
STUDY = "1.2.826.0.1.3680043.8.498.55.2"
PAGE = 4096  # the journal reads the plan this many entries at a time


def _planned_series(index: Index, count: int) -> str:
    """A run whose plan holds `count` one-frame inputs of one series; its run id."""
    journal = Journal(index)
    run = journal.start(["/nowhere"])["run"]
    for first in range(0, count, 5000):  # recorded as scan batches would be
        journal.record(
            run,
            [],
            [
                Planned(f"/nowhere/{n:08d}.dcm", SERIES, f"{SERIES}.{n + 1}", n, 1)
                for n in range(first, min(count, first + 5000))
            ],
        )
    return run


def _alive_planned() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Planned)


def test_a_series_is_cut_into_parts_holding_a_page_of_its_plan_at_a_time(tmp_path: Path) -> None:
    count, per_shard = 8 * PAGE, 64
    with Index.create(tmp_path / "index") as index:
        run = _planned_series(index, count)
        journal = Journal(index)
        tracemalloc.start()
        keys, parts = 0, 0
        for planned, span in plan_parts(journal.pending(run, SERIES), per_shard):
            assert span == per_shard and len(planned) == per_shard
            keys += len(planned)
            parts += 1
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # Entries other tests of this process still hold (a parameter's traceback, ...).
        held = _alive_planned()
        most_alive = 0
        for parts_seen, _ in enumerate(plan_parts(journal.pending(run, SERIES), per_shard)):
            if parts_seen % 100 == 0:
                most_alive = max(most_alive, _alive_planned() - held)
    assert (keys, parts) == (count, count // per_shard)
    # A page of the journal and the part being cut, never the series.
    assert 0 < most_alive <= PAGE + per_shard
    # Holding this plan whole takes about 13 MB (400 bytes an entry); a page about 4.
    assert peak < 6_000_000, peak


def test_inputs_of_one_sop_instance_uid_stay_in_one_part() -> None:
    entries = [Planned(f"k{n}", SERIES, f"{SERIES}.{n // 3}", n // 3, 1) for n in range(30)]
    cut = list(plan_parts(iter(entries), 4))
    # Each input of a SOP UID may be a version with frames of its own: 3 frames a SOP UID,
    # so two SOP UIDs (6 inputs) fill a part of 4 frames, which then spans 8.
    assert [len(planned) for planned, _ in cut] == [6] * 5
    assert [span for _, span in cut] == [8] * 5
    assert [e.key for planned, _ in cut for e in planned] == [e.key for e in entries]


def _row(n: int, series: str = SERIES) -> dict:
    return {
        "SOPInstanceUID": f"{series}.9.{n}",
        "SeriesInstanceUID": series,
        "StudyInstanceUID": STUDY,
        "InstanceNumber": n,
        "Modality": "MR",
    }


def test_a_series_written_in_pieces_is_seen_whole_or_not_at_all(tmp_path: Path) -> None:
    with Index.create(tmp_path / "index") as index:
        reader = Index.open(tmp_path / "index")
        with index.writing() as writer:
            for first in range(0, 300, 100):
                writer.add([_row(n) for n in range(first, first + 100)])
                assert writer.row(f"{SERIES}.9.{first}") is not None  # read back in the txn
                assert len(reader) == 0 and reader.series_record(SERIES) is None
        assert len(reader) == 300
        assert reader.series_record(SERIES)["NumberOfSeriesRelatedInstances"] == 300
        assert [r["InstanceNumber"] for r in reader.iter_series(SERIES)] == list(range(300))
        assert reader.study_record(STUDY)["NumberOfStudyRelatedInstances"] == 300

        other = "1.2.826.0.1.3680043.8.498.55.3"
        with pytest.raises(OSError), index.writing() as writer:
            writer.add([_row(n, other) for n in range(100)])
            raise OSError("no space left (the disk filled mid-series)")
        assert len(reader) == 300 and reader.series_record(other) is None
        reader.close()


def test_iter_series_reads_every_row_in_instance_order_across_chunks(tmp_path: Path) -> None:
    neighbour = SERIES + "1"  # its keys sort right after the series' own
    with Index.create(tmp_path / "index") as index:
        index.commit([_row(n) for n in range(2500)] + [_row(n, neighbour) for n in range(3)])
        assert [r["InstanceNumber"] for r in index.iter_series(SERIES)] == list(range(2500))
        assert [r["SOPInstanceUID"] for r in index.iter_series(SERIES)] == [
            r["SOPInstanceUID"] for r in index.series(SERIES)
        ]
        assert list(index.iter_series(SERIES[:-1])) == []


def _mr(path: Path, sop_number: int, instance_number: int, first_pixel: int) -> bytes:
    """A small MR image of the test series; its bytes."""
    sop = f"{SERIES}.{sop_number}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.PatientID, ds.Modality, ds.InstanceNumber = "MEMORY-TEST", "MR", instance_number
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    pixels = np.arange(64, dtype="<u2")
    pixels[0] = first_pixel
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def test_one_sop_uid_under_two_instance_numbers_planned_apart_loses_nothing(
    tmp_path: Path,
) -> None:
    """Planned in instance order, the two files land in different parts of one series: the
    first archived is kept, the other is judged against it at commit and kept too."""
    source = tmp_path / "src"
    source.mkdir()
    files = {n: _mr(source / f"{n:03d}.dcm", n, n, n) for n in range(1, 41)}
    late = _mr(source / "late.dcm", 1, 500, 7777)  # SOP UID of instance 1, planned last
    with Archive.create(tmp_path / "a", frames_per_shard=4) as archive:
        report = archive.ingest([source], workers=0)
    assert (report.inputs, report.archived, report.conflicts) == (41, 40, 1)
    assert report.inputs == report.archived + report.duplicates + report.conflicts + (
        report.quarantined
    )
    with open_archive(tmp_path / "a") as archive:
        assert archive.index.series_record(SERIES)["NumberOfSeriesRelatedInstances"] == 40
        for n, data in files.items():
            assert archive.export_bytes(f"{SERIES}.{n}") == data
        kept = [p.read_bytes() for p in (tmp_path / "a" / "quarantine").rglob("*") if p.is_file()]
    assert late in kept


POISON = "crashes-the-worker.dcm"


def test_a_series_of_many_parts_on_two_workers_with_a_crash_inside_loses_nothing(
    tmp_path: Path,
) -> None:
    """Parts come back in any order, one worker dies mid-series and its parts are retried
    after every part placed; the series is committed once, whole."""
    source = tmp_path / "src"
    source.mkdir()
    files = {n: _mr(source / f"{n:03d}.dcm", n, n, n) for n in range(1, 61) if n != 30}
    _mr(source / POISON, 30, 30, 30)
    executor = Crashing(2, POISON)
    try:
        with Archive.create(tmp_path / "a", frames_per_shard=4) as archive:
            report = archive.ingest([source], executor=executor)
            reasons = [r["reason"] for r in archive.quarantine.records()]
            assert archive.verify().ok
    finally:
        executor.close()
    assert (report.inputs, report.archived, report.quarantined) == (60, 59, 1)
    assert len(reasons) == 1 and "the encoding process died on this file" in reasons[0]
    with open_archive(tmp_path / "a") as archive:
        assert archive.index.series_record(SERIES)["NumberOfSeriesRelatedInstances"] == 59
        for n, data in files.items():
            assert archive.export_bytes(f"{SERIES}.{n}") == data


def test_a_resend_under_another_instance_number_planned_apart_is_a_version(
    tmp_path: Path,
) -> None:
    """The same pixels under another Instance Number land in another part: judged at commit
    by the pixel hashes both parts recorded, the resend is a version, as in one part."""
    source = tmp_path / "src"
    source.mkdir()
    files = {n: _mr(source / f"{n:03d}.dcm", n, n, n) for n in range(1, 41)}
    late = _mr(source / "late.dcm", 1, 500, 1)  # instance 1's SOP UID and pixels, planned last
    with Archive.create(tmp_path / "a", frames_per_shard=4) as archive:
        report = archive.ingest([source], workers=0)
    assert (report.inputs, report.archived, report.versions, report.conflicts) == (41, 41, 1, 0)
    with open_archive(tmp_path / "a") as archive:
        assert [v["source_path"] for v in archive.versions(f"{SERIES}.1")] == [
            str(source / "001.dcm"),
            str(source / "late.dcm"),
        ]
        assert archive.export_bytes(f"{SERIES}.1", 0) == files[1]
        assert archive.export_bytes(f"{SERIES}.1") == late
        assert archive.verify().ok
