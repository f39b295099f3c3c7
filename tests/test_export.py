"""Export: every file checked against its sha256, safe names, no writing through links, errors."""

from __future__ import annotations

import random
import re
import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
from conftest import pydicom_test_files, run_cli
from pydicom import config

from pacs_engine import Archive
from pacs_engine.archive import ExportError
from pacs_engine.archive.export import MAX_NAME, safe_name, version_name

NAME = re.compile(r"[0-9a-z.]*(_[0-9A-F]{2}[0-9a-z.]*)*|_h[0-9a-f]{64}")


def sample(name: str) -> Path:
    (path,) = [p for p in pydicom_test_files() if p.name == name]
    return path


def archive_of(tmp_path: Path, *names: str, **options: object) -> Archive:
    archive = Archive.create(tmp_path / "a", **options)
    report = archive.ingest([sample(n) for n in names], workers=0)
    assert report.archived == len(names)
    return archive


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def test_a_flipped_byte_in_a_header_pack_fails_the_export_and_verify(tmp_path: Path) -> None:
    """Issue 11 item 8: export wrote wrong bytes and exited 0."""
    with archive_of(tmp_path, "CT_small.dcm") as archive:
        (row,) = list(archive.index)
        sop = row["SOPInstanceUID"]
        flip_byte(archive.path / row["header"]["pack"], row["header"]["offset"] + 300)
        with pytest.raises(ExportError, match=re.escape(sop) + ".*differs"):
            archive.export_bytes(sop)
    out = tmp_path / "out"
    done = run_cli("export", str(tmp_path / "a"), str(out), "--uid", sop)
    assert done.returncode != 0
    assert sop in done.stderr and "sha256" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert files_under(out) == []  # no wrong file, no temporary left behind
    verify = run_cli("verify", str(tmp_path / "a"))
    assert verify.returncode == 1 and sop in verify.stdout + verify.stderr


def test_a_flipped_byte_in_a_stored_bitstream_fails_the_export(tmp_path: Path) -> None:
    """JPEG 2000 chunks are stored as they came (no compressor): one wrong byte in the shard
    rebuilds a file with one wrong byte."""
    with archive_of(tmp_path, "MR_small_jp2klossless.dcm") as archive:
        (row,) = list(archive.index)
        assert row["pixel_storage"] == "bitstream"
        (shard,) = [
            p
            for p in (archive.path / "pixels" / row["pixels"]["array"] / "c").rglob("*")
            if p.is_file()
        ]
        flip_byte(shard, 400)
        with pytest.raises(ExportError, match=re.escape(row["SOPInstanceUID"])):
            archive.export(tmp_path / "out")
    assert files_under(tmp_path / "out") == []


def test_a_transcoded_instance_is_checked_by_its_frame_hashes(tmp_path: Path) -> None:
    """Its file has no original to compare with: its decoded frames are checked instead."""
    with archive_of(tmp_path, "MR_small_RLE.dcm", codec="raw", transcode=True) as archive:
        (row,) = list(archive.index)
        assert row["transcoded"]
        sop = row["SOPInstanceUID"]
        good = archive.export_bytes(sop)
        assert pydicom.dcmread(sample("MR_small_RLE.dcm")).pixel_array.tobytes() in good
        (shard,) = [
            p
            for p in (archive.path / "pixels" / row["pixels"]["array"] / "c").rglob("*")
            if p.is_file()
        ]
        flip_byte(shard, 10)  # raw chunks: one pixel changes
        with pytest.raises(ExportError, match=re.escape(sop)):
            archive.export_bytes(sop)


def test_export_never_writes_through_a_link_in_the_output_folder(tmp_path: Path) -> None:
    with archive_of(tmp_path, "CT_small.dcm") as archive:
        (row,) = list(archive.index)
        out = tmp_path / "out"
        (written,) = archive.export(out)
        victim = tmp_path / "victim.txt"
        victim.write_text("precious")
        written.unlink()
        written.symlink_to(victim)
        assert archive.export(out) == [written]
        assert victim.read_text() == "precious"
        assert (
            not written.is_symlink() and written.read_bytes() == sample("CT_small.dcm").read_bytes()
        )
        assert archive.export(out) == [written]  # a second export replaces its own file

        # A folder on the way that is a link is refused, and nothing is written through it.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        shutil.rmtree(out)
        out.mkdir()
        (out / safe_name(row["StudyInstanceUID"])).symlink_to(elsewhere, target_is_directory=True)
        with pytest.raises(ExportError, match="not a folder"):
            archive.export(out)
        assert list(elsewhere.iterdir()) == []


def hostile_uids() -> list[str]:
    return [
        "1.2.3*?:",
        "-1.2.4",
        "1.2\n5",
        "1.2.A",
        "1.2.a",
        "con",
        "1.2_v1",
        "1.2.8.",
        "\u00e4.1",
        "9" * 200,
    ]


def test_hostile_uids_export_under_safe_distinct_names(tmp_path: Path) -> None:
    """UIDs holding `*`, `?`, `:`, a newline, a leading `-`, upper case, a device name, a
    trailing dot, non-ASCII or 200 characters: each exports to a name of the safe alphabet,
    distinct from the others even where case is ignored, with the file's own bytes."""
    source = tmp_path / "in"
    source.mkdir()
    expected = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about each invalid UI value
        mode = config.settings.writing_validation_mode
        config.settings.writing_validation_mode = config.IGNORE
        try:
            for i, uid in enumerate(hostile_uids()):
                ds = pydicom.dcmread(sample("CT_small.dcm"))
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
                ds.SeriesInstanceUID = f"{uid[:150]}.7"  # hostile folder names too
                ds.save_as(source / f"{i}.dcm")
                expected[uid] = (source / f"{i}.dcm").read_bytes()
        finally:
            config.settings.writing_validation_mode = mode
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([source], workers=0)
        assert report.archived == len(expected)
        assert {row["SOPInstanceUID"] for row in archive.index} == set(expected)
        written = archive.export(tmp_path / "out")
    assert len(written) == len(expected)
    parts = {part for path in written for part in path.relative_to(tmp_path / "out").parts}
    for part in parts:
        stem = part.removesuffix(".dcm")
        assert NAME.fullmatch(stem), part
        assert not part.startswith(("-", ".")) and len(part.encode()) <= 255
    assert len({p.as_posix().casefold() for p in written}) == len(written)
    for path in written:
        uid = pydicom.dcmread(path).SOPInstanceUID
        assert path.read_bytes() == expected[uid]
        assert path.name == f"{safe_name(uid)}.dcm"


def test_safe_names_are_one_to_one_even_ignoring_case() -> None:
    rng = random.Random(11)
    alphabet = "0123456789.aAbB_-*?:/\n \u00e4\u00c4vhCON"
    values = {"", ".", "..", "1.2", "1.2.", ".1.2", "con", "CON", "con.1", "nul.2", "lpt9"}
    values |= {"".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(3000)}
    values |= {"7" * n for n in (MAX_NAME - 1, MAX_NAME, MAX_NAME + 1, 400)}
    names = {value: safe_name(value) for value in values}
    assert len({n.casefold() for n in names.values()}) == len(values)
    for value, name in names.items():
        assert NAME.fullmatch(name) and 0 < len(name) <= MAX_NAME + 2, (value, name)
        assert not name.startswith(("-", ".")) and not name.endswith(".")
        assert name.split(".")[0] not in ("con", "nul", "lpt9")
    assert safe_name("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"  # usual UIDs
    versions = {version_name(v, n) for v in values for n in (1, 2)}
    plain = {f"{safe_name(v)}.dcm" for v in values}
    assert len(versions) == 2 * len(values) and not versions & plain


def test_export_errors_are_one_line_messages(tmp_path: Path) -> None:
    """Issue 11 item 13: an unknown UID, an empty one, a destination that is a file."""
    with archive_of(tmp_path, "CT_small.dcm"):
        pass
    archive = str(tmp_path / "a")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (["--uid", "1.2.3.4.nope"], str(tmp_path / "o1"), "1.2.3.4.nope: not in the archive"),
        (["--uid", ""], str(tmp_path / "o2"), "'': not in the archive"),
        (["--uid", "1.2\n3"], str(tmp_path / "o3"), "'1.2\\n3': not in the archive"),
        ([], str(a_file), f"{a_file}: cannot export into it: not a folder"),
        ([], str(a_file / "below"), f"{a_file / 'below'}: cannot export into it"),
    ]
    for options, destination, message in cases:
        done = run_cli("export", archive, destination, *options)
        assert done.returncode != 0, (options, destination)
        assert "Traceback" not in done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert message in line, line
    assert a_file.read_text() == "x"
    with Archive(tmp_path / "a") as opened, pytest.raises(KeyError):
        opened.export_bytes("1.2.3.4.nope")  # still a KeyError, as before


def test_one_damaged_instance_does_not_stop_the_export_of_the_others(tmp_path: Path) -> None:
    with archive_of(tmp_path, "CT_small.dcm", "MR_small.dcm") as archive:
        rows = {Path(r["source_path"]).name: r for r in archive.index}
        bad = rows["CT_small.dcm"]
        flip_byte(archive.path / bad["header"]["pack"], bad["header"]["offset"] + 300)
    done = run_cli("export", str(tmp_path / "a"), str(tmp_path / "out"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "1 of 2 files not exported" in line and bad["SOPInstanceUID"] in line
    (written,) = files_under(tmp_path / "out")
    assert written.read_bytes() == sample("MR_small.dcm").read_bytes()
