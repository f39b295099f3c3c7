"""What a duplicate is, versions of one instance, and which version is current."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pydicom
import pytest
from conftest import CORPUS, require_corpus, run_cli
from pydicom.encaps import encapsulate, generate_frames

from pacs_engine import Archive
from pacs_engine.archive.versions import version_rows

CT = Path("pydicom/test_files/CT_small.dcm")  # a CT of the corpus, native pixels
J2K = Path("pydicom/test_files/MR_small_jp2klossless.dcm")


def corpus_file(relative: Path) -> Path:
    path = require_corpus() / relative
    assert path.is_file(), path
    return path


def resend_with_other_header(source: Path, target: Path, tag: str = "x") -> Path:
    """The same instance (SOP UID, pixels) with other ImageComments, KVP and a private element."""
    ds = pydicom.dcmread(source)
    ds.ImageComments = f"corrected {tag}"
    ds.KVP = "99"
    block = ds.private_block(0x0009, "PACS_ENGINE TEST", create=True)
    block.add_new(0x01, "LO", f"private payload {tag}")
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


def with_other_pixels(source: Path, target: Path) -> Path:
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array.copy()
    pixels[3, 4] ^= 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(target)
    return target


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_every_version_exports(archive: Archive, sop: str) -> list[dict]:
    versions = archive.versions(sop)
    for number, version in enumerate(versions):
        expected = Path(version["source_path"]).read_bytes()
        assert archive.export_bytes(sop, number) == expected
    return versions


def test_a_header_only_change_is_a_version_kept_byte_for_byte(tmp_path: Path) -> None:
    """The reproduction of issue 11 item 2: it was "1 archived, 1 duplicates" and the second
    file's bytes were gone. Now both files export; the later one is current."""
    first = tmp_path / "in" / "a.dcm"
    first.parent.mkdir()
    shutil.copy(corpus_file(CT), first)
    second = resend_with_other_header(first, tmp_path / "later" / "b.dcm")
    with Archive.create(tmp_path / "a") as archive:
        one = archive.ingest([first], workers=0)
        two = archive.ingest([second], workers=0)
        assert (one.archived, two.archived, two.versions, two.duplicates) == (1, 1, 1, 0)
        assert two.balanced
        (row,) = list(archive.index)
        sop = row["SOPInstanceUID"]
        old, new = assert_every_version_exports(archive, sop)
        assert (old["source_sha256"], new["source_sha256"]) == (sha256(first), sha256(second))
        assert archive.export_bytes(sop) == second.read_bytes()  # the current: received last
        assert row["current_reason"].startswith("received last")
        assert [v["run"] for v in row["versions"]] == [one.run, two.run]
        assert [v.get("current", False) for v in row["versions"]] == [False, True]
        # Native pixels are shared: the second version stored its header blob only.
        assert old["pixels"] == new["pixels"]
        assert two.raw_bytes == 0 and 0 < two.stored_bytes < 4096
        assert archive.info()["instances"] == 1
        assert archive.verify().ok


def test_byte_identical_resends_are_duplicates_of_any_kept_version(tmp_path: Path) -> None:
    original = tmp_path / "in" / "a.dcm"
    original.parent.mkdir()
    shutil.copy(corpus_file(CT), original)
    changed = resend_with_other_header(original, tmp_path / "in" / "b.dcm")
    copies = tmp_path / "copies"
    copies.mkdir()
    shutil.copy(original, copies / "a-again.dcm")
    shutil.copy(changed, copies / "b-again.dcm")
    with Archive.create(tmp_path / "a") as archive:
        archive.ingest([tmp_path / "in"], workers=0)
        report = archive.ingest([copies], workers=0)
        assert (report.archived, report.duplicates, report.conflicts) == (0, 2, 0)
        (row,) = list(archive.index)
        assert len(version_rows(row)) == 2
        assert sorted(d["path"] for d in row["duplicates"]) == sorted(
            str(p) for p in copies.iterdir()
        )
        for duplicate in row["duplicates"]:
            assert duplicate["sha256"] == sha256(Path(duplicate["path"]))


def test_different_pixels_under_one_sop_uid_are_conflicts(tmp_path: Path) -> None:
    """Whether the header differs too or not, in a later run or in the same one (where the
    first planned is archived and the other is the conflict)."""
    original = corpus_file(CT)
    other = with_other_pixels(original, tmp_path / "other.dcm")
    both = resend_with_other_header(other, tmp_path / "both" / "other-header.dcm")
    with Archive.create(tmp_path / "a") as archive:
        first = archive.ingest([original], workers=0)
        later = archive.ingest([other, both], workers=0)
        assert (first.archived, later.archived, later.conflicts) == (1, 0, 2)
        records = {r["path"]: r for r in archive.quarantine.records()}
        for path in (other, both):
            record = records[str(path)]
            assert record["reason"].endswith("different pixels")
            assert (archive.path / "quarantine" / f"{record['sha256']}.dcm").read_bytes() == (
                path.read_bytes()
            )
        (row,) = list(archive.index)
        assert "versions" not in row
        assert archive.export_bytes(row["SOPInstanceUID"]) == original.read_bytes()
    with Archive.create(tmp_path / "b") as archive:
        report = archive.ingest([original, other], workers=0)
        assert (report.archived, report.versions, report.conflicts) == (1, 0, 1)
        (row,) = list(archive.index)
        (record,) = archive.quarantine.records()
        kept = {row["source_path"], record["path"]}
        assert kept == {str(original), str(other)}


def test_another_shape_for_the_same_bytes_is_a_conflict_not_a_version(tmp_path: Path) -> None:
    """The pixel hash covers the bytes only: Rows and Columns swapped keep the bytes."""
    original = corpus_file(Path("pydicom/test_files/MR_small.dcm"))
    ds = pydicom.dcmread(original)
    ds.Rows, ds.Columns = ds.Columns // 2, ds.Rows * 2
    ds.save_as(tmp_path / "reshaped.dcm")
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([original, tmp_path / "reshaped.dcm"], workers=0)
        assert (report.archived, report.conflicts) == (1, 1)
        (record,) = archive.quarantine.records()
        assert "different Rows, Columns" in record["reason"]


def test_encapsulated_versions_share_identical_bitstreams_only(tmp_path: Path) -> None:
    """A header-only change of a JPEG 2000 file shares its stored bitstream; the same image
    as RLE keeps its own; in one run, with a shard of one frame, each version has room."""
    j2k = corpus_file(J2K)
    header = resend_with_other_header(j2k, tmp_path / "in" / "j2k-header.dcm")
    rle = corpus_file(Path("pydicom/test_files/MR_small_RLE.dcm"))
    with Archive.create(tmp_path / "a", frames_per_shard=1) as archive:
        report = archive.ingest([j2k, header, rle], workers=0)
        assert (report.archived, report.versions, report.quarantined) == (3, 2, 0)
        (row,) = list(archive.index)
        versions = assert_every_version_exports(archive, row["SOPInstanceUID"])
        by_path = {v["source_path"]: v for v in versions}
        assert by_path[str(j2k)]["pixels"] == by_path[str(header)]["pixels"]
        assert by_path[str(rle)]["pixels"] != by_path[str(j2k)]["pixels"]
        stored = by_path[str(header)]["pixels"]
        first = stored["first_frame"]
        bitstreams = archive.pixels.read_bitstreams(stored["array"], first, first + 1)
        assert bitstreams == list(
            generate_frames(pydicom.dcmread(header).PixelData, number_of_frames=1)
        )
        assert archive.verify().ok


def test_the_current_version_is_the_last_received_in_a_run(tmp_path: Path) -> None:
    """Within one run, versions come in the plan's order (a digest of the input names):
    whichever that is, the last one taken is current and every version is kept."""
    folder = tmp_path / "in"
    names = ["1.dcm", "2.dcm", "3.dcm"]
    folder.mkdir()
    shutil.copy(corpus_file(CT), folder / names[0])
    resend_with_other_header(folder / names[0], folder / names[1], "one")
    resend_with_other_header(folder / names[0], folder / names[2], "two")
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([folder], workers=0)
        assert (report.archived, report.versions) == (3, 2)
        (row,) = list(archive.index)
        versions = assert_every_version_exports(archive, row["SOPInstanceUID"])
        order = [Path(v["source_path"]).name for v in versions]
        assert sorted(order) == names
        assert row["source_path"] == versions[-1]["source_path"]
        assert [v["run"] for v in row["versions"]] == [report.run] * 3
        assert row["stored_bytes"] == sum(v["stored_bytes"] for v in row["versions"])


def test_stored_bytes_count_each_versions_header_blob_and_its_own_pixels(tmp_path: Path) -> None:
    """Three versions in one part (the blobs are packed at the part's end, after the rows
    are made): each version's stored bytes are its header blob's length plus the pixel
    chunks it wrote (the first; the others share them), and the report counts them all."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(corpus_file(CT), folder / "1.dcm")
    resend_with_other_header(folder / "1.dcm", folder / "2.dcm", "one")
    resend_with_other_header(folder / "1.dcm", folder / "3.dcm", "two")
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([folder], workers=0)
        (row,) = list(archive.index)
        versions = row["versions"]  # earlier versions whole, the current one as a summary
        (current,) = [v for v in versions if v.get("current")]
        headers = [v["header"]["length"] for v in version_rows(row)]
        own_stored = [v["stored_bytes"] for v in versions if v is not current]
        own_stored.append(current["stored_bytes"])
        reference = row["pixels"]
        first = reference["first_frame"]
        chunks = archive.pixels.read_chunks(reference["array"], first, first + reference["frames"])
        pixel_bytes = sum(len(c) for c in chunks)
        own = sorted(stored - header for stored, header in zip(own_stored, headers, strict=True))
        assert own == [0, 0, pixel_bytes] and pixel_bytes > 0
        total = sum(v["stored_bytes"] for v in versions)
        assert report.stored_bytes == row["stored_bytes"] == total


def test_rows_written_before_versions_read_export_verify_and_take_new_versions(
    tmp_path: Path,
) -> None:
    """A row as the previous code wrote it (no `versions`, no `run`) has one version."""
    original = tmp_path / "a.dcm"
    shutil.copy(corpus_file(CT), original)
    with Archive.create(tmp_path / "a") as archive:
        archive.ingest([original], workers=0)
        (row,) = list(archive.index)
        old_style = {k: v for k, v in row.items() if k != "run"}
        archive.index.commit([old_style])
        sop = row["SOPInstanceUID"]
        assert archive.versions(sop) == [old_style]
        assert archive.export_bytes(sop) == archive.export_bytes(sop, 0) == original.read_bytes()
        assert archive.verify().ok
        later = resend_with_other_header(original, tmp_path / "later" / "b.dcm")
        report = archive.ingest([later], workers=0)
        assert report.versions == 1
        row = archive.index.get(sop)
        assert [v["run"] for v in row["versions"]] == [None, report.run]
        assert_every_version_exports(archive, sop)
        assert archive.verify().ok


def test_export_all_versions_through_the_cli(tmp_path: Path) -> None:
    original = corpus_file(CT)
    later = resend_with_other_header(original, tmp_path / "in" / "b.dcm")
    archive = tmp_path / "a"
    for source in (original, later):
        done = run_cli("ingest", str(source), "--archive", str(archive), "--json")
        assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["versions"] == 1
    assert json.loads(done.stdout)["current_version"].startswith("received last")
    summary = run_cli("ingest", str(tmp_path / "in"), "--archive", str(archive))
    assert "1 files skipped unread: unchanged" in summary.stdout  # read by the run above
    third = resend_with_other_header(original, tmp_path / "third" / "c.dcm", "third")
    summary = run_cli("ingest", str(third), "--archive", str(archive))
    assert "1 are new versions" in summary.stdout and "received last" in summary.stdout
    plain = run_cli("export", str(archive), str(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr
    (only,) = [p for p in (tmp_path / "plain").rglob("*") if p.is_file()]
    assert only.read_bytes() == third.read_bytes()
    every = run_cli("export", str(archive), str(tmp_path / "all"), "--all-versions")
    assert every.returncode == 0, every.stderr
    files = {p.name: p for p in (tmp_path / "all").rglob("*") if p.is_file()}
    sop = pydicom.dcmread(original).SOPInstanceUID
    assert sorted(files) == sorted([f"{sop}.dcm", f"{sop}_v1.dcm", f"{sop}_v2.dcm"])
    assert files[f"{sop}.dcm"].read_bytes() == third.read_bytes()
    assert files[f"{sop}_v1.dcm"].read_bytes() == original.read_bytes()
    assert files[f"{sop}_v2.dcm"].read_bytes() == later.read_bytes()


@pytest.mark.parametrize("damaged", ["earlier", "current"])
def test_verify_checks_every_version(tmp_path: Path, damaged: str) -> None:
    original = tmp_path / "a.dcm"
    shutil.copy(corpus_file(CT), original)
    later = resend_with_other_header(original, tmp_path / "later" / "b.dcm")
    with Archive.create(tmp_path / "a") as archive:
        archive.ingest([original], workers=0)
        archive.ingest([later], workers=0)
        (row,) = list(archive.index)
        version = version_rows(row)[0 if damaged == "earlier" else 1]
        flip_byte(archive.path / version["header"]["pack"], version["header"]["offset"] + 200)
        (mismatch,) = archive.verify().mismatches
        number = 0 if damaged == "earlier" else 1
        assert mismatch["problem"].startswith(f"version {number} ")
        assert "differs from the original" in mismatch["problem"]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_corpus_images_in_several_transfer_syntaxes_are_versions(tmp_path: Path) -> None:
    """emri_small in five transfer syntaxes under one SOP Instance UID: five versions."""
    folder = require_corpus() / "pydicom-data"
    files = sorted(folder.glob("emri_small*.dcm"))
    if len(files) < 2:
        pytest.fail(f"expected emri_small files in {folder} ({CORPUS})")
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest(files, workers=0)
        sops = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
        assert report.archived == len(files) and report.versions == len(files) - len(sops)
        for sop in sops:
            assert_every_version_exports(archive, sop)
        assert archive.verify().ok


def test_versions_with_other_bitstreams_of_one_codec_each_have_room(tmp_path: Path) -> None:
    """The same JPEG 2000 image with two padding bytes after its codestream: same pixels,
    same array, another bitstream. Planned in one part with a shard of one frame, both fit
    (the plan gives every input of a SOP Instance UID its frames)."""
    original = corpus_file(J2K)
    ds = pydicom.dcmread(original)
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([frame + b"\0\0"])
    ds.save_as(tmp_path / "padded.dcm")
    with Archive.create(tmp_path / "a", frames_per_shard=1) as archive:
        report = archive.ingest([original, tmp_path / "padded.dcm"], workers=0)
        assert (report.archived, report.versions, report.quarantined) == (2, 1, 0)
        (row,) = list(archive.index)
        first, second = assert_every_version_exports(archive, row["SOPInstanceUID"])
        assert first["pixels"]["array"] == second["pixels"]["array"]
        assert first["pixels"]["first_frame"] != second["pixels"]["first_frame"]
        assert archive.verify().ok


def test_an_absent_number_of_frames_is_one_frame(tmp_path: Path) -> None:
    """A version that says NumberOfFrames 1 where the first said nothing has the same shape."""
    original = corpus_file(CT)
    ds = pydicom.dcmread(original)
    assert "NumberOfFrames" not in ds
    ds.NumberOfFrames = 1
    ds.save_as(tmp_path / "one-frame.dcm")
    with Archive.create(tmp_path / "a") as archive:
        archive.ingest([original], workers=0)
        report = archive.ingest([tmp_path / "one-frame.dcm"], workers=0)
        assert (report.versions, report.conflicts) == (1, 0)
        (row,) = list(archive.index)
        assert_every_version_exports(archive, row["SOPInstanceUID"])


def test_rebuild_index_restores_every_version_in_the_order_received(tmp_path: Path) -> None:
    """rebuild-index reads the rows files of every pack: the versions of an instance come
    back as the ingest made them (the later one current), not only the row written last."""
    from pacs_engine.archive.rebuild import rebuild_index

    first = tmp_path / "in" / "a.dcm"
    first.parent.mkdir()
    shutil.copy(corpus_file(CT), first)
    second = resend_with_other_header(first, tmp_path / "later" / "b.dcm")
    third = resend_with_other_header(first, tmp_path / "latest" / "c.dcm", tag="y")
    with Archive.create(tmp_path / "a") as archive:
        for source in (first, second, third):
            archive.ingest([source], workers=0)
        before = {row["SOPInstanceUID"]: row for row in archive.index}
    (sop,) = before
    assert len(before[sop]["versions"]) == 3
    rebuilt = rebuild_index(tmp_path / "a")
    assert rebuilt.rows == 1 and rebuilt.uncommitted == 0
    with Archive(tmp_path / "a") as archive:
        after = {row["SOPInstanceUID"]: row for row in archive.index}
        assert after == before
        assert_every_version_exports(archive, sop)
        assert archive.export_bytes(sop) == third.read_bytes()
