"""The lossless archive: round trips against pydicom, byte-exact export, duplicates, quarantine."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import google_crc32c
import numpy as np
import pydicom
import pytest
import zarr
from conftest import CORPUS, bind_mount, corpus_params, pydicom_test_files, require_corpus, run_cli
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from pacs_engine import Archive, ArchiveError, open_archive
from pacs_engine.archive import archive as storage
from pacs_engine.archive import blobs
from pacs_engine.archive.pixel_store import ArraySpec, PixelStore, array_metadata
from pacs_engine.archive.prepare import frame_hash, instance_pixel_hash
from pacs_engine.archive.rebuild import rebuild_index
from pacs_engine.archive.verify_plan import Selection
from pacs_engine.archive.versions import version_rows
from pacs_engine.codecs import CodecError
from pacs_engine.codecs.blosc import Blosc
from pacs_engine.index.core import UID_KEYWORDS
from pacs_engine.ingest import encode
from pacs_engine.storage import write_atomic
from pacs_engine.synth import write_studies


def manifest() -> dict[str, dict[str, str]]:
    """MANIFEST.tsv rows by path."""
    lines = (CORPUS / "MANIFEST.tsv").read_text().splitlines()
    names = lines[0].split("\t")
    return {r.split("\t")[0]: dict(zip(names, r.split("\t"), strict=True)) for r in lines[1:] if r}


def shard_files(archive_path: Path) -> list[Path]:
    """The shard files of every array (chunk keys start with 'c/')."""
    pixels = archive_path / "pixels"
    return [p for p in pixels.rglob("*") if p.is_file() and "c" in p.relative_to(pixels).parts]


def pydicom_pixels(path: Path, color_conversion: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)  # some files have no preamble and no meta
        if "TransferSyntaxUID" not in ds.file_meta:  # as the scanner guessed it
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian
                if implicit
                else ExplicitVRLittleEndian
                if little
                else ExplicitVRBigEndian
            )
        if ds.file_meta.TransferSyntaxUID == DEFLATED_FRAMES:
            return inflated_pixels(ds)
        return pixel_array(ds, as_rgb=color_conversion != "none")


#: Deflated Image Frame Compression, which pydicom 3.0 cannot decode.
DEFLATED_FRAMES = "1.2.840.10008.1.2.8.1"


def inflated_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """The frames of a deflated-frames data set: each inflated (zlib), then decoded by
    pydicom as the native pixel data of a one-frame data set."""
    count = int(ds.get("NumberOfFrames", 1))
    frames = []
    for frame in generate_frames(ds.PixelData, number_of_frames=count):
        one = pydicom.Dataset(ds)
        one.file_meta = pydicom.dataset.FileMetaDataset(ds.file_meta)
        one.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        one.NumberOfFrames = 1
        one.PixelData = zlib.decompress(frame, -zlib.MAX_WBITS)
        frames.append(pixel_array(one))
    return np.stack(frames)


INGEST_MODES = {"default": {}, "trusted": {"trust_bitstreams": True}, "verify": {"verify": True}}


def check_round_trip(path: Path, folder: Path, mode: str = "default") -> dict:
    """Archive one file alone; its frames must equal pydicom's and its export the file."""
    with Archive.create(folder) as archive:
        return _round_trip(archive, path, mode)


def _round_trip(archive: Archive, path: Path, mode: str = "default") -> dict:
    report = archive.ingest([path], workers=0, **INGEST_MODES[mode])
    assert report.balanced and report.inputs == 1
    if report.archived != 1:
        (record,) = archive.quarantine.records()
        assert record["path"] == str(path) and record["reason"]
        kept = archive.path / "quarantine" / f"{record['sha256']}.dcm"
        if record["reason"].startswith("not a DICOM file"):  # its path, size and sha256 only
            assert (record["size"], record["kept_bytes"]) == (path.stat().st_size, 0)
            assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert not kept.exists()
            return record
        assert kept.read_bytes() == path.read_bytes()
        return record
    (row,) = list(archive.index)
    assert archive.export_bytes(row["SOPInstanceUID"]) == path.read_bytes()
    if row["pixels"]:
        attributes = archive.pixels.open_array(row["pixels"]["array"]).attrs
        try:
            theirs = pydicom_pixels(path, attributes.get("color_conversion", "none"))
        except Exception:  # pydicom cannot decode the pixels either
            # Only a run that trusts bitstreams archives it (byte for byte, undecoded;
            # the others quarantine it), and verify then reports it.
            assert mode == "trusted" and row["pixel_storage"] == "bitstream"
            assert row["frame_hashes"] is None
            (mismatch,) = archive.verify().mismatches
            assert "cannot read back" in mismatch["problem"], mismatch
            return row
        ours = archive.frames(row["SOPInstanceUID"])
        assert ours.dtype == theirs.dtype.newbyteorder("=")
        assert np.array_equal(ours.reshape(theirs.shape), theirs)
        if mode != "trusted" and row["pixel_storage"] == "bitstream":
            assert row["frame_hashes"] and len(row["frame_hashes"]) == len(ours)
    assert archive.verify().ok
    return row


#: Corpus files every ingest refuses, by path, with the exact reason it must give.
REFUSED = {
    "malformed/pydicom/test_files/MR_truncated.dcm": (
        "element (7FE0,0010) declares a value of 8192 bytes, past the end of the data (9630 bytes)"
    ),
    "malformed/pydicom/test_files/rtplan_truncated.dcm": (
        "element (300A,00B0) declares a value of 976 bytes, past the end of the data (2129 bytes)"
    ),
    "malformed/pydicom-data/emri_small_jpeg_2k_lossless_too_short.dcm": (
        "the data ends inside an element header"
    ),
    # pydicom's test file stripped of its pixels: as far as the archive can tell, cut short.
    # A sequence delimiter inside the pixel data: the frame's bitstream is not J2K's (nor
    # can pydicom decode it), refused by its declared size before any decoder allocates it.
    "malformed/pydicom/test_files/JPEG2000-embedded-sequence-delimiter.dcm": (
        "frame 0: pacs_engine.dicom_jpeg2k: the bitstream declares 1024 x 3722445056 pixels "
        "x 1 samples, the data set 1024 x 256 pixels x 1 samples"
    ),
    "pydicom/charset_files/chrJapMulti.dcm": (
        "Rows 32, Columns 32, Bits Allocated 16: an image, but the file has no pixel data "
        "(cut short?)"
    ),
}


def missing_uid(path: Path) -> str | None:
    """The reason for a file without a UID the index needs, from pydicom's reading of it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    reason = next((f"no {k}" for k in UID_KEYWORDS if not ds.get(k)), None)
    meta = getattr(ds, "file_meta", None)
    media_class = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    if reason is not None and media_class == MediaStorageDirectoryStorage:
        return f"a DICOMDIR (a media directory, no instance: nothing to archive): {reason}"
    return reason


@pytest.mark.parametrize("mode", list(INGEST_MODES))
@pytest.mark.parametrize("path", corpus_params())
def test_every_corpus_file_round_trips(path: Path, mode: str, tmp_path: Path) -> None:
    """Archived, the frames equal pydicom's, the export the file, and verify passes (or,
    with trusted bitstreams left undecoded at ingest, says the frames do not decode);
    quarantined only with the exact reason listed for the file, or for a file without
    a UID (as pydicom reads it) "no <that UID>"."""
    relative = str(path.relative_to(CORPUS))
    result = check_round_trip(path, tmp_path / "archive", mode)
    if relative in REFUSED:
        assert result.get("reason") == REFUSED[relative]
    elif (reason := missing_uid(path)) is not None:
        assert result.get("reason") == reason
    else:
        assert "reason" not in result, result["reason"]


def test_the_lists_of_refused_files_agree_with_the_manifest() -> None:
    """Every listed file is in the corpus, and every file pydicom cannot decode is listed
    or has no UID (so no file slips between the classes of the round-trip test)."""
    require_corpus()
    entries = manifest()
    assert set(REFUSED) <= set(entries)
    for relative, entry in entries.items():
        if entry["pydicom_decodes"] == "no" and entry["transfer_syntax_uid"] != DEFLATED_FRAMES:
            assert relative in REFUSED or missing_uid(CORPUS / relative) is not None, relative


@pytest.mark.parametrize("path", pydicom_test_files(), ids=lambda p: p.name)
def test_pydicom_test_files_round_trip(path: Path, tmp_path: Path) -> None:
    check_round_trip(path, tmp_path / "archive")


@pytest.mark.parametrize("codec", ["lz4", "raw"])
def test_read_optimised_archives_keep_every_pixel(codec: str, tmp_path: Path) -> None:
    """lz4 and raw archives (transcoded) hold pydicom's pixels, 8-bit colour included;
    zarr reads the same; verify passes; the chunks are the codec asked for."""
    names = ("CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_small_odd.dcm", "SC_rgb_rle_2frame.dcm")
    files = [p for p in pydicom_test_files() if p.name in names]
    assert len(files) == len(names)
    with Archive.create(tmp_path / "a", codec=codec, transcode=True) as archive:
        report = archive.ingest(files, workers=0)
        assert report.archived == len(files)
        for row in archive.index:
            theirs = pydicom.dcmread(row["source_path"]).pixel_array
            ours = archive.frames(row["SOPInstanceUID"])
            assert np.array_equal(ours.reshape(theirs.shape), theirs), row["source_path"]
            array = row["pixels"]["array"]
            zarr_frames = archive.pixels.open_array(array)[row["pixels"]["first_frame"] :][
                : row["pixels"]["frames"]
            ]
            assert np.array_equal(zarr_frames, ours)
            expected = "blosc-lz4" if codec == "lz4" else "bytes"
            assert archive.pixels.spec(array).codec_name == expected
        assert archive.verify().ok
        assert set(archive.info()["by_codec"]) == {expected}


def test_a_plain_zarr_reader_in_a_fresh_process_reads_the_pixels(tmp_path: Path) -> None:
    source = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    archive = Archive.create(tmp_path / "a")
    archive.ingest([source], workers=0)
    (row,) = list(archive.index)
    array_path = archive.path / "pixels" / row["pixels"]["array"]
    code = (
        "import sys, zarr, numpy as np\n"
        "a = zarr.open_array(sys.argv[1], mode='r')\n"
        "np.save(sys.stdout.buffer, a[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(array_path)], capture_output=True, check=True, cwd=tmp_path
    )

    frame = np.load(BytesIO(out.stdout))
    assert np.array_equal(frame, pydicom.dcmread(source).pixel_array)


def test_whole_corpus_in_one_archive_is_complete_and_verifies(tmp_path: Path) -> None:
    corpus = require_corpus()
    archive = Archive.create(tmp_path / "a")
    report = archive.ingest([corpus], workers=0)
    files = sum(1 for p in corpus.rglob("*") if p.is_file())
    assert report.inputs == files
    assert report.balanced
    # The corpus saves some images in several transfer syntaxes under one SOP Instance UID:
    # versions of one instance, each kept; it has conflicts too, and no byte-identical copy.
    assert report.versions > 0 and report.conflicts > 0 and report.duplicates == 0
    assert len(list(archive.index)) == report.archived - report.versions
    versions = [(row, i, v) for row in archive.index for i, v in enumerate(version_rows(row))]
    assert len(versions) == report.archived
    for row, i, version in versions:  # every kept version exports as its file
        expected = Path(version["source_path"]).read_bytes()
        assert archive.export_bytes(row["SOPInstanceUID"], i) == expected
    records = archive.quarantine.records()
    assert len(archive.quarantine.paths()) == report.quarantined + report.conflicts
    conflicts = [r for r in records if r["reason"].startswith("conflict")]
    for record in conflicts:  # pixels are compared (decoded) only when the headers agree
        if record["reason"].endswith("different pixels"):
            assert record["pixel_hash"] and record["pixel_hash"] != record["archived_pixel_hash"]
    duplicates = [d for row in archive.index for d in row["duplicates"]]
    assert len(duplicates) == report.duplicates
    for duplicate in duplicates:
        assert (
            hashlib.sha256(Path(duplicate["path"]).read_bytes()).hexdigest()
            == (duplicate["sha256"])
        )
    # Files whose frames do not decode were quarantined at ingest, so nothing fails here.
    assert archive.verify().ok
    info = archive.info()
    assert info["instances"] == report.archived - report.versions and info["ratio"] > 1


def test_the_same_files_twice_are_duplicates_not_copies(tmp_path: Path) -> None:
    files = [p for p in pydicom_test_files() if p.name in ("CT_small.dcm", "MR_small.dcm")]
    archive = Archive.create(tmp_path / "a")
    first = archive.ingest(files, workers=0)
    stored = sum(f.stat().st_size for f in shard_files(tmp_path / "a"))
    assert stored > 0
    # Copies: the same paths again would be skipped unread (unchanged since the first run).
    (tmp_path / "copies").mkdir()
    copies = [shutil.copy(f, tmp_path / "copies") for f in files]
    second = archive.ingest(copies, workers=0)
    assert (first.archived, second.archived, second.duplicates) == (2, 0, 2)
    again = sum(f.stat().st_size for f in shard_files(tmp_path / "a"))
    assert again == stored
    rows = {r["source_path"]: r for r in archive.index}
    assert all(len(r["duplicates"]) == 1 for r in rows.values())


def test_lossless_re_encodings_are_versions_and_changed_pixels_a_conflict(tmp_path: Path) -> None:
    """The same image in other transfer syntaxes is kept as versions of the instance (their
    bitstreams are not the stored pixels: each keeps its own), each exporting as its file."""
    samples = {p.name: p for p in pydicom_test_files()}
    archive = Archive.create(tmp_path / "a")
    archive.ingest([samples["MR_small.dcm"]], workers=0)
    later = [samples["MR_small_RLE.dcm"], samples["MR_small_jp2klossless.dcm"]]
    report = archive.ingest(later, workers=0)
    assert (report.archived, report.versions, report.duplicates, report.conflicts) == (2, 2, 0, 0)
    (row,) = list(archive.index)
    versions = archive.versions(row["SOPInstanceUID"])
    assert versions[0]["source_path"] == str(samples["MR_small.dcm"])
    assert sorted(v["source_path"] for v in versions[1:]) == sorted(map(str, later))
    assert len({json.dumps(v["pixels"], sort_keys=True) for v in versions}) == 3
    for number, version in enumerate(versions):
        expected = Path(version["source_path"]).read_bytes()
        assert archive.export_bytes(row["SOPInstanceUID"], number) == expected
    assert archive.export_bytes(row["SOPInstanceUID"]) == Path(row["source_path"]).read_bytes()
    changed = pydicom.dcmread(samples["MR_small.dcm"])
    pixels = changed.pixel_array.copy()
    pixels[0, 0] += 1
    changed.PixelData = pixels.tobytes()
    target = tmp_path / "changed.dcm"
    changed.save_as(target)
    report = archive.ingest([target], workers=0)
    assert report.conflicts == 1 and report.archived == 0
    (record,) = [r for r in archive.quarantine.records() if r["path"] == str(target)]
    assert "different pixels" in record["reason"]
    assert record["pixel_hash"] != record["archived_pixel_hash"]
    kept = archive.path / "quarantine" / f"{record['sha256']}.dcm"
    assert kept.read_bytes() == target.read_bytes()
    assert archive.verify().ok


def test_rle_bitstreams_are_stored_zstd_compressed_and_export_byte_for_byte(
    tmp_path: Path,
) -> None:
    """RLE chunks go through Blosc zstd: fewer bytes than the bitstreams, the files still
    rebuild exactly, and a plain zarr reader decodes pydicom's pixels."""
    samples = {p.name: p for p in pydicom_test_files()}
    sources = [
        samples[n] for n in ("MR_small_RLE.dcm", "rtdose_rle.dcm", "SC_rgb_rle_16bit_2frame.dcm")
    ]
    archive = Archive.create(tmp_path / "a")
    archive.ingest(sources, workers=0)
    for source in sources:
        ds = pydicom.dcmread(source)
        (row,) = archive.query(SOPInstanceUID=ds.SOPInstanceUID)
        reference = row["pixels"]
        spec = archive.pixels.spec(reference["array"])
        assert spec.codec.codec_name == "pacs_engine.dicom_rle"
        assert [c.cname for c in spec.compressors] == ["zstd"]
        first, count = reference["first_frame"], reference["frames"]
        stored = archive.pixels.read_chunks(reference["array"], first, first + count)
        original = list(generate_frames(ds.PixelData, number_of_frames=count))
        assert archive.pixels.read_bitstreams(reference["array"], first, first + count) == original
        assert sum(map(len, stored)) < sum(map(len, original))
        assert archive.export_bytes(ds.SOPInstanceUID) == source.read_bytes()
        plain = zarr.open_array(archive.path / "pixels" / reference["array"], mode="r")
        frames = plain[first : first + count]
        assert np.array_equal(frames.reshape(ds.pixel_array.shape), ds.pixel_array)
    assert archive.verify().ok


def test_an_rle_array_an_older_version_made_without_zstd_keeps_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New RLE instances of a series whose array has no compressor are written as the array
    says (uncompressed), and every file still exports byte for byte."""
    files = write_studies(tmp_path / "in", 1, 1, 4, rows=32, columns=32, syntaxes=["rle"])
    archive = Archive.create(tmp_path / "a")
    monkeypatch.setattr(encode, "BITSTREAM_COMPRESSORS", {})
    assert archive.ingest(files[:2], workers=0).archived == 2
    monkeypatch.undo()
    assert archive.ingest(files[2:], workers=0).archived == 2
    rows = list(archive.index)
    assert len({row["pixels"]["array"] for row in rows}) == 1
    assert archive.pixels.spec(rows[0]["pixels"]["array"]).compressors == ()
    for row in rows:
        source = Path(row["source_path"]).read_bytes()
        assert archive.export_bytes(row["SOPInstanceUID"]) == source
    assert archive.verify().ok


def test_copies_of_an_undecoded_bitstream_are_told_apart_by_decoding_it(tmp_path: Path) -> None:
    """An instance kept as its undecoded JPEG 2000 bitstream (trusted) is decoded when the
    same SOP Instance UID comes again: from the archive in a later run, from the part in
    the same one."""
    samples = {p.name: p for p in pydicom_test_files()}
    j2k, rle, native = (
        samples[n] for n in ("MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small.dcm")
    )
    expected = frame_hash(pydicom.dcmread(native).pixel_array)
    archive = Archive.create(tmp_path / "a")
    assert archive.ingest([j2k], workers=0, trust_bitstreams=True).archived == 1
    (row,) = list(archive.index)
    assert row["pixel_storage"] == "bitstream" and row["frame_hashes"] is None
    report = archive.ingest([native, rle], workers=0, trust_bitstreams=True)
    assert (report.archived, report.versions, report.duplicates, report.conflicts) == (2, 2, 0, 0)
    changed = pydicom.dcmread(native)
    pixels = changed.pixel_array.copy()
    pixels[5, 5] ^= 1
    changed.PixelData = pixels.tobytes()
    changed.save_as(tmp_path / "changed.dcm")
    changed_report = archive.ingest([tmp_path / "changed.dcm"], workers=0, trust_bitstreams=True)
    assert changed_report.conflicts == 1
    (record,) = archive.quarantine.records()
    assert record["reason"].endswith("different pixels")
    assert record["archived_pixel_hash"] == instance_pixel_hash([expected])
    assert record["pixel_hash"] == instance_pixel_hash([frame_hash(pixels)])

    # One part: whichever comes first is archived undecoded and not committed yet, so
    # the other is compared with the part's own copy (which order depends on the paths).
    together = Archive.create(tmp_path / "b")
    report = together.ingest([rle, j2k], workers=0, trust_bitstreams=True)
    assert (report.archived, report.versions, report.duplicates, report.conflicts) == (2, 1, 0, 0)
    (row,) = list(together.index)
    first, second = version_rows(row)
    assert first["frame_hashes"] is None  # compared with the second by decoding it then
    assert second["pixel_hash"] == instance_pixel_hash([expected])
    assert together.verify().ok


def test_undecodable_and_non_dicom_files_are_quarantined_and_the_rest_goes_on(
    tmp_path: Path,
) -> None:
    samples = {p.name: p for p in pydicom_test_files()}
    broken = bytearray(samples["MR_small_jp2klossless.dcm"].read_bytes())
    start = broken.index(b"\xff\x4f\xff\x51")  # the J2K codestream's SOC + SIZ markers
    broken[start + 45 : start + 400] = b"\x00" * 355  # after SIZ (its size is checked first)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken_j2k.dcm").write_bytes(bytes(broken))
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    (tmp_path / "in" / "cut.dcm").write_bytes(samples["CT_small.dcm"].read_bytes()[:5000])
    (tmp_path / "in" / "good.dcm").write_bytes(samples["CT_small.dcm"].read_bytes())
    archive = Archive.create(tmp_path / "a")
    report = archive.ingest([tmp_path / "in"], workers=0)
    assert (report.inputs, report.archived, report.quarantined) == (4, 1, 3)
    reasons = {Path(r["path"]).name: r["reason"] for r in archive.quarantine.records()}
    assert "cannot be decoded" in reasons["broken_j2k.dcm"]
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "past the end" in reasons["cut.dcm"]
    assert archive.verify().ok


def test_the_same_bad_bytes_at_two_paths_are_kept_once_and_both_paths_recorded(
    tmp_path: Path,
) -> None:
    for folder in ("a", "b"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        (tmp_path / "in" / folder / "notes.dcm").write_text("not DICOM")
    archive = Archive.create(tmp_path / "archive")
    report = archive.ingest([tmp_path / "in"], workers=0)
    assert (report.inputs, report.quarantined) == (2, 2)
    (record,) = archive.quarantine.records()
    assert sorted(archive.quarantine.paths()) == sorted(
        str(tmp_path / "in" / f / "notes.dcm") for f in ("a", "b")
    )
    assert "not a DICOM file" in record["also"][0]["reason"]
    # Not DICOM: the one record (path, size, sha256) alone, no bytes.
    assert not list((tmp_path / "archive" / "quarantine").glob("*.dcm"))
    again = archive.ingest([tmp_path / "in"], workers=0)  # a new run meets them again
    assert again.quarantined == 2 and len(archive.quarantine.paths()) == 2


def test_an_undecodable_bitstream_is_kept_byte_for_byte_and_verify_reports_it(
    tmp_path: Path,
) -> None:
    """Trusted, original bitstreams are not decoded at ingest (`verify=True` re-checks only
    frames encoded with the archive codec): a damaged one is archived as it is (its
    file rebuilds exactly) and `verify` names it."""
    samples = {p.name: p for p in pydicom_test_files()}
    broken = bytearray(samples["MR_small_jp2klossless.dcm"].read_bytes())
    start = broken.index(b"\xff\x4f\xff\x51")
    broken[start + 45 : start + 400] = b"\x00" * 355  # after SIZ (its size is checked first)
    (tmp_path / "broken_j2k.dcm").write_bytes(bytes(broken))
    archive = Archive.create(tmp_path / "a")
    sources = [tmp_path / "broken_j2k.dcm", samples["CT_small.dcm"]]
    report = archive.ingest(sources, workers=0, verify=True, trust_bitstreams=True)
    assert (report.inputs, report.archived, report.quarantined) == (2, 2, 0)
    assert report.archived_undecoded == 1  # the JPEG 2000 one; CT_small's native pixels are hashed
    rows = {Path(r["source_path"]).name: r for r in archive.index}
    sop = rows["broken_j2k.dcm"]["SOPInstanceUID"]
    assert rows["broken_j2k.dcm"]["frame_hashes"] is None
    assert archive.export_bytes(sop) == bytes(broken)
    (mismatch,) = archive.verify().mismatches
    assert mismatch["SOPInstanceUID"] == sop and "cannot read back" in mismatch["problem"]
    reference = rows["broken_j2k.dcm"]["pixels"]
    where = f"{reference['array']}: frame {reference['first_frame']} cannot be decoded"
    with pytest.raises(CodecError, match=re.escape(where)):  # a reader is told which frame
        archive.frames(sop)


def test_a_shard_whose_index_lists_its_chunks_out_of_order_is_read_appended_and_trashed_right(
    tmp_path: Path,
) -> None:
    """Zarr lets a shard's index list its chunks in any order: here frame 1's chunk is
    stored first. Reads, an append (which rewrites the shard with the chunks it keeps) and
    emptying the trash (`drop_frames`) take each chunk from where its entry says; a read
    from the first entry's offset sliced frame 1's at a negative start, an empty chunk."""
    spec = ArraySpec(4, 4, 1, np.dtype("uint16"), None, frames_per_shard=4)
    chunks = [np.full(16, value, "<u2").tobytes() for value in (10, 11, 12, 13)]
    pixels = PixelStore(tmp_path / "pixels")
    pixels.create()
    array_file = pixels.new_array_file("s/a", json.loads(array_metadata(spec, {})), 4)

    def write_out_of_order() -> Path:
        """Frames 0..2 in a shard holding frame 1's chunk, then 0's, then 2's."""
        ((shard, _),) = pixels.shard_files("s/a", 0, chunks[:3])
        table = np.full((4, 2), 2**64 - 1, "<u8")  # the fourth entry absent
        table[:3] = [(32, 32), (0, 32), (64, 32)]
        index = table.tobytes() + google_crc32c.value(table.tobytes()).to_bytes(4, "little")
        write_atomic(shard, [chunks[1], chunks[0], chunks[2], index])
        return shard

    write_atomic(*array_file)
    write_out_of_order()
    assert pixels.read_chunks("s/a", 0, 3) == chunks[:3]
    for file, data in pixels.shard_files("s/a", 3, chunks[3:]):
        write_atomic(file, data)
    assert pixels.read_chunks("s/a", 0, 4) == chunks
    shard = write_out_of_order()
    assert pixels.drop_frames("s/a", 0, {0}) == 32
    assert pixels.read_chunks("s/a", 1, 3) == chunks[1:3]
    assert shard.stat().st_size == 2 * 32 + 4 * 16 + 4


def test_a_spec_learnt_after_the_layout_is_the_arrays_current_one(tmp_path: Path) -> None:
    """A process that learns an array's grid (layout) and only later its spec reads the
    spec from the array's zarr.json as it is then: another process may have made the
    array anew in between (its rows gone, another codec); a layout learnt before the
    array is made anew in this process follows the new array's spec."""
    spec = ArraySpec(4, 4, 1, np.dtype("uint16"), None, frames_per_shard=4)
    PixelStore(tmp_path / "pixels").create()
    maker = PixelStore(tmp_path / "pixels")
    write_atomic(*maker.new_array_file("s/a", json.loads(array_metadata(spec, {})), 2))
    pixels = PixelStore(tmp_path / "pixels")
    assert pixels.grid("s/a") == (4, 1)
    blosc = dataclasses.replace(spec, compressors=(Blosc("zstd", 5, "shuffle", 2),))
    write_atomic(*maker.new_array_file("s/a", json.loads(array_metadata(blosc, {})), 2))
    assert pixels.spec("s/a") == blosc
    tiled = ArraySpec(4, 4, 1, np.dtype("uint16"), None, frames_per_shard=2, tile=2)
    pixels.new_array_file("s/a", json.loads(array_metadata(tiled, {})), 1)
    assert pixels.grid("s/a") == (2, 4)


def test_verify_finds_a_damaged_shard(tmp_path: Path) -> None:
    source = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    archive = Archive.create(tmp_path / "a")
    archive.ingest([source], workers=0)
    (shard,) = shard_files(tmp_path / "a")
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = open_archive(tmp_path / "a").verify()
    assert not report.ok
    assert report.mismatches[0]["source_path"] == str(source)


def test_verify_finds_a_rows_file_that_is_damaged_or_gone(tmp_path: Path) -> None:
    """The rows files are what rebuild-index restores the index from: a bit flipped in one
    that still decompresses restored another Patient ID, and verify read none of them."""
    sources = [p for p in pydicom_test_files() if p.name in ("CT_small.dcm", "MR_small.dcm")]
    Archive.create(tmp_path / "a").ingest(sources, workers=0)
    rows_files = sorted((tmp_path / "a" / "headers").rglob("*.rows"))
    assert len(rows_files) == 2 and open_archive(tmp_path / "a").verify().ok
    _, rows = blobs.load_rows(rows_files[0].read_bytes())
    text = blobs._decompress(rows_files[0].read_bytes())
    patient = rows[0]["PatientID"].encode()
    changed = text.replace(b'"PatientID":"' + patient, b'"PatientID":"X' + patient[1:], 1)
    assert changed != text
    rows_files[0].write_bytes(blobs._compress(changed))  # decompresses, parses: a wrong row
    with pytest.raises(blobs.BlobError, match="SHA-256 does not match"):
        blobs.load_rows(rows_files[0].read_bytes())
    rows_files[1].unlink()
    report = open_archive(tmp_path / "a").verify()
    problems = sorted(m["problem"] for m in report.mismatches)
    assert len(problems) == 2, problems
    assert problems[0].startswith("damaged rows file: its SHA-256 does not match its rows")
    assert problems[1].startswith("no rows file beside its header pack headers/")
    assert report.mismatches[0]["source_path"] in (str(rows_files[0]), *map(str, sources))
    # A verify of a selection checks its instances only.
    uid = pydicom.dcmread(sources[0]).StudyInstanceUID
    assert open_archive(tmp_path / "a").verify(selection=Selection(studies=(uid,))).ok


def test_verify_finds_an_array_whose_frame_count_falls_short_of_its_rows(tmp_path: Path) -> None:
    # The frames still read (the shard is there), so verify passed; the next rebuild-index
    # then left the instance out, its frames past the array's count.
    source = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    Archive.create(tmp_path / "a").ingest([source], workers=0)
    (meta,) = [
        p for p in (tmp_path / "a" / "pixels").rglob("zarr.json") if '"shape"' in p.read_text()
    ]
    data = json.loads(meta.read_text())
    data["shape"][0] = 0
    meta.write_text(json.dumps(data))
    report = open_archive(tmp_path / "a").verify()
    assert not report.ok
    assert "zarr.json counts 0 frames, short of its last" in report.mismatches[0]["problem"]


def test_a_transcoded_instances_header_is_checked_by_its_own_hash(tmp_path: Path) -> None:
    # Its file has no original to compare with: a flipped bit in its header blob that still
    # decompressed was exported, and verified, as if it were the archived header.
    source = next(p for p in pydicom_test_files() if p.name == "MR_small_RLE.dcm")
    with Archive.create(tmp_path / "a", transcode=True) as archive:
        archive.ingest([source], workers=0)
        (row,) = list(archive.index)
    assert row["transcoded"] and row["header_sha256"]
    where = row["header"]
    pack = tmp_path / "a" / where["pack"]
    data = bytearray(pack.read_bytes())
    blob = bytes(data[where["offset"] : where["offset"] + where["length"]])
    original = blobs.HeaderBlob.from_bytes(blob)
    flipped = None
    for position in range(len(blob) - 1, 0, -1):  # a flip that still decodes, to other bytes
        for bit in range(8):
            candidate = bytearray(blob)
            candidate[position] ^= 1 << bit
            try:
                if blobs.HeaderBlob.from_bytes(bytes(candidate)) != original:
                    flipped = bytes(candidate)
                    break
            except blobs.BlobError:
                continue
        if flipped is not None:
            break
    assert flipped is not None
    data[where["offset"] : where["offset"] + where["length"]] = flipped
    pack.write_bytes(bytes(data))
    with open_archive(tmp_path / "a") as archive:
        report = archive.verify()
        assert not report.ok and "header blob differs" in report.mismatches[0]["problem"]
        with pytest.raises(ArchiveError, match="header blob differs"):
            archive.export_bytes(row["SOPInstanceUID"])


def test_one_writer_at_a_time_and_read_only_means_read_only(tmp_path: Path) -> None:
    archive = Archive.create(tmp_path / "a")
    with pytest.raises(ArchiveError, match="another process is writing"):
        open_archive(tmp_path / "a", readonly=False)
    with pytest.raises(ArchiveError, match="read-only"):
        open_archive(tmp_path / "a").ingest([], workers=0)
    archive.close()
    open_archive(tmp_path / "a", readonly=False).close()
    with pytest.raises(ArchiveError, match="not a pacs_engine archive"):
        open_archive(tmp_path)


def test_format_version_new_archives_2_v1_raised_on_writing_others_refused(
    tmp_path: Path,
) -> None:
    """A new archive is format version 2; a version-1 marker stays so for readers and is
    raised to 2 (other keys kept, file mode kept) when a writer opens it; a version this
    code cannot read (3, or not an int) is refused by every opener and left as it was."""
    marker = tmp_path / "a" / "archive.json"
    Archive.create(tmp_path / "a").close()
    config = json.loads(marker.read_bytes())
    assert (config["format"], config["version"]) == ("pacs_engine archive", 2)
    v1 = json.dumps({**config, "version": 1}, indent=2).encode()
    marker.write_bytes(v1)
    mode = marker.stat().st_mode
    with open_archive(tmp_path / "a") as archive:
        assert archive.config["version"] == 1 and archive.query() == []
    assert marker.read_bytes() == v1
    with open_archive(tmp_path / "a", readonly=False) as archive:
        assert archive.config == {**config, "version": 2}
    assert json.loads(marker.read_bytes()) == {**config, "version": 2}
    assert marker.stat().st_mode == mode
    for version in (3, 0, True, 2.0, "2", None):
        claimed = json.dumps({**config, "version": version}).encode()
        marker.write_bytes(claimed)
        for opener in (
            lambda: open_archive(tmp_path / "a"),
            lambda: open_archive(tmp_path / "a", readonly=False),
            lambda: Archive.open_or_create(tmp_path / "a"),
            lambda: rebuild_index(tmp_path / "a"),
        ):
            with pytest.raises(ArchiveError, match="unsupported archive format"):
                opener()
        assert marker.read_bytes() == claimed, version
    done = run_cli("info", str(tmp_path / "a"))
    assert done.returncode != 0 and "unsupported archive format" in done.stderr


def test_query_answers_from_the_index(tmp_path: Path) -> None:
    archive = Archive.create(tmp_path / "a")
    archive.ingest(
        [p for p in pydicom_test_files() if p.name in ("CT_small.dcm", "MR_small.dcm")], workers=0
    )
    (ct,) = archive.query(Modality="CT")
    assert ct["PatientName"] == "CompressedSamples^CT1"
    assert [r["Modality"] for r in archive.query(PatientName="Compressed*")] == ["CT", "MR"]
    assert [r["Modality"] for r in archive.query(PatientName="*^CT?")] == ["CT"]
    assert len(archive.query(level="series")) == 2
    assert json.loads(json.dumps(ct))  # rows are plain JSON


WRITER = """
import sys
from pacs_engine import open_archive
archive = open_archive(sys.argv[1], readonly=False)
for folder in sys.argv[2:]:
    archive.ingest([folder], workers=0)
"""

READER = """
import json, sys, time
from pacs_engine import open_archive
expected = json.loads(sys.argv[2])
archive = open_archive(sys.argv[1])
seen, polls, deadline = set(), 0, time.time() + 120
while len(seen) < len(expected) and time.time() < deadline:
    polls += 1
    for series in archive.index.all_series():
        uid = series["SeriesInstanceUID"]
        rows = archive.index.series(uid)
        if len(rows) != expected[uid]:
            print(f"PARTIAL {uid}: {len(rows)} of {expected[uid]} rows")
            sys.exit(1)
        for row in rows:  # every visible row's pixels and header are readable
            assert archive.frames(row["SOPInstanceUID"]).shape[0] == row["pixels"]["frames"]
        seen.add(uid)
    if polls == 1:  # the test starts the writer only now, so the two always overlap
        print("ready", flush=True)
print(json.dumps({"polls": polls, "seen": len(seen)}))
"""


def test_a_reader_never_sees_a_partial_series_while_another_process_adds(tmp_path: Path) -> None:
    corpus = require_corpus()
    folders = sorted({p.parent for p in (corpus / "dcm_qa_nih").rglob("*") if p.is_file()})
    assert len(folders) >= 2
    expected: dict[str, int] = {}
    from pacs_engine import scan

    for folder in folders:
        for path in folder.iterdir():
            uid = scan(path).SeriesInstanceUID
            expected[uid] = expected.get(uid, 0) + 1
    Archive.create(tmp_path / "a").close()
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(tmp_path / "a"), json.dumps(expected)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
    writer = subprocess.run(
        [sys.executable, "-c", WRITER, str(tmp_path / "a"), *map(str, folders)], check=True
    )
    out, _ = reader.communicate(timeout=180)
    assert writer.returncode == 0
    assert reader.returncode == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["seen"] == len(expected) and result["polls"] > 1


TRANSCODABLE = (
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
)


@pytest.mark.parametrize("name", [*TRANSCODABLE, "SC_rgb_jpeg_dcmtk.dcm"])
def test_transcoding_stores_lossless_frames_with_the_archive_codec(
    name: str, tmp_path: Path
) -> None:
    source = next(p for p in pydicom_test_files() if p.name == name)
    with Archive.create(tmp_path / "a", codec="jpegls", transcode=True) as archive:
        report = archive.ingest([source], workers=0)
        assert report.archived == 1
        (row,) = list(archive.index)
        codec = archive.pixels.spec(row["pixels"]["array"]).codec_name
        if name not in TRANSCODABLE:  # lossy: kept as it arrived, whatever is asked
            assert not row["transcoded"] and codec == "pacs_engine.dicom_jpeg"
            assert archive.export_bytes(row["SOPInstanceUID"]) == source.read_bytes()
            return
        assert row["transcoded"] and codec == "pacs_engine.jpegls"
        theirs = pydicom_pixels(source, row["color_conversion"])
        ours = archive.frames(row["SOPInstanceUID"])
        assert np.array_equal(ours.reshape(theirs.shape), theirs)
        exported = pydicom.dcmread(BytesIO(archive.export_bytes(row["SOPInstanceUID"])))
        original = pydicom.dcmread(source)
        assert exported.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert np.array_equal(exported.pixel_array, original.pixel_array)
        for keyword in ("PatientID", "SOPInstanceUID", "Rows", "Columns", "BitsStored"):
            assert exported.get(keyword) == original.get(keyword)
        assert archive.verify().ok


def test_frames_decoded_from_ybr_to_rgb_are_kept_in_an_array_that_says_so(
    tmp_path: Path,
) -> None:
    """A transcode decodes YBR_FULL RLE frames to RGB, as pixel_array does: they go to an
    array of their own (its key ends "native-rgb", not with the frames kept as they came),
    whose attributes name the conversion; the pixels are pydicom's, as RGB."""
    from pydicom.pixels import convert_color_space
    from pydicom.uid import RLELossless

    rgb_file = next(p for p in pydicom_test_files() if p.name == "SC_rgb_small_odd.dcm")
    ds = pydicom.dcmread(rgb_file)
    ybr = convert_color_space(ds.pixel_array, "RGB", "YBR_FULL")
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.compress(RLELossless, ybr)  # pydicom's own RLE encoder
    source = tmp_path / "ybr_rle.dcm"
    ds.save_as(source)
    with Archive.create(tmp_path / "a", codec="jpegls", transcode=True) as archive:
        assert archive.ingest([source], workers=0).archived == 1
        (row,) = list(archive.index)
        array = row["pixels"]["array"]
        assert array.endswith("_u1_b8_YBR_FULL_native-rgb"), array
        assert row["transcoded"] and row["color_conversion"] == "ybr_full_to_rgb"
        assert archive.pixels.open_array(array).attrs["color_conversion"] == "ybr_full_to_rgb"
        theirs = pydicom_pixels(source, row["color_conversion"])
        assert np.array_equal(archive.frames(row["SOPInstanceUID"]).reshape(theirs.shape), theirs)
        assert archive.verify().ok


def test_an_archive_is_a_source_for_a_derived_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-optimised copy made from an archive of record: every archived instance is an
    input (exported in memory once, planned from its row, checked against its sha256),
    pixels are the source's, a second run finds duplicates, and an archive is never its
    own source."""
    names = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm")
    names += ("SC_rgb_small_odd.dcm",)
    files = [p for p in pydicom_test_files() if p.name in names]
    resent = tmp_path / "resent" / "CT_small.dcm"  # a byte-identical copy: a duplicate
    resent.parent.mkdir()
    resent.write_bytes(next(p for p in files if p.name == "CT_small.dcm").read_bytes())
    with Archive.create(tmp_path / "record") as record:
        first = record.ingest([*files, resent], workers=0)
        # MR_small_RLE is a version of MR_small; the copy a duplicate of CT_small
        assert (first.archived, first.versions, first.duplicates) == (5, 1, 1)
        sources = {row["SOPInstanceUID"]: row for row in record.index}
        exported: list[str] = []
        export_bytes = storage.Archive.export_bytes

        def counted(archive: storage.Archive, sop: str) -> bytes:
            exported.append(sop)
            return export_bytes(archive, sop)

        # The source is opened as the storage archive (ingest's sources read, never ingest).
        monkeypatch.setattr(storage.Archive, "export_bytes", counted)
        with Archive.create(tmp_path / "train", codec="raw", transcode=True) as train:
            report = train.ingest([tmp_path / "record"], workers=0)
            assert (report.inputs, report.archived) == (4, 4)
            assert sorted(exported) == sorted(sources)  # the scan reads rows, not exports
            for row in train.index:
                sop = row["SOPInstanceUID"]
                assert row["source_path"] == f"{tmp_path / 'record'}::{sop}"
                assert np.array_equal(train.frames(sop), record.frames(sop))
                if not row["transcoded"]:
                    assert train.export_bytes(sop) == record.export_bytes(sop)
                assert row["source_sha256"] == sources[sop]["source_sha256"]
                assert row.get("source_duplicates", []) == sources[sop]["duplicates"]
            assert any(row.get("source_duplicates") for row in train.index)  # CT_small
            assert train.verify().ok
            again = train.ingest([tmp_path / "record"], workers=0)
            assert (again.archived, again.duplicates) == (0, 4)
            for row in train.index:  # a second copy adds its own duplicates only
                sop = row["SOPInstanceUID"]
                assert row.get("source_duplicates", []) == sources[sop]["duplicates"]
        with pytest.raises(ArchiveError, match="cannot be ingested into itself"):
            record.ingest([tmp_path / "record"], workers=0)
        (tmp_path / "link").symlink_to(tmp_path / "record")  # the same folder by another name
        with pytest.raises(ArchiveError, match="cannot be ingested into itself"):
            record.ingest([resent.parent, tmp_path / "link"], workers=0)
        (tmp_path / "mount").mkdir()  # a path that does not resolve to it, a bind mount
        bind_mount(monkeypatch, tmp_path / "record", tmp_path / "mount")
        with pytest.raises(ArchiveError, match="cannot be ingested into itself"):
            record.ingest([resent.parent, tmp_path / "mount"], workers=0)


def test_an_archive_inside_a_source_folder(tmp_path: Path) -> None:
    """The archive being written, inside the folder it ingests, is skipped (its own files
    are never inputs); another archive met in the walk gives its instances."""
    names = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_small_odd.dcm")
    files = [p for p in pydicom_test_files() if p.name in names]
    tree = tmp_path / "tree"
    tree.mkdir()
    for path in files[:2]:
        (tree / path.name).write_bytes(path.read_bytes())
    with Archive.create(tree / "older") as older:
        older.ingest(files[2:], workers=0)
    with Archive.create(tree / "target") as target:
        report = target.ingest([tree], workers=0)
        assert (report.inputs, report.archived, report.quarantined) == (4, 4, 0)
        paths = sorted(row["source_path"] for row in target.index)
        assert paths[:2] == sorted(str(tree / p.name) for p in files[:2])
        assert all(p.startswith(f"{tree / 'older'}::") for p in paths[2:])
        for path in files:
            sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert target.export_bytes(sop) == path.read_bytes()
        again = target.ingest([tree], workers=0)
        # The loose files are unchanged since the first run: skipped unread. An archive
        # folder is always read again (it changes inside): its instances are duplicates.
        assert (again.inputs, again.duplicates, again.unchanged) == (2, 2, 2)


def test_a_source_archives_quarantine_is_carried_into_the_copy(tmp_path: Path) -> None:
    """The files an archive quarantined are inputs of a copy made from it: tried again, and
    kept again with the same bytes and the source's record (path, reason) when they still
    cannot be archived; a record without bytes (an input never read) is carried too."""
    names = ("CT_small.dcm", "JPEG-lossy.dcm")
    files = [p for p in pydicom_test_files() if p.name in names]
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not a DICOM file")
    missing = tmp_path / "gone"
    with Archive.create(tmp_path / "record") as record:
        # Asked to keep files that are not DICOM whole, so that a copy can try them again.
        first = record.ingest([*files, not_dicom, missing], workers=0, keep_non_dicom=True)
        assert (first.archived, first.quarantined) == (1, 3)
        kept = {r["path"]: r for r in record.quarantine.records()}
    with Archive.create(tmp_path / "copy", codec="lz4", transcode=True) as copy:
        report = copy.ingest([tmp_path / "record"], workers=0, keep_non_dicom=True)
        assert (report.inputs, report.archived, report.quarantined) == (4, 1, 3)
        carried = {r["source_record"]["path"]: r for r in copy.quarantine.records()}
        assert set(carried) == set(kept) == {*map(str, files[1:]), str(not_dicom), str(missing)}
        for path, entry in carried.items():
            source = kept[path]
            assert entry["path"] == f"{tmp_path / 'record'}::quarantine/{source['sha256']}"
            assert entry["source_record"]["reason"] == source["reason"]
            source_bytes = tmp_path / "record" / "quarantine" / f"{source['sha256']}.dcm"
            if path == str(missing):  # never read: no bytes, its reason carried in the new one
                assert not source_bytes.exists()
                assert "kept no bytes" in entry["reason"] and source["reason"] in entry["reason"]
                continue
            assert entry["sha256"] == source["sha256"]  # the same bytes, kept again
            copied = tmp_path / "copy" / "quarantine" / f"{entry['sha256']}.dcm"
            assert copied.read_bytes() == source_bytes.read_bytes()
        again = copy.ingest([tmp_path / "record"], workers=0)
        assert (again.inputs, again.duplicates, again.quarantined) == (4, 1, 3)
        assert len(copy.quarantine.records()) == 3  # the same records, not new ones


def test_a_copy_keeps_the_sources_choice_and_survives_damaged_records(tmp_path: Path) -> None:
    """A file the source refused as a conflict with an instance it holds stays refused in
    the copy (whichever is planned first), with the source's record; a damaged quarantine
    record does not stop the copy; a member name is never a path."""
    from pacs_engine.ingest.inputs import InputError, InputRef, read_input

    (ct,) = [p for p in pydicom_test_files() if p.name == "CT_small.dcm"]
    resend = pydicom.dcmread(ct)
    pixels = resend.pixel_array.copy()
    pixels[0, 0] += 1  # same SOP Instance UID, other pixels: a conflict
    resend.PixelData = pixels.tobytes()
    resend.save_as(tmp_path / "resend.dcm")
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not a DICOM file")
    with Archive.create(tmp_path / "record") as record:
        record.ingest([ct], workers=0)
        second = record.ingest([tmp_path / "resend.dcm", not_dicom], workers=0, keep_non_dicom=True)
        assert (second.conflicts, second.quarantined) == (1, 1)
        (sop,) = [row["SOPInstanceUID"] for row in record.index]
        original = record.export_bytes(sop)
        by_path = {r["path"]: r for r in record.quarantine.records()}
    damaged = tmp_path / "record" / "quarantine" / f"{by_path[str(not_dicom)]['sha256']}.json"
    damaged.write_text("{")
    with Archive.create(tmp_path / "copy") as copy:
        report = copy.ingest([tmp_path / "record"], workers=0, keep_non_dicom=True)
        assert (report.inputs, report.archived, report.quarantined) == (3, 1, 2)
        assert copy.export_bytes(sop) == original  # the source's instance, not the resend
        carried = {r["sha256"]: r for r in copy.quarantine.records()}
        conflict = carried[by_path[str(tmp_path / "resend.dcm")]["sha256"]]
        assert conflict["reason"].startswith("refused by the source archive, as before: conflict")
        assert conflict["source_record"]["path"] == str(tmp_path / "resend.dcm")
        unreadable = carried[by_path[str(not_dicom)]["sha256"]]
        assert "source_record" not in unreadable  # its record was damaged; its bytes were not
        assert (tmp_path / "copy" / "quarantine" / f"{unreadable['sha256']}.dcm").read_bytes() == (
            not_dicom.read_bytes()
        )
    with pytest.raises(InputError, match="not the name of a quarantined file"):
        read_input(InputRef(str(tmp_path / "record"), "quarantine/../../notes"))


def test_a_damaged_instance_of_a_source_archive_is_quarantined(tmp_path: Path) -> None:
    files = [p for p in pydicom_test_files() if p.name in ("CT_small.dcm", "MR_small.dcm")]
    with Archive.create(tmp_path / "record") as record:
        record.ingest(files, workers=0)
        ct = next(r for r in record.index if r["Modality"] == "CT")
    pack = tmp_path / "record" / ct["header"]["pack"]
    pack.write_bytes(b"\0" * pack.stat().st_size)
    with Archive.create(tmp_path / "train", codec="lz4", transcode=True) as train:
        report = train.ingest([tmp_path / "record"], workers=0)
        assert (report.inputs, report.archived, report.quarantined) == (2, 1, 1)
        (record_entry,) = train.quarantine.records()
        assert record_entry["path"] == f"{tmp_path / 'record'}::{ct['SOPInstanceUID']}"
        assert "cannot export the instance" in record_entry["reason"]


def test_the_archive_users_open_is_the_storage_archive_with_ingest(tmp_path: Path) -> None:
    """pacs_engine.Archive (from create, open_or_create, open_archive) is the storage
    archive's subclass that ingests; the storage layer's own class has no ingest (it
    imports nothing of ingest/)."""
    import pacs_engine.ingest

    source = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    with Archive.create(tmp_path / "a") as created:
        assert type(created) is Archive and isinstance(created, storage.Archive)
        assert created.ingest([source], workers=0).archived == 1
    with Archive.open_or_create(tmp_path / "a") as reopened:
        assert type(reopened) is Archive
        assert reopened.ingest([source], workers=0).unchanged == 1  # read by the first run
    with open_archive(tmp_path / "a") as opened:
        assert type(opened) is Archive
        with pytest.raises(ArchiveError, match="read-only"):
            opened.ingest([source], workers=0)
    with storage.open_archive(tmp_path / "a") as plain:
        assert type(plain) is storage.Archive and not hasattr(plain, "ingest")
        assert [row["SOPInstanceUID"] for row in plain.query("instance")] == [
            pydicom.dcmread(source).SOPInstanceUID
        ]
    assert (pacs_engine.ingest.Archive, pacs_engine.ingest.open_archive) == (
        Archive,
        open_archive,
    )
