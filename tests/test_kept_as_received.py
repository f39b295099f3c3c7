"""Files kept rather than refused, through the CLI: 1-bit segmentations in deflate and RLE,
retired JPEG syntaxes; decoded where a decoder exists (pixels equal to a reference decode),
flagged where none does, and exported byte for byte either way."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from conftest import require_corpus, run_cli
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder, pixel_array, unpack_bits
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

from pacs_engine import Archive, cli, open_archive
from pacs_engine.codecs import CodecError

#: The flag of an instance archived without a decoder for its frames.
FLAG = "kept as received, not verified"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ingest(source: Path, archive: Path) -> dict[str, Any]:
    """`pacs-engine ingest SOURCE --archive ARCHIVE --json`: its report (must succeed)."""
    done = run_cli("ingest", str(source), "--archive", str(archive), "--workers", "0", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def preflight(source: Path) -> dict[str, dict[str, Any]]:
    """`scan --preflight --json`: the prediction of every input, by file name."""
    done = run_cli("scan", "--preflight", "--json", str(source))
    assert done.returncode == 0, done.stderr
    return {Path(p["key"]).name: p for p in map(json.loads, done.stdout.splitlines())}


def exported(archive: Path, out: Path) -> dict[str, str]:
    """`pacs-engine export ARCHIVE OUT`: the sha256 of every file written, by SOP UID."""
    done = run_cli("export", str(archive), str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    return {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: sha256(p)
        for p in out.rglob("*")
        if p.is_file()
    }


def check_kept(source: Path, tmp_path: Path) -> dict[str, Any]:
    """Ingest `source`, a folder: the preflight predicted it, every file is archived and
    exported byte for byte, `verify` is clean. Returns the report."""
    predicted = preflight(source)
    report = ingest(source, tmp_path / "a")
    files = sorted(p for p in source.iterdir())
    assert report["archived"] == len(files) and report["balanced"], report
    assert all(predicted[f.name]["outcome"] == "archived" for f in files), predicted
    by_sop = exported(tmp_path / "a", tmp_path / "out")
    for f in files:
        sop = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        assert by_sop[sop] == sha256(f), f.name
    done = run_cli("verify", str(tmp_path / "a"))
    assert done.returncode == 0, done.stdout + done.stderr
    return report | {"predicted": predicted}


def liver_segments() -> pydicom.Dataset:
    """The corpus's 1-bit segmentation in native encoding (3 frames, not byte aligned)."""
    return pydicom.dcmread(require_corpus() / "pydicom-data" / "liver_nonbyte_aligned.dcm")


def test_a_one_bit_deflated_segmentation_is_decoded_and_kept(tmp_path: Path) -> None:
    """The corpus's liver_deflate.dcm (Deflated Image Frame Compression, Bits Allocated 1)
    was quarantined; pydicom 3.0 cannot decode it, so the reference is zlib and pydicom's
    unpack_bits, frame by frame."""
    original = require_corpus() / "pydicom-data" / "liver_deflate.dcm"
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(original, source)
    report = check_kept(source, tmp_path)
    assert report["predicted"][original.name]["decoded"] and report["not_verified"] == {}

    ds = pydicom.dcmread(original)
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    pixels = ds.Rows * ds.Columns
    reference = np.stack(
        [
            unpack_bits(zlib.decompress(f, -zlib.MAX_WBITS))[:pixels].reshape(ds.Rows, ds.Columns)
            for f in frames
        ]
    )
    assert reference.any() and (reference <= 1).all()  # a real mask, not all zeros
    with open_archive(tmp_path / "a") as archive:
        row = archive.index.get(ds.SOPInstanceUID)
        assert row["pixel_storage"] == "bitstream" and "not_verified" not in row
        assert np.array_equal(archive.frames(ds.SOPInstanceUID), reference)


def test_a_one_bit_segmentation_in_deflated_explicit_vr_is_archived(tmp_path: Path) -> None:
    """Synthetic: the corpus's native 1-bit segmentation saved as Deflated Explicit VR Little
    Endian by pydicom (the corpus has no such file); its frames are pydicom's."""
    ds = liver_segments()
    source = tmp_path / "src"
    source.mkdir()
    ds.save_as(source / "liver_dfl.dcm", implicit_vr=False, little_endian=True)
    ds = pydicom.dcmread(source / "liver_dfl.dcm")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(source / "liver_dfl.dcm", enforce_file_format=True)
    assert pydicom.dcmread(source / "liver_dfl.dcm").file_meta.TransferSyntaxUID.is_deflated
    check_kept(source, tmp_path)
    with open_archive(tmp_path / "a") as archive:
        decoded = archive.frames(ds.SOPInstanceUID)
    assert np.array_equal(decoded, pydicom.dcmread(source / "liver_dfl.dcm").pixel_array)


def _rle_one_bit(frames: np.ndarray) -> list[bytes]:
    """Each 1-bit frame RLE encoded as PS3.5 G.2 says: one segment, a byte per pixel."""
    encoder = RLELosslessEncoder
    rows, columns = frames.shape[1:]
    options = {
        "rows": rows,
        "columns": columns,
        "samples_per_pixel": 1,
        "bits_allocated": 8,
        "bits_stored": 8,
        "pixel_representation": 0,
        "photometric_interpretation": "MONOCHROME2",
        "number_of_frames": 1,
    }
    return [encoder.encode(f.astype(np.uint8), **options) for f in frames]


def write_one_bit_rle(folder: Path) -> pydicom.Dataset:
    """folder/liver_rle.dcm: the corpus's 1-bit liver mask RLE encoded."""
    ds = liver_segments()
    ds.PixelData = encapsulate(_rle_one_bit(ds.pixel_array))
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "liver_rle.dcm", enforce_file_format=True)
    return ds


def require_pylibjpeg_rle() -> None:
    """Fail, saying why, unless pydicom decodes RLE with pylibjpeg-rle (a dependency)."""
    plugins = get_decoder(RLELossless).available_plugins
    assert "pylibjpeg" in plugins, "pylibjpeg-rle is a dependency: pip install pylibjpeg-rle"


def without_pylibjpeg_rle(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom's RLE decoder as without pylibjpeg-rle: its own plugin only (1-bit RLE then
    has no decoder), until the test ends."""
    decoder = get_decoder(RLELossless)
    without = {k: v for k, v in decoder._available.items() if k != "pylibjpeg"}
    monkeypatch.setattr(decoder, "_available", without)


def test_a_one_bit_rle_segmentation_is_decoded_by_pylibjpeg_rle_and_kept(tmp_path: Path) -> None:
    """Synthetic (the corpus has none): the corpus's 1-bit liver mask RLE encoded. pydicom's
    own RLE decoder refuses 1 bit; its pylibjpeg-rle plugin decodes it to the pixels pydicom
    gives for the native file (bits unpacked), which the archive keeps and verifies."""
    require_pylibjpeg_rle()
    source = tmp_path / "src"
    ds = write_one_bit_rle(source)
    with pytest.raises(RuntimeError, match="1 bits allocated"):  # pydicom's own decoder
        _ = pixel_array(source / "liver_rle.dcm", decoding_plugin="pydicom")
    native = liver_segments()
    reference = unpack_bits(native.PixelData)[: native.pixel_array.size]
    reference = reference.reshape(native.pixel_array.shape)
    assert np.array_equal(native.pixel_array, reference) and reference.any()

    report = check_kept(source, tmp_path)
    assert report["predicted"]["liver_rle.dcm"]["decoded"] and report["not_verified"] == {}
    with open_archive(tmp_path / "a") as archive:
        row = archive.index.get(ds.SOPInstanceUID)
        assert "not_verified" not in row and row["pixel_hash"] is not None
        assert np.array_equal(archive.frames(ds.SOPInstanceUID), reference)


def test_a_one_bit_rle_segmentation_is_kept_flagged_without_pylibjpeg_rle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without pylibjpeg-rle (pydicom's RLE decoder keeps only its own plugin) no decoder
    reads 1-bit RLE: the file is archived as received and flagged in its row, the report,
    the preflight and the CLI's summary; `verify` checks its bytes; the export is exact;
    reading its pixels says why not, and gives them once pylibjpeg-rle is there."""
    without_pylibjpeg_rle(monkeypatch)  # in this process: the CLI runs here (cli.main)
    source = tmp_path / "src"
    ds = write_one_bit_rle(source)
    with pytest.raises(RuntimeError, match="1 bits allocated"):  # why it is flagged
        _ = pydicom.dcmread(source / "liver_rle.dcm").pixel_array
    assert cli.main(["scan", "--preflight", "--json", str(source)]) == 0
    (predicted,) = map(json.loads, capsys.readouterr().out.splitlines())
    assert "decoded" not in predicted and predicted["outcome"] == "archived"

    archive = Archive.create(tmp_path / "a")
    report = archive.ingest([source], workers=0)
    (reason,) = report.not_verified
    assert report.archived == 1 and FLAG in reason and "RLE Lossless" in reason
    assert "pylibjpeg-rle is not installed" in reason
    assert predicted["not_verified"] == reason
    assert (
        cli.main(["ingest", str(source), "--archive", str(tmp_path / "b"), "--workers", "0"]) == 0
    )
    assert f"archived         1  {reason}" in capsys.readouterr().out
    row = archive.index.get(ds.SOPInstanceUID)
    assert row["not_verified"] == reason and row["pixel_hash"] is None
    assert archive.export_bytes(ds.SOPInstanceUID) == (source / "liver_rle.dcm").read_bytes()
    assert archive.verify().ok
    with pytest.raises(CodecError, match="pylibjpeg-rle is not installed"):
        archive.frames(ds.SOPInstanceUID)
    # pylibjpeg-rle installed later: the flagged instance's frames read (the row unchanged).
    monkeypatch.undo()
    require_pylibjpeg_rle()
    assert np.array_equal(archive.frames(ds.SOPInstanceUID), liver_segments().pixel_array)
    assert archive.verify().ok


def test_a_one_bit_rle_frame_holding_other_bytes_than_0_and_1_is_quarantined(
    tmp_path: Path,
) -> None:
    """pylibjpeg-rle gives a 1-bit segment's bytes as they are (255 stays 255): no 1-bit
    pixel has that value, so the file is quarantined, saying why, rather than archived."""
    require_pylibjpeg_rle()
    source = tmp_path / "src"
    ds = liver_segments()
    frames = _rle_one_bit(ds.pixel_array * np.uint8(255))
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    source.mkdir()
    ds.save_as(source / "liver_255.dcm", enforce_file_format=True)
    assert pixel_array(source / "liver_255.dcm").max() == 255  # what pydicom gives

    report = ingest(source, tmp_path / "a")
    assert (report["archived"], report["quarantined"]) == (0, 1) and report["balanced"]
    with open_archive(tmp_path / "a") as archive:
        (record,) = archive.quarantine.records()
    assert "a 1-bit RLE frame holds bytes other than 0 and 1" in record["reason"], record


def _dcmtk_retired(tmp_path: Path) -> Path:
    """Corpus images JPEG-encoded by DCMTK's dcmcjpeg with the retired processes it writes:
    spectral selection (1.2.840.10008.1.2.4.53) and full progression (.55)."""
    corpus = require_corpus() / "pydicom" / "test_files"
    source = tmp_path / "src"
    source.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        for option, syntax in (("+es", "53"), ("+ep", "55")):
            out = source / f"{name[:-4]}_{syntax}.dcm"
            subprocess.run(["dcmcjpeg", option, str(corpus / name), str(out)], check=True)
            ds = pydicom.dcmread(out, stop_before_pixels=True)
            assert ds.file_meta.TransferSyntaxUID == f"1.2.840.10008.1.2.4.{syntax}"
            # Another SOP Instance UID each: the tool keeps the source's.
            ds = pydicom.dcmread(out)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = (
                f"{ds.SOPInstanceUID}.{syntax}"
            )
            ds.save_as(out, enforce_file_format=True)
    return source


def test_retired_jpeg_syntaxes_are_kept_and_decoded(tmp_path: Path) -> None:
    """Real encoder (DCMTK): the retired spectral-selection and progressive JPEG files are
    archived as their bitstreams and decoded. pydicom has no decoder by their UID; the
    reference is its decoder for extended JPEG on the same stream, and DCMTK's dcmdjpeg
    (another IDCT: within one grey level)."""
    source = _dcmtk_retired(tmp_path)
    report = check_kept(source, tmp_path)
    assert report["not_verified"] == {} and report["archived_undecoded"] == 0
    assert all(p["decoded"] and p["storage"] == "bitstream" for p in report["predicted"].values())
    with open_archive(tmp_path / "a") as archive:
        for path in sorted(source.iterdir()):
            ds = pydicom.dcmread(path)
            with pytest.raises(NotImplementedError):  # pydicom has no decoder for its UID
                _ = ds.pixel_array
            (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
            reference, _ = get_decoder("1.2.840.10008.1.2.4.51").as_array(
                encapsulate([frame]),
                rows=ds.Rows,
                columns=ds.Columns,
                samples_per_pixel=1,
                bits_allocated=ds.BitsAllocated,
                bits_stored=ds.BitsStored,
                pixel_representation=ds.PixelRepresentation,
                photometric_interpretation=ds.PhotometricInterpretation,
                number_of_frames=1,
            )
            decoded = archive.frames(ds.SOPInstanceUID)[0]
            assert np.array_equal(decoded, reference), path.name
            plain = tmp_path / f"plain_{path.name}"
            subprocess.run(["dcmdjpeg", str(path), str(plain)], check=True)
            dcmtk = pydicom.dcmread(plain).pixel_array.astype(np.int32)
            assert np.abs(decoded.astype(np.int32) - dcmtk).max() <= 1, path.name


def test_files_that_are_not_dicom_are_listed_and_kept_as_path_size_and_hash(
    tmp_path: Path,
) -> None:
    """The corpus's own text files among its DICOM: listed by the preflight and the ingest
    report, quarantined as "not a DICOM file" (the invariant holds), kept as a record of
    path, size and sha256 without their bytes; whole with --keep-non-dicom."""
    corpus = require_corpus()
    source = tmp_path / "src"
    source.mkdir()
    texts = [corpus / "LICENSES.md", corpus / "MANIFEST.tsv"]
    for path in [*texts, corpus / "pydicom" / "test_files" / "CT_small.dcm"]:
        shutil.copy(path, source)
    names = sorted(str(source / p.name) for p in texts)

    predicted = preflight(source)
    assert sorted(str(source / n) for n, p in predicted.items() if p.get("not_dicom")) == names

    report = ingest(source, tmp_path / "a")
    assert report["balanced"] and (report["archived"], report["quarantined"]) == (1, 2)
    assert report["not_dicom"] == names
    assert report["quarantine_reasons"] == {"not a DICOM file": 2}
    quarantine = tmp_path / "a" / "quarantine"
    records = {
        r["path"]: r for r in map(json.loads, map(Path.read_bytes, quarantine.glob("*.json")))
    }
    for name in names:
        record = records[name]
        assert record["reason"].startswith("not a DICOM file")
        assert (record["size"], record["sha256"]) == (Path(name).stat().st_size, sha256(Path(name)))
        assert record["kept_bytes"] == 0
    assert not [p for p in quarantine.iterdir() if p.suffix in (".dcm", ".head")]
    text = run_cli("ingest", str(source), "--archive", str(tmp_path / "b"), "--workers", "0")
    assert f"not DICOM (kept as path, size and sha256): {', '.join(names)}" in text.stdout

    done = run_cli(
        "ingest",
        str(source),
        "--archive",
        str(tmp_path / "c"),
        "--workers",
        "0",
        "--keep-non-dicom",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    for name in names:
        assert (tmp_path / "c" / "quarantine" / f"{sha256(Path(name))}.dcm").read_bytes() == (
            Path(name).read_bytes()
        )
