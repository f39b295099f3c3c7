"""Hostile pixel data: cut files, bitstreams that declare huge sizes, damaged streams, cut shards.

Issue 11 items 3, 4, 7 and 13. Inputs are built here from real corpus files; what the
archive keeps is compared with pydicom (or, for deflate, which pydicom cannot decode,
with zlib on the damaged frame).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from io import BytesIO
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from conftest import CORPUS, ROOT, require_corpus, run_cli
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array, unpack_bits
from pydicom.uid import generate_uid
from test_kept_as_received import require_pylibjpeg_rle

from pacs_engine import Archive
from pacs_engine.archive import ExportError
from pacs_engine.archive.prepare import PrepareError, prepare
from pacs_engine.codecs import CodecError, DicomHtj2kCodec
from pacs_engine.codecs._markers import j2k_header, jpeg_frame_header
from pacs_engine.errors import ScanError
from pacs_engine.scanning import scan

CUT_FILES = {
    "native CT": ["dcm_qa_ct/Philips/S21570/S2010/I10", "pydicom/test_files/CT_small.dcm"],
    "J2K": ["dcm_qa_ts/9.dcm", "pydicom-data/MR2_J2KR.dcm"],
    "JPEG-LS": ["dcm_qa_ts/7.dcm", "pydicom/test_files/MR_small_jpeg_ls_lossless.dcm"],
    "RLE": ["pydicom/test_files/SC_rgb_rle.dcm", "pydicom/test_files/rtdose_rle.dcm"],
    "JPEG baseline": [
        "pylibjpeg-data/JPEGBaseline/JPEGBaseline_1s_1f_u_08_08.dcm",
        "pydicom/test_files/SC_rgb_dcmtk_+eb+cy+np.dcm",
    ],
}
DAMAGED_FILES = {
    "JPEG baseline": CUT_FILES["JPEG baseline"],
    "JPEG lossless": ["pydicom/test_files/SC_rgb_jpeg_gdcm.dcm", "dcm_qa_ts/5.dcm"],
    "JPEG-LS": [*CUT_FILES["JPEG-LS"], "pylibjpeg-data/JPEGLS/CT1_JLSN.dcm"],
    "J2K": ["dcm_qa_ts/9.dcm"],
    "HTJ2K": ["DICOMHTJ2K/htj2k/MR4_JPH", "pydicom-data/HTJ2KLossless_08_RGB.dcm"],
    "RLE": CUT_FILES["RLE"],
    "deflate": ["pydicom-data/liver_deflate.dcm"],
}


def cuts(data: bytes) -> list[int]:
    """Lengths to cut a file to: every byte from 8 before its pixel element to 16 into it,
    and a few inside the pixel value (for encapsulated data: around the fragments too)."""
    pixel = scan(data).pixel
    start, end = pixel.element_offset, pixel.value_end
    inside = {pixel.value_offset + 1, (pixel.value_offset + end) // 2, end - 1}
    if pixel.encapsulated:
        first = int(pixel.fragment_offsets[0])
        inside |= {first - 8, first - 4, first, first + 3, end - 8, end - 4}
    return sorted({*range(start - 8, start + 17), *inside} - {len(data)})


def refusal(data: bytes) -> str | None:
    """Why the scan or prepare refuses the bytes (None: they would be archived)."""
    try:
        prepare("cut.dcm", data, scan(data))
    except (ScanError, PrepareError) as error:
        return str(error)
    return None


@pytest.mark.parametrize("kind", list(CUT_FILES))
def test_a_file_cut_near_or_inside_its_pixel_data_is_quarantined_and_the_whole_one_archived(
    kind: str, tmp_path: Path
) -> None:
    require_corpus()
    for name in CUT_FILES[kind]:
        data = (CORPUS / name).read_bytes()
        lengths = cuts(data)
        folder = tmp_path / Path(name).name / "cuts"
        folder.mkdir(parents=True)
        for length in lengths:
            cut = data[:length]
            assert refusal(cut) is not None, f"{name} cut to {length} bytes is accepted"
            (folder / f"{length}.dcm").write_bytes(cut)
        archive = Archive.create(tmp_path / Path(name).name / "archive")
        report = archive.ingest([folder], workers=0)
        assert (report.inputs, report.archived, report.quarantined) == (
            len(lengths),
            0,
            len(lengths),
        )
        cut_at_element = archive.quarantine.records()
        assert any("no pixel data" in r["reason"] for r in cut_at_element)
        # The intact file arrives after its cut copies: it is archived, with pydicom's pixels.
        (tmp_path / "whole.dcm").write_bytes(data)
        whole = archive.ingest([tmp_path / "whole.dcm"], workers=0)
        assert (whole.archived, whole.conflicts, whole.quarantined) == (1, 0, 0)
        ds = pydicom.dcmread(BytesIO(data))
        frames = archive.frames(ds.SOPInstanceUID)
        np.testing.assert_array_equal(frames.reshape(ds.pixel_array.shape), ds.pixel_array)
        assert archive.export_bytes(ds.SOPInstanceUID) == data


def test_a_file_cut_inside_any_element_header_is_refused_by_the_scan() -> None:
    """The scanner took up to 7 trailing bytes for padding: a cut inside the next element's
    header (here one without pixel data). Zero padding is still padding."""
    require_corpus()
    data = (CORPUS / "pydicom/test_files/rtplan.dcm").read_bytes()
    header = b"\x0a\x30\xb0\x00" + b"\x00\x00\x00\x00"  # an implicit VR element header
    assert scan(data).pixel is None
    for k in range(1, 8):
        with pytest.raises(ScanError, match="ends inside an element header"):
            scan(data + header[:k])
        assert scan(data + b"\x00" * k).pixel is None


def _patch(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


def _huge_bitstreams(folder: Path) -> dict[str, str]:
    """Files whose bitstreams declare 65535 x 65535 pixels; {file name: what must be named}."""
    expected = {}
    for name, marker, rows_at in [
        ("dcm_qa_ts/9.dcm", b"\xff\x4f\xff\x51", 12),  # J2K SIZ: Ysiz, then Xsiz at 8
        ("DICOMHTJ2K/htj2k/MR4_JPH", b"\xff\x4f\xff\x51", 12),
        ("pylibjpeg-data/JPEGBaseline/JPEGBaseline_1s_1f_u_08_08.dcm", b"\xff\xc0", 5),
        ("dcm_qa_ts/5.dcm", b"\xff\xc3", 5),  # JPEG lossless SOF3
        ("dcm_qa_ts/7.dcm", b"\xff\xf7", 5),  # JPEG-LS SOF55
    ]:
        data = (CORPUS / name).read_bytes()
        fragment = int(scan(data).pixel.fragment_offsets[0])
        at = data.index(marker, fragment)
        if marker[1] == 0x4F:
            huge = b"\x00\x00\xff\xff"
            data = _patch(_patch(data, at + 8, huge), at + rows_at, huge)
            header = j2k_header(data[fragment:])
        else:
            data = _patch(_patch(data, at + rows_at, b"\xff\xff"), at + rows_at + 2, b"\xff\xff")
            header = jpeg_frame_header(data[fragment:])
        assert (header.rows, header.columns) == (65535, 65535)
        ds = pydicom.dcmread(BytesIO(data))
        out = f"{Path(name).stem}.dcm"
        (folder / out).write_bytes(data)
        expected[out] = (
            f"declares 65535 x 65535 pixels x {header.components} samples, "
            f"the data set {ds.Rows} x {ds.Columns}"
        )
    # The data set itself says 65535 x 65535: RLE declares no size, the limit applies.
    for name in ("pydicom/test_files/SC_rgb_rle.dcm", "dcm_qa_ts/9.dcm"):
        ds = pydicom.dcmread(CORPUS / name)
        ds.Rows = ds.Columns = 65535
        ds.SOPInstanceUID = generate_uid()
        out = f"{Path(name).stem}_65535.dcm"
        ds.save_as(folder / out)
        expected[out] = "max_frame_bytes"
    return expected


def test_bitstreams_declaring_huge_sizes_are_quarantined_under_a_memory_cap(
    tmp_path: Path,
) -> None:
    """Under a 2 GiB memory cap, each crafted file is quarantined with a reason naming the
    sizes (or the limit), and the run completes; the decoders allocated nothing big.

    The cap is RLIMIT_DATA (heap and private mappings, where numpy and the decoders
    allocate), not RLIMIT_AS: the index maps its LMDB file with a large address range."""
    require_corpus()
    folder = tmp_path / "in"
    folder.mkdir()
    expected = _huge_bitstreams(folder)
    script = f"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_DATA, (2 << 30, 2 << 30))
from pacs_engine import Archive
archive = Archive.create({str(tmp_path / "a")!r})
report = archive.ingest([{str(folder)!r}], workers=1)
reasons = {{r["path"].rsplit("/", 1)[-1]: r["reason"] for r in archive.quarantine.records()}}
peak = max(resource.getrusage(w).ru_maxrss
           for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps({{"inputs": report.inputs, "quarantined": report.quarantined,
                  "archived": report.archived, "reasons": reasons, "peak_kib": peak}}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert (result["inputs"], result["quarantined"], result["archived"]) == (len(expected),) * 2 + (
        0,
    )
    for name, words in expected.items():
        assert words in result["reasons"][name], (name, result["reasons"][name])
    assert result["peak_kib"] < 1 << 20  # under 1 GiB in the main process and the worker


def test_max_frame_bytes_is_configurable(tmp_path: Path) -> None:
    require_corpus()
    source = CORPUS / "dcm_qa_ts/9.dcm"  # 384 x 384 16-bit J2K: 294912 bytes a frame
    small = Archive.create(tmp_path / "small")
    report = small.ingest([source], workers=0, max_frame_bytes=294911)
    assert report.quarantined == 1
    (record,) = small.quarantine.records()
    assert "294912 bytes, more than the limit of 294911" in record["reason"]
    assert Archive.create(tmp_path / "fits").ingest([source], max_frame_bytes=294912).archived == 1
    done = run_cli("ingest", str(source), "--archive", str(tmp_path / "cli"), "--json")
    assert json.loads(done.stdout)["archived"] == 1
    args = ("ingest", str(source), "--archive", str(tmp_path / "cli2"), "--max-frame-bytes", "1000")
    done = run_cli(*args, "--json")
    assert json.loads(done.stdout)["quarantined"] == 1, done.stderr


def _damaged(data: bytes) -> list[bytes]:
    """Copies of a file with frame 0 of its pixel data damaged: one byte flipped at seven
    places, or the frame cut short; each a new instance (its own SOP Instance UID)."""
    ds = pydicom.dcmread(BytesIO(data))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):  # some test files have none
        setattr(ds, keyword, ds.get(keyword) or generate_uid())
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
    first = frames[0]
    variants = []
    for k in range(1, 8):
        at = len(first) * k // 8
        variants.append(first[:at] + bytes([first[at] ^ 0x5A]) + first[at + 1 :])
    variants += [first[: len(first) // 2], first[: len(first) - 3]]
    out = []
    for frame in variants:
        ds.PixelData = encapsulate([frame, *frames[1:]])
        ds.SOPInstanceUID = generate_uid()
        buffer = BytesIO()
        # Explicit VR little endian, which pydicom cannot tell from the deflate frame syntax.
        ds.save_as(buffer, implicit_vr=False, little_endian=True, force_encoding=True)
        out.append(buffer.getvalue())
    return out


def _reference(data: bytes) -> np.ndarray | None:
    """What an independent decoder says the damaged file's pixels are (None: it refuses)."""
    ds = pydicom.dcmread(BytesIO(data))
    if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.8.1":  # pydicom cannot: zlib
        count = int(ds.get("NumberOfFrames", 1))
        try:
            frames = [zlib.decompress(f, -zlib.MAX_WBITS) for f in generate_frames(ds.PixelData)]
        except zlib.error:
            return None
        pixels = ds.Rows * ds.Columns
        if ds.BitsAllocated == 1:  # each frame's bits packed on its own, maybe a pad byte
            size = -(-pixels // 8)
            if any(not size <= len(f) <= size + 1 for f in frames):
                return None
            bits = [unpack_bits(f[:size])[:pixels] for f in frames]
            return np.stack(bits).reshape(count, ds.Rows, ds.Columns)
        dtype = np.dtype(f"<u{ds.BitsAllocated // 8}")
        if any(len(f) != pixels * dtype.itemsize for f in frames):
            return None
        return np.frombuffer(b"".join(frames), dtype).reshape(count, ds.Rows, ds.Columns)
    try:
        return ds.pixel_array
    except Exception:  # pydicom refuses it
        return None


@pytest.mark.parametrize("kind", list(DAMAGED_FILES))
def test_damaged_bitstreams_are_quarantined_or_archived_as_another_decoder_sees_them(
    kind: str, tmp_path: Path
) -> None:
    require_corpus()
    folder = tmp_path / "in"
    folder.mkdir()
    files = {}
    for name in DAMAGED_FILES[kind]:
        for i, data in enumerate(_damaged((CORPUS / name).read_bytes())):
            path = folder / f"{Path(name).stem}_{i}.dcm"
            path.write_bytes(data)
            files[path.name] = data
    archive = Archive.create(tmp_path / "a")
    report = archive.ingest([folder], workers=0)
    assert report.inputs == len(files) == report.archived + report.quarantined
    for row in archive.index:
        data = files[Path(row["source_path"]).name]
        reference = _reference(data)
        assert reference is not None, f"{row['source_path']}: archived, but no decoder agrees"
        frames = archive.frames(row["SOPInstanceUID"])
        np.testing.assert_array_equal(frames.reshape(reference.shape), reference)
        assert archive.export_bytes(row["SOPInstanceUID"]) == data
    assert archive.verify().ok
    assert report.quarantined > 0  # the damage was seen somewhere (the test can fail)


def test_htj2k_errors_openjph_only_prints_are_raised_and_verify_reports_them(
    tmp_path: Path,
) -> None:
    """The issue's reproduction: one byte XORed mid-stream of an HTJ2K MR. imagecodecs gives
    pixels (OpenJPH's error only goes to stderr); the codec raises, the ingest quarantines
    it, and trusted (undecoded) at ingest, verify names it."""
    require_corpus()
    data = (CORPUS / "DICOMHTJ2K/htj2k/MR4_JPH").read_bytes()
    ds = pydicom.dcmread(BytesIO(data))
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    at = len(frame) // 2
    damaged = frame[:at] + bytes([frame[at] ^ 0x5A]) + frame[at + 1 :]
    assert imagecodecs.htj2k_decode(damaged).shape == (512, 512)  # swallowed
    codec = DicomHtj2kCodec(
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=16,
        bits_stored=12,
    )
    with pytest.raises(CodecError, match="ojph error"):
        codec.decode_frame(damaged, (512, 512), np.dtype("u2"))
    ds.PixelData = encapsulate([damaged])
    ds.save_as(tmp_path / "damaged.dcm")
    checked = Archive.create(tmp_path / "checked")
    assert checked.ingest([tmp_path / "damaged.dcm"], workers=0).quarantined == 1
    trusted = Archive.create(tmp_path / "trusted")
    report = trusted.ingest([tmp_path / "damaged.dcm"], workers=0, trust_bitstreams=True)
    assert report.archived == 1
    (mismatch,) = trusted.verify().mismatches
    assert "ojph error" in mismatch["problem"]


def test_a_cut_or_damaged_shard_names_the_array_and_frame(tmp_path: Path) -> None:
    require_corpus()
    archive = Archive.create(tmp_path / "a")
    sources = [
        CORPUS / "dcm_qa_ct/Philips/S21570/S2010/I10",
        CORPUS / "dcm_qa_ts/7.dcm",
        CORPUS / "pydicom/test_files/SC_rgb_rle.dcm",
    ]
    assert archive.ingest(sources, workers=0).archived == 3
    for row in archive.index:
        array = row["pixels"]["array"]
        (shard,) = [p for p in (tmp_path / "a" / "pixels" / array / "c").rglob("*") if p.is_file()]
        whole = shard.read_bytes()
        for damage in (b"", whole[:10], whole[: len(whole) // 2], whole[:-1], whole[:-20]):
            shard.write_bytes(damage)
            with pytest.raises(ValueError, match=rf"{re.escape(array)}: frame 0: the shard"):
                archive.frames(row["SOPInstanceUID"])
            with pytest.raises(ExportError, match=rf"{re.escape(array)}: frame 0"):
                archive.export_bytes(row["SOPInstanceUID"])
            (mismatch,) = archive.verify().mismatches
            assert array in mismatch["problem"] and "MemoryError" not in mismatch["problem"]
        shard.write_bytes(whole)
    assert archive.verify().ok


def test_a_deflated_frame_cut_by_one_byte_is_refused() -> None:
    """A bounded inflate returns what it has without an error: the stream's end must be seen.

    The cut costs no pixel here (zlib has inflated them all before its last bytes), so only
    the missing end of the stream tells a cut frame from a whole one."""
    from pacs_engine.codecs.deflate import DicomDeflateCodec

    frame = np.arange(64 * 64, dtype="<u2").reshape(64, 64) % 4096
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = packer.compress(frame.tobytes()) + packer.flush()
    codec = DicomDeflateCodec(
        transfer_syntax_uid="1.2.840.10008.1.2.8.1",
        photometric_interpretation="MONOCHROME2",
        bits_allocated=16,
        bits_stored=12,
    )
    decoded = codec.decode_frame(stream, (64, 64), np.dtype("<u2"))
    assert np.array_equal(decoded, frame)
    for cut in (1, 2):
        with pytest.raises(CodecError, match="cut short"):
            codec.decode_frame(stream[:-cut], (64, 64), np.dtype("<u2"))


def test_a_stream_pylibjpeg_rle_panics_on_is_decoded_by_pydicoms_own_rle_decoder(
    tmp_path: Path,
) -> None:
    """pylibjpeg-rle (Rust) panics on some damaged RLE streams: pyo3's PanicException is a
    BaseException, which neither pydicom (to try its own decoder) nor the ingest catches.
    The RLE codec passes it on to pydicom's own decoder: the file is archived with the
    pixels that decoder gives, as it was before pylibjpeg-rle."""
    require_pylibjpeg_rle()
    data = (CORPUS / "pydicom/test_files/rtdose_rle.dcm").read_bytes()
    ds = pydicom.dcmread(BytesIO(data))
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    frames[0] = frames[0][:64] + bytes([frames[0][64] ^ 0x5A]) + frames[0][65:]
    ds.PixelData = encapsulate(frames)
    ds.SOPInstanceUID = generate_uid()
    folder = tmp_path / "in"
    folder.mkdir()
    ds.save_as(folder / "damaged.dcm", enforce_file_format=True)
    with pytest.raises(BaseException) as panic:
        pixel_array(folder / "damaged.dcm", decoding_plugin="pylibjpeg")
    assert type(panic.value).__name__ == "PanicException"
    reference = pixel_array(folder / "damaged.dcm", decoding_plugin="pydicom")

    archive = Archive.create(tmp_path / "a")
    report = archive.ingest([folder], workers=0)
    assert (report.archived, report.quarantined) == (1, 0)
    np.testing.assert_array_equal(archive.frames(ds.SOPInstanceUID), reference)
    assert archive.verify().ok


def _image(rows: int, columns: int, photometric: str, syntax: str) -> pydicom.Dataset:
    """A secondary capture of 8-bit samples, without its pixel data."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "HOSTILE-1", "OT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 3 if photometric != "MONOCHROME2" else 1
    ds.PhotometricInterpretation = photometric
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    return ds


@pytest.mark.parametrize("workers", [0, 2])
def test_files_a_parser_or_decoder_fails_on_are_quarantined_and_the_run_goes_on(
    tmp_path: Path, workers: int
) -> None:
    """Native YBR_FULL_422 of odd Columns (numpy's reshape raised ValueError) and a JPEG 2000
    fragment whose box is cut short (struct.error): each stopped every run, resumes too;
    each is quarantined with its reason now."""
    folder = tmp_path / "in"
    folder.mkdir()
    odd = _image(4, 5, "YBR_FULL_422", pydicom.uid.ExplicitVRLittleEndian)
    odd.PixelData = bytes(range(40))
    odd.save_as(folder / "ybr422_odd.dcm", enforce_file_format=True)
    cut = _image(8, 8, "MONOCHROME2", pydicom.uid.JPEG2000Lossless)
    box = b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00\x00\x00\x01jp2c" + b"\x00" * 4
    cut.PixelData = encapsulate([box])
    cut.save_as(folder / "jp2_cut.dcm", enforce_file_format=True)
    fine = _image(8, 8, "MONOCHROME2", pydicom.uid.ExplicitVRLittleEndian)
    fine.PixelData = bytes(64)
    fine.save_as(folder / "fine.dcm", enforce_file_format=True)
    with Archive.create(tmp_path / "archive") as archive:
        report = archive.ingest([folder], workers=workers)
        assert report.archived == 1 and report.quarantined == 2
        # The cut box is a CodecError of its own now; the reshape still reaches the catch-all.
        assert sorted(report.reasons.elements()) == ["cannot be read (ValueError", "frame 0"]
        assert archive.verify().ok


def test_signed_jpeg_lossless_of_12_bits_is_archived_with_pydicoms_values(tmp_path: Path) -> None:
    """A JPEG Lossless CT frame holding 12-bit two's complement (Bits Stored 12, Pixel
    Representation 1: a common layout) decodes to pydicom's values, sign extended: the
    fast decoder's 3098 for pydicom's -998 quarantined it as a damaged bitstream."""
    rows = np.arange(32)[:, None] * 40 - 1000 + np.arange(32)[None, :] * 10
    values = rows.astype(np.int16)
    stream = imagecodecs.ljpeg_encode(
        (values.astype(np.int32) & 0xFFF).astype("<u2"), bitspersample=12
    )
    ds = _image(32, 32, "MONOCHROME2", pydicom.uid.JPEGLosslessSV1)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.PixelData = encapsulate([bytes(stream)])
    folder = tmp_path / "in"
    folder.mkdir()
    ds.save_as(folder / "ct.dcm", enforce_file_format=True)
    expected = pydicom.dcmread(folder / "ct.dcm").pixel_array
    assert expected.min() < 0 and np.array_equal(expected, values)
    with Archive.create(tmp_path / "archive") as archive:
        report = archive.ingest([folder], workers=0)
        assert report.archived == 1, report.reasons
        assert np.array_equal(archive.frames(str(ds.SOPInstanceUID))[0], expected)
        assert archive.verify().ok
    run_cli("export", str(tmp_path / "archive"), str(tmp_path / "out"))
    (exported,) = (tmp_path / "out").rglob("*.dcm")
    assert exported.read_bytes() == (folder / "ct.dcm").read_bytes()


@pytest.mark.parametrize("codec", ["auto", "jpegls"])
def test_a_32_bit_series_whose_first_values_fit_16_bits_keeps_its_later_frames(
    tmp_path: Path, codec: str
) -> None:
    """The codec was chosen on the first instance's sample: JPEG-LS took its small values,
    then refused the next instance's ("at most 16 bits") and quarantined it."""
    folder = tmp_path / "in"
    folder.mkdir()
    study, series, values = generate_uid(), generate_uid(), []
    for number, high in enumerate([1000, 70000]):
        ds = _image(16, 16, "MONOCHROME2", pydicom.uid.ExplicitVRLittleEndian)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.InstanceNumber = number + 1
        ds.BitsAllocated = ds.BitsStored = 32
        ds.HighBit = 31
        values.append(np.random.default_rng(number).integers(0, high, (16, 16)).astype("<u4"))
        ds.PixelData = values[-1].tobytes()
        ds.save_as(folder / f"{number}.dcm", enforce_file_format=True)
    with Archive.create(tmp_path / "archive", codec=codec) as archive:
        report = archive.ingest([folder], workers=0)
        assert report.archived == 2, report.reasons
        rows = sorted(archive.index, key=lambda r: r["InstanceNumber"])
        for row, expected in zip(rows, values, strict=True):
            assert np.array_equal(archive.frames(row["SOPInstanceUID"])[0], expected)


def test_deflated_ybr_full_frames_stay_ybr_and_say_so(tmp_path: Path) -> None:
    """Deflated Image Frame Compression of YBR_FULL: the inflated frames are the native YBR
    samples, and the archive says so (its label said "ybr_full_to_rgb", and the native file
    served to a receiver called the YBR samples RGB)."""
    samples = np.random.default_rng(14).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    ds = _image(8, 8, "YBR_FULL", "1.2.840.10008.1.2.8.1")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    ds.PixelData = encapsulate([deflater.compress(samples.tobytes()) + deflater.flush()])
    folder = tmp_path / "in"
    folder.mkdir()
    ds.save_as(folder / "ybr.dcm", enforce_file_format=True)
    with Archive.create(tmp_path / "archive") as archive:
        assert archive.ingest([folder], workers=0).archived == 1
        sop = str(ds.SOPInstanceUID)
        assert archive.index.get(sop)["color_conversion"] == "none"
        assert np.array_equal(archive.frames(sop)[0], samples)
        native = pydicom.dcmread(BytesIO(archive.native_bytes(sop)))
    assert native.PhotometricInterpretation == "YBR_FULL"
    assert np.array_equal(pixel_array(native, as_rgb=False), samples)


def test_a_transcode_keeps_lossy_streams_under_a_lossless_uid_as_they_are(tmp_path: Path) -> None:
    """A near-lossless JPEG-LS stream (NEAR 4) under JPEG-LS Lossless's UID and an
    irreversible JPEG 2000 one under JPEG 2000 Lossless's: a transcode kept their decoded
    pixels and dropped the streams, so the files could no longer be rebuilt; now they stay
    original bitstreams and export byte for byte. A 12-bit stream in a file of Bits
    Allocated 8 is refused (its samples were cut to their low byte)."""
    import jpeg_ls

    values = (np.arange(32)[:, None] * 50 + np.arange(32)[None, :] * 20).astype("<u2")
    folder = tmp_path / "in"
    folder.mkdir()
    near = _image(32, 32, "MONOCHROME2", pydicom.uid.JPEGLSLossless)
    near.BitsAllocated, near.BitsStored, near.HighBit = 16, 12, 11
    stream = jpeg_ls.encode_pixel_data(
        values.tobytes(), lossy_error=4, rows=32, columns=32, samples_per_pixel=1, bits_stored=12
    )
    near.PixelData = encapsulate([bytes(stream)])
    near.save_as(folder / "near.dcm", enforce_file_format=True)
    irreversible = _image(32, 32, "MONOCHROME2", pydicom.uid.JPEG2000Lossless)
    irreversible.BitsAllocated, irreversible.BitsStored, irreversible.HighBit = 16, 12, 11
    stream = imagecodecs.jpeg2k_encode(
        values, level=30, codecformat="J2K", reversible=False, bitspersample=12
    )
    irreversible.PixelData = encapsulate([bytes(stream)])
    irreversible.save_as(folder / "irreversible.dcm", enforce_file_format=True)
    wide = _image(16, 16, "MONOCHROME2", pydicom.uid.JPEGLSLossless)
    wide.PixelData = encapsulate([bytes(imagecodecs.jpegls_encode(values[:16, :16] + 3000))])
    wide.save_as(folder / "wide.dcm", enforce_file_format=True)
    with Archive.create(tmp_path / "archive", transcode=True) as archive:
        report = archive.ingest([folder], workers=0)
        assert report.archived == 2 and report.quarantined == 1
        (record,) = (tmp_path / "archive" / "quarantine").glob("*.json")
        assert "do not fit Bits Allocated 8" in json.loads(record.read_text())["reason"]
        assert not any(row.get("transcoded") for row in archive.index)
    run_cli("export", str(tmp_path / "archive"), str(tmp_path / "out"))
    exported = sorted(p.read_bytes() for p in (tmp_path / "out").rglob("*.dcm"))
    originals = sorted((folder / name).read_bytes() for name in ("near.dcm", "irreversible.dcm"))
    assert exported == originals


def test_a_transcoded_jpeg_2000_rct_file_is_rgb_without_its_offset_table(tmp_path: Path) -> None:
    """JPEG 2000's decoder undoes YBR_RCT: the native file says RGB (it said YBR_RCT over
    RGB samples), and it has no Extended Offset Table of fragments it no longer has."""
    from pydicom.encaps import encapsulate_extended

    rows, columns = np.mgrid[0:16, 0:16]
    rgb = np.stack([rows * 10, columns * 12, 255 - rows * 8], -1).astype("u1")
    stream = imagecodecs.jpeg2k_encode(rgb, level=0, codecformat="J2K", reversible=True, mct=True)
    ds = _image(16, 16, "YBR_RCT", pydicom.uid.JPEG2000Lossless)
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
        [bytes(stream)]
    )
    folder = tmp_path / "in"
    folder.mkdir()
    ds.save_as(folder / "rct.dcm", enforce_file_format=True)
    with Archive.create(tmp_path / "archive", transcode=True) as archive:
        assert archive.ingest([folder], workers=0).archived == 1
        native = pydicom.dcmread(BytesIO(archive.native_bytes(str(ds.SOPInstanceUID))))
    assert native.PhotometricInterpretation == "RGB"
    assert "ExtendedOffsetTable" not in native and "ExtendedOffsetTableLengths" not in native
    assert np.array_equal(native.pixel_array, rgb)
