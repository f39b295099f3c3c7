"""Frame and pixel hashes: BLAKE3 for new rows, BLAKE2b rows (written before) still check.

New rows record "blake3:" and 128 bits of BLAKE3 of each decoded frame; rows the code
wrote before hold BLAKE2b-128 without a prefix. Every check hashes in the kind of the
hash it compares with: verify, export, corrections, the judgement of a file sent again
(ingest and preflight) and de-identified copies, which keep their source's hashes.
Old rows are made here as that code made them: BLAKE2b of the pixels pydicom decodes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from blake3 import blake3
from conftest import run_cli
from pydicom.data import get_testdata_file
from test_versions import resend_with_other_header, with_other_pixels

from pacs_engine import Archive, open_archive
from pacs_engine.archive import prepare as prepare_module
from pacs_engine.archive.corrections import Corrections
from pacs_engine.archive.pixel_store import PixelStore, encode_chunk, split_tiles
from pacs_engine.archive.prepare import frame_hash
from pacs_engine.deid import deidentify, make_key
from pacs_engine.ingest.preflight import preflight

#: Native pixels, a JPEG 2000 lossless bitstream (decoded to hash it) and no pixels at all.
NAMES = ("CT_small.dcm", "MR_small_jp2klossless.dcm", "rtplan.dcm")


def source(name: str) -> Path:
    found = get_testdata_file(name, download=False)
    assert found is not None, name
    return Path(found)


def pydicom_frames(path: str) -> list[np.ndarray]:
    """The frames pydicom decodes from a file (none without pixel data), native byte order."""
    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        return []
    pixels = ds.pixel_array
    frames = pixels if int(ds.get("NumberOfFrames") or 1) > 1 else pixels[None]
    return [np.ascontiguousarray(f, f.dtype.newbyteorder("=")) for f in frames]


def as_old_code_wrote_it(row: dict) -> dict:
    """The row with the hashes the code before BLAKE3 recorded: BLAKE2b-128, no prefix."""
    hashes = [
        hashlib.blake2b(f.tobytes(), digest_size=16).hexdigest()
        for f in pydicom_frames(row["source_path"])
    ]
    pixel = hashlib.blake2b("".join(hashes).encode(), digest_size=16).hexdigest()
    return {**row, "frame_hashes": hashes, "pixel_hash": pixel}


def archive_of_old_rows(root: Path, sources: list[Path]) -> None:
    """An archive of `sources` whose rows hold the old hashes."""
    with Archive.create(root) as archive:
        assert archive.ingest(sources, workers=0).archived == len(sources)
        archive.index.commit([as_old_code_wrote_it(row) for row in archive.index])


def test_new_rows_record_blake3_of_the_pixels_pydicom_decodes(tmp_path: Path) -> None:
    sources = [source(name) for name in NAMES]
    with Archive.create(tmp_path / "a") as archive:
        archive.ingest(sources, workers=0)
        rows = {Path(row["source_path"]).name: row for row in archive.index}
    assert sorted(rows) == sorted(NAMES)
    for name, row in rows.items():
        want = [
            "blake3:" + blake3(f.tobytes()).hexdigest(16) for f in pydicom_frames(str(source(name)))
        ]
        assert len(want) == (0 if name == "rtplan.dcm" else 1)
        assert row["frame_hashes"] == want, name
        assert row["pixel_hash"] == "blake3:" + blake3("".join(want).encode()).hexdigest(16)


def replace_first_frame(root: Path, row: dict) -> None:
    """Store other pixels (one bit changed) as the row's first frame: a frame that decodes,
    to the wrong pixels, so only its hash can tell."""
    pixels = PixelStore(root / "pixels")
    path, first = row["pixels"]["array"], row["pixels"]["first_frame"]
    spec = pixels.spec(path)
    (frame,) = pixels.read_frames(path, range(first, first + 1))
    frame = frame.copy()
    frame[3, 4] ^= 1
    pixels.write_frames(path, first, [encode_chunk(spec, t) for t in split_tiles(frame, spec)])


@pytest.mark.parametrize("kind", ["blake3", "blake2b"])
def test_rows_of_either_kind_verify_and_export_and_a_changed_frame_is_caught(
    tmp_path: Path, kind: str
) -> None:
    root = tmp_path / "a"
    sources = [source(name) for name in NAMES]
    if kind == "blake2b":
        archive_of_old_rows(root, sources)
    else:
        with Archive.create(root) as archive:
            archive.ingest(sources, workers=0)
    with open_archive(root) as archive:
        rows = {Path(row["source_path"]).name: row for row in archive.index}
        assert rows["CT_small.dcm"]["frame_hashes"][0].startswith("blake3:") == (kind == "blake3")
        report = archive.verify(workers=0)
        assert report.ok and report.instances == 3, report.mismatches
        for name, row in rows.items():
            assert archive.export_bytes(row["SOPInstanceUID"]) == source(name).read_bytes()
    replace_first_frame(root, rows["CT_small.dcm"])
    with open_archive(root) as archive:
        (mismatch,) = archive.verify(workers=0).mismatches
    assert mismatch["source_path"] == str(source("CT_small.dcm"))
    assert "frames [0] do not decode to the source pixels" in mismatch["problem"]


def test_a_file_sent_again_is_judged_against_a_row_hashed_the_old_way(tmp_path: Path) -> None:
    """Each file of an old archive sent again with another header is a new version, and
    the CT with one pixel changed a conflict: predicted so by preflight, done so by ingest."""
    root = tmp_path / "a"
    sources = [source(name) for name in NAMES]
    archive_of_old_rows(root, sources)
    again = tmp_path / "again"
    for number, path in enumerate(sources):
        resend_with_other_header(path, again / f"{number}.dcm")
    with_other_pixels(source("CT_small.dcm"), again / "other-pixels.dcm")
    conflict = "conflict: same SOP Instance UID as an archived instance, but different pixels"
    outcomes = {p.key: (p.outcome, p.version, p.reason) for p in preflight([again], root)}
    assert outcomes == {
        **{str(again / f"{n}.dcm"): ("archived", True, None) for n in range(3)},
        str(again / "other-pixels.dcm"): ("conflict", False, conflict),
    }
    with open_archive(root, readonly=False) as archive:
        report = archive.ingest([again], workers=0)
        assert (report.archived, report.versions, report.conflicts) == (3, 3, 1)
        assert report.balanced
        (record,) = archive.quarantine.records()
        assert record["reason"] == conflict
        assert archive.verify(workers=0).ok


def test_a_correction_of_a_row_hashed_the_old_way_keeps_its_pixels(tmp_path: Path) -> None:
    """The corrected file's frames are compared with the row's BLAKE2b hashes as BLAKE2b."""
    root = tmp_path / "a"
    archive_of_old_rows(root, [source("CT_small.dcm")])
    with open_archive(root) as archive:
        (row,) = list(archive.index)
        recorded = row["frame_hashes"]
    assert not recorded[0].startswith("blake3:")
    done = run_cli(
        "correct",
        str(root),
        "patient",
        "--id",
        "1CT1",
        "--set",
        "PatientName=DOE^JO",
        "--reason",
        "typo",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with open_archive(root) as archive:
        (row,) = list(archive.index)
        assert row["PatientName"] == "DOE^JO"
        assert row["frame_hashes"] == recorded and row["source_path"].startswith("correction:")
        assert archive.verify(workers=0).ok


def test_a_correction_of_a_blake3_row_hashes_each_frame_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The corrected file's BLAKE3 frame hashes, made when it is split, are the ones compared."""
    name = "rtdose.dcm"  # native, 15 frames
    with Archive.create(tmp_path / "a") as archive:
        assert archive.ingest([source(name)], workers=0).archived == 1
    hashed: list[str] = []

    def counted(frame: np.ndarray, kind: str = prepare_module.BLAKE3) -> str:
        hashed.append(kind)
        return frame_hash(frame, kind)

    with open_archive(tmp_path / "a", readonly=False) as archive:
        corrections = Corrections(archive)
        patient = pydicom.dcmread(source(name)).PatientID
        planned = corrections.correct_patient(patient, {"PatientName": "DOE^JO"}, "typo", "me")
        monkeypatch.setattr(prepare_module, "frame_hash", counted)
        corrections.apply(planned)
        (row,) = list(archive.index)
        assert row["PatientName"] == "DOE^JO" and len(row["frame_hashes"]) == 15
    assert hashed == [prepare_module.BLAKE3] * 15


def test_a_deidentified_copy_keeps_old_hashes_and_verifies(tmp_path: Path) -> None:
    root = tmp_path / "a"
    archive_of_old_rows(root, [source(name) for name in NAMES])
    key = make_key(tmp_path / "key")
    report = deidentify(root, tmp_path / "research", key, workers=0)
    assert report.balanced and report.staged == 3
    with open_archive(root) as record, open_archive(tmp_path / "research") as research:
        old = sorted(tuple(row["frame_hashes"] or ()) for row in record.index)
        copied = sorted(tuple(row["frame_hashes"] or ()) for row in research.index)
        assert copied == old and any(old)
        assert research.verify(workers=0).ok
