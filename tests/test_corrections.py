"""Corrections through the CLI on real corpus files: merge, demographics, series move, delete,
the trash, undo, the audit trail, the writer lock and crashes mid-correction."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from conftest import require_corpus, run_cli

from pacs_engine import ArchiveError
from pacs_engine import open_archive as ingest_archive
from pacs_engine.archive import blobs, corrections, open_archive, rebuild
from pacs_engine.archive.archive import Archive, _disk_bytes
from pacs_engine.archive.blobs import dump_rows, rows_sidecar
from pacs_engine.archive.corrections import FAULT_VARIABLE, Corrections
from pacs_engine.archive.rebuild import rebuild_index
from pacs_engine.deid import deidentify, make_key
from pacs_engine.scanning import scan
from pacs_engine.serve.audit import read_records, verify_chain

CT = "dcm_qa_ct/Philips/S21570"
#: Patient "crlab" (two studies: three MR files, and one JPEG lossless file).
MR = [
    "dcm_qa_decubitus/HFS/3_t1_fl2d_sag/0001_1.3.12.2.1107.5.2.43.67060.2022040715053454597060816.dcm",
    "dcm_qa_decubitus/HFS/3_t1_fl2d_sag/0002_1.3.12.2.1107.5.2.43.67060.2022040715053473863460818.dcm",
    "dcm_qa_decubitus/HFS/3_t1_fl2d_sag/0003_1.3.12.2.1107.5.2.43.67060.2022040715053452647160812.dcm",
    "dcm_qa_ts/5.dcm",
]
#: Patient "PLASTIC": one study, a series of six and a series of one.
CT_FILES = [f"{CT}/S4010/I{n}0" for n in range(1, 7)] + [f"{CT}/S1000/I10"]


def _read(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path)


def _pixel_digest(dataset: pydicom.Dataset) -> str:
    """What the pixel data is: the raw value (original bitstreams or native bytes)."""
    return hashlib.sha256(dataset.PixelData).hexdigest()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """An archive of the chosen files, ingested once; and each file by its SOP Instance UID."""
    corpus = require_corpus()
    root = tmp_path_factory.mktemp("pristine")
    sources = root / "src"
    by_sop = {}
    for i, name in enumerate(MR + CT_FILES):
        target = sources / f"{i:02d}.dcm"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(corpus / name, target)
        by_sop[_read(target).SOPInstanceUID] = target
    done = run_cli("ingest", "--archive", str(root / "A"), str(sources), "--workers", "0")
    assert done.returncode == 0, done.stderr
    return root / "A", by_sop


@pytest.fixture
def archive(pristine: tuple[Path, dict[str, Path]], tmp_path: Path) -> Path:
    """A fresh copy of the pristine archive for one test."""
    copy = tmp_path / "A"
    shutil.copytree(pristine[0], copy)
    return copy


def _cli(*args: str | Path, code: int = 0, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pacs_engine.cli", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == code, done.stdout + done.stderr
    return done.stdout + done.stderr


def _correct_patient(
    archive: Path,
    patient_id: str,
    *values: str,
    reason: str = "x",
    code: int = 0,
    env: dict[str, str] | None = None,
) -> str:
    """`pacs-engine correct ARCHIVE patient --id PATIENT_ID --set K=V... --reason REASON`."""
    sets = [arg for value in values for arg in ("--set", value)]
    return _cli(
        "correct",
        archive,
        "patient",
        "--id",
        patient_id,
        *sets,
        "--reason",
        reason,
        code=code,
        env=env,
    )


def _export(archive: Path, out: Path, *selection: str) -> dict[str, Path]:
    """Export (current versions, and earlier ones as _v<n>) and index the files by name."""
    _cli("export", archive, out, *selection, "--all-versions")
    return {p.name: p for p in out.rglob("*.dcm")}


def _verify(archive: Path) -> None:
    out = _cli("verify", archive, "--workers", "0")
    assert "all match" in out


def _studies(archive: Path, **filters: str) -> list[str]:
    with open_archive(archive) as opened:
        return sorted(s["StudyInstanceUID"] for s in opened.query("study", **filters))


def _last_id(archive: Path) -> str:
    return json.loads(_cli("correct", archive, "--list", "--json"))[-1]["id"]


def _originals_exported(archive: Path, out: Path, by_sop: dict[str, Path]) -> None:
    """Every current version exports as the ingested file, byte for byte."""
    files = _export(archive, out)
    with open_archive(archive) as opened:
        sops = [row["SOPInstanceUID"] for row in opened.index]
    for sop in sops:
        exported = next(p for name, p in files.items() if name.startswith(sop) and "_v" not in name)
        assert exported.read_bytes() == by_sop[sop].read_bytes()


def test_merge_patient_and_undo(archive: Path, pristine, tmp_path: Path) -> None:
    by_sop = pristine[1]
    mr_studies = _studies(archive, PatientID="crlab")
    ct_study = _studies(archive, PatientID="PLASTIC")
    target = _read(by_sop[next(s for s, p in by_sop.items() if p.name == "04.dcm")])
    merging = ("--from", "crlab", "--to", "PLASTIC", "--reason", "duplicate registration")
    dry = _cli("correct", archive, "merge-patient", *merging, "--dry-run")
    assert "would make" in dry and "4 instances" in dry
    assert _studies(archive, PatientID="crlab") == mr_studies  # nothing written
    assert not (archive / "corrections").exists()

    out = _cli("correct", archive, "merge-patient", *merging)
    assert "4 instances in 2 series of 2 studies" in out
    assert _studies(archive, PatientID="crlab") == []
    assert _studies(archive, PatientID="PLASTIC") == sorted(mr_studies + ct_study)
    files = _export(archive, tmp_path / "out", "--patient", "PLASTIC")
    for sop in (s for s, p in by_sop.items() if _read(p).PatientID == "crlab"):
        corrected, original = _read(files[f"{sop}.dcm"]), _read(by_sop[sop])
        assert corrected.PatientID == "PLASTIC"
        assert corrected.PatientName == target.PatientName
        assert corrected.StudyInstanceUID == original.StudyInstanceUID
        assert _pixel_digest(corrected) == _pixel_digest(original)
        # The original stays retrievable, byte for byte, as an earlier version.
        assert files[f"{sop}_v1.dcm"].read_bytes() == by_sop[sop].read_bytes()
    _verify(archive)

    merge = _last_id(archive)
    _correct_patient(archive, "PLASTIC", "PatientSex=O", reason="later")
    later = _cli("correct", archive, "--undo", merge, code=2)
    assert "undo them first" in later and _last_id(archive) in later
    _cli("correct", archive, "--undo", _last_id(archive))
    _cli("correct", archive, "--undo", merge)
    assert _studies(archive, PatientID="crlab") == mr_studies
    _originals_exported(archive, tmp_path / "after-undo", by_sop)
    _verify(archive)
    undone = json.loads(_cli("correct", archive, "--list", "--json"))
    assert undone[0]["undone_by"] == undone[3]["id"]
    _cli("correct", archive, "--undo", undone[0]["id"], code=2)  # not twice


def test_demographic_correction(archive: Path, pristine, tmp_path: Path) -> None:
    by_sop = pristine[1]
    old_name = str(_read(by_sop[next(iter(by_sop))]).PatientName)
    assert _studies(archive, PatientName=old_name)
    _correct_patient(
        archive,
        "crlab",
        "PatientName=MÜLLER^JANE",
        "PatientBirthDate=19700101",
        reason="registration error",
    )
    assert len(_studies(archive, PatientName="MÜLLER^JANE")) == 2
    assert _studies(archive, PatientName=old_name) == []
    files = _export(archive, tmp_path / "out", "--patient", "crlab")
    assert len([n for n in files if "_v" not in n]) == 4
    for sop in (s for s, p in by_sop.items() if _read(p).PatientID == "crlab"):
        corrected, original = _read(files[f"{sop}.dcm"]), _read(by_sop[sop])
        assert (corrected.PatientName, corrected.PatientBirthDate) == ("MÜLLER^JANE", "19700101")
        assert corrected.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert _pixel_digest(corrected) == _pixel_digest(original)
        assert (corrected.pixel_array == original.pixel_array).all()
    _verify(archive)
    _correct_patient(archive, "crlab", "PatientWeight=80", code=2)
    # Not in the files' character set (ISO_IR 100): refused, naming the keyword, not the value.
    refused = _correct_patient(archive, "crlab", "PatientName=山田^太郎", code=2)
    assert "PatientName" in refused and "山田" not in refused
    _correct_patient(archive, "nobody", "PatientName=X", code=2)
    _cli("correct", archive, "--undo", _last_id(archive))
    _originals_exported(archive, tmp_path / "after-undo", by_sop)
    _verify(archive)


def test_a_corrections_pack_reads_back_through_the_pack_reader(archive: Path, pristine) -> None:
    """A correction's new pack holds its blobs one after the other, nothing else; each new
    version's blob reads back through `PackReader` with the corrected value, and its
    `stored_bytes` is that blob alone (its pixels are the old version's); a rebuilt index
    gives back the rows as committed (no version's bytes counted twice, the reason kept)."""
    _correct_patient(archive, "crlab", "PatientName=DOE^NEW", reason="registration error")
    with open_archive(archive) as opened, blobs.PackReader(archive) as packs:
        corrected = [r for r in opened.index if r.get("current_reason", "").startswith("corr")]
        by_pack: dict[str, list[tuple[int, int]]] = {}
        for row in corrected:
            where = row["header"]
            by_pack.setdefault(where["pack"], []).append((where["offset"], where["length"]))
            header = scan(blobs.scannable(packs.blob(row)))
            assert header.attributes["PatientName"] == "DOE^NEW"
            assert row["versions"][-1]["stored_bytes"] == where["length"]
            assert row["stored_bytes"] == row["versions"][0]["stored_bytes"] + where["length"]
    assert len(corrected) == 4 and all("/correction-" in pack for pack in by_pack)
    for pack, places in by_pack.items():
        ends = [0] + [offset + length for offset, length in sorted(places)]
        assert [offset for offset, _ in sorted(places)] == ends[:-1]
        assert (archive / pack).stat().st_size == ends[-1]
    with open_archive(archive) as opened:
        live = {row["SOPInstanceUID"]: row for row in opened.index}
    rebuild_index(archive)
    with open_archive(archive) as opened:
        assert {row["SOPInstanceUID"]: row for row in opened.index} == live


def test_a_rebuild_reads_a_corrections_rows_file_written_by_the_previous_code(
    archive: Path,
) -> None:
    """Before 714e9e9 a correction's rows file kept the merged `stored_bytes` (every
    version's) and no `current_reason` (0ea128d's `_current_only`): a rebuild of such an
    archive gives back the rows as committed, not the earlier versions' bytes twice."""
    for name in ("DOE^FIRST", "DOE^SECOND"):  # the second's rows counted three versions
        _correct_patient(archive, "crlab", f"PatientName={name}")
        with open_archive(archive) as opened:
            live = {row["SOPInstanceUID"]: row for row in opened.index}
        written = sorted(archive.glob(f"headers/*/correction-{_last_id(archive)}.rows"))
        assert len(written) == 2  # the crlab studies' two series
        for path in written:
            # As 0ea128d wrote it: the committed row, less `versions` and `current_reason`.
            stamp, rows = blobs.load_rows(path.read_bytes())
            old = [dict(live[row["SOPInstanceUID"]]) for row in rows]
            for row in old:
                del row["versions"], row["current_reason"]
            path.write_bytes(dump_rows(old, stamp))
    rebuild_index(archive)
    with open_archive(archive) as opened:
        rebuilt = {row["SOPInstanceUID"]: row for row in opened.index}
    assert rebuilt == live
    corrected = [row for row in rebuilt.values() if "versions" in row]
    assert len(corrected) == 4 and all(len(row["versions"]) == 3 for row in corrected)


def test_a_rebuild_takes_a_row_for_a_corrections_by_its_pack_not_by_its_source_alone(
    archive: Path,
) -> None:
    """A row whose source names a correction but whose blob is in an ingest's pack (a
    source is any text) is rebuilt as written: not read as a correction's row of the
    previous code, which would count its blob alone and give it the correction's reason."""
    _correct_patient(archive, "crlab", "PatientName=DOE^JANE")
    source = corrections.CORRECTION_SOURCE + _last_id(archive)
    with open_archive(archive) as opened:
        live = {row["SOPInstanceUID"]: row for row in opened.index}
    files = {p: blobs.load_rows(p.read_bytes()) for p in archive.glob("headers/*/*.rows")}
    # The series of one of the patient not corrected: an ingest's pack.
    ((path, (stamp, rows)),) = [
        (p, f) for p, f in files.items() if [r["PatientID"] for r in f[1]] == ["PLASTIC"]
    ]
    path.write_bytes(dump_rows([{**row, "source_path": source} for row in rows], stamp))
    rebuild_index(archive)
    with open_archive(archive) as opened:
        rebuilt = {row["SOPInstanceUID"]: row for row in opened.index}
    (sop,) = [row["SOPInstanceUID"] for row in rows]
    assert rebuilt[sop] == {**live[sop], "source_path": source}
    assert rebuilt[sop]["stored_bytes"] > rebuilt[sop]["header"]["length"]  # its pixels too
    assert {k: v for k, v in rebuilt.items() if k != sop} == {
        k: v for k, v in live.items() if k != sop
    }


def test_move_series(archive: Path, pristine, tmp_path: Path) -> None:
    by_sop = pristine[1]
    single = _read(by_sop[next(s for s, p in by_sop.items() if p.name == "10.dcm")])
    target_study = _studies(archive, PatientID="crlab")[0]
    with open_archive(archive) as opened:
        target = opened.index.study_record(target_study)
    assert target is not None
    _cli(
        "correct",
        archive,
        "move-series",
        "--series",
        single.SeriesInstanceUID,
        "--to-study",
        target_study,
        "--reason",
        "filed under the wrong study",
    )
    with open_archive(archive) as opened:
        series = opened.query("series", SeriesInstanceUID=single.SeriesInstanceUID)
        assert [s["StudyInstanceUID"] for s in series] == [target_study]
        assert (
            opened.index.study_record(single.StudyInstanceUID)["NumberOfStudyRelatedInstances"] == 6
        )
    files = _export(archive, tmp_path / "out", "--series", single.SeriesInstanceUID)
    moved = _read(files[f"{single.SOPInstanceUID}.dcm"])
    assert moved.StudyInstanceUID == target_study
    assert (moved.PatientID, moved.StudyDate) == ("crlab", target["StudyDate"])
    assert _pixel_digest(moved) == _pixel_digest(single)
    _verify(archive)
    _cli("correct", archive, "--undo", _last_id(archive))
    _originals_exported(archive, tmp_path / "after-undo", by_sop)
    _verify(archive)


def test_delete_trash_restore_and_empty(archive: Path, pristine, tmp_path: Path) -> None:
    by_sop = pristine[1]
    one = _read(by_sop[next(s for s, p in by_sop.items() if p.name == "05.dcm")])
    single = _read(by_sop[next(s for s, p in by_sop.items() if p.name == "10.dcm")])
    _cli("correct", archive, "delete", "--uid", one.SOPInstanceUID, "--reason", "sent by mistake")
    _cli("correct", archive, "delete", "--series", single.SeriesInstanceUID, "--reason", "wrong")
    partial, whole = [c["id"] for c in json.loads(_cli("correct", archive, "--list", "--json"))]
    with open_archive(archive) as opened:
        assert opened.index.get(one.SOPInstanceUID) is None
        assert opened.query("series", SeriesInstanceUID=single.SeriesInstanceUID) == []
    assert "not in the archive" in _cli(
        "export", archive, tmp_path / "x", "--uid", one.SOPInstanceUID, code=2
    )
    listed = _cli("trash", archive, "--list")
    assert partial in listed and whole in listed and "2 deletes" in listed
    assert (archive / "trash" / whole).is_dir()
    _verify(archive)
    _cli("tidy", archive)  # the part of a series kept in place is not tidied away
    _cli("trash", archive, "--restore", partial)
    _cli("trash", archive, "--restore", whole)
    _originals_exported(archive, tmp_path / "restored", by_sop)
    _verify(archive)

    _cli("correct", archive, "delete", "--uid", one.SOPInstanceUID, "--reason", "again")
    _cli("correct", archive, "delete", "--study", single.StudyInstanceUID, "--reason", "again")
    _cli("trash", archive, "--empty")  # kept 30 days: nothing yet
    assert len(list((archive / "trash").iterdir())) == 1
    before = _disk_bytes(archive)
    out = _cli("trash", archive, "--empty", "--older-than", "0")
    assert "emptied 2 deletes" in out
    assert _disk_bytes(archive) < before - 200_000  # seven CT slices' pixels are gone
    assert not any((archive / "trash").iterdir())
    _cli("trash", archive, "--restore", _last_id(archive), code=2)
    records = [path.read_text() for path in (archive / "corrections").glob("*.json")]
    assert len([text for text in records if '"emptied": null' not in text]) == 2
    # Every record keeps only the UIDs of what was removed for good, restores included.
    assert len(records) == 6 and not any("PLASTIC" in text for text in records)
    _verify(archive)
    assert _studies(archive, PatientID="PLASTIC") == []
    assert len(_studies(archive, PatientID="crlab")) == 2
    actions = [r["action"] for r in read_records(archive)]
    assert actions == ["correct delete"] * 2 + ["correct undo"] * 2 + ["correct delete"] * 2 + [
        "trash empty"
    ]
    assert verify_chain(archive) == []


def _replaced_files_held(root: Path) -> list[str]:
    """The files under `root` this process holds open that were replaced or removed since."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
    return [n for n in held if n.startswith(f"{root}/") and n.endswith(" (deleted)")]


def test_emptying_the_trash_lets_go_of_the_shard_it_replaces(archive: Path, pristine) -> None:
    """The process that read a shard and then empties the trash of an instance in it keeps
    no descriptor to the replaced file (which would keep its disk space); the shard's other
    frames read back as before."""
    by_sop = pristine[1]
    gone, kept = (next(s for s, p in by_sop.items() if p.name == n) for n in ("05.dcm", "06.dcm"))
    with open_archive(archive, readonly=False) as opened:
        places = [opened.index.get(sop)["pixels"] for sop in (gone, kept)]  # type: ignore[index]
        per_shard = opened.pixels.grid(places[0]["array"])[0]
        assert len({(p["array"], p["first_frame"] // per_shard) for p in places}) == 1
        before = opened.export_bytes(kept)  # the shard is now open in this process
        corrections = Corrections(opened)
        corrections.apply(corrections.delete("withdrawn", "test", sop=gone))
        assert not _replaced_files_held(archive)
        assert corrections.empty_trash(older_than_days=0)[1] > 0
        assert not _replaced_files_held(archive)
        assert opened.export_bytes(kept) == before


def test_audit_trail_names_no_patient(archive: Path, pristine) -> None:
    _cli(
        "correct",
        archive,
        "merge-patient",
        "--from",
        "crlab",
        "--to",
        "PLASTIC",
        "--reason",
        "patient crlab is PLASTIC",
    )
    _correct_patient(archive, "PLASTIC", "PatientName=DOE^JANE", reason="name of DOE^JANE")
    records = list(read_records(archive))
    assert [r["action"] for r in records] == ["correct merge-patient", "correct patient"]
    assert {r["protocol"] for r in records} == {"cli"}
    assert all(r["study"] for r in records)
    text = "".join(json.dumps(r) for r in records)
    for value in ("crlab", "PLASTIC", "DOE", "JANE", "HEAD"):
        assert value not in text
    assert "PatientName" in text  # keywords are named
    assert verify_chain(archive) == []


def test_refused_while_another_writer_holds_it(archive: Path) -> None:
    with open_archive(archive, readonly=False):
        out = _correct_patient(archive, "crlab", "PatientName=X", code=2)
    assert "another process is writing" in out


@pytest.mark.parametrize("point", ["before-commit", "after-commit"])
def test_crash_mid_correction(archive: Path, pristine, tmp_path: Path, point: str) -> None:
    by_sop = pristine[1]
    single = _read(by_sop[next(s for s, p in by_sop.items() if p.name == "10.dcm")])
    fault = {FAULT_VARIABLE: point}
    _correct_patient(archive, "crlab", "PatientName=DOE^JANE", code=70, env=fault)
    # The next writer finishes a committed correction, or rolls back one that was not.
    out = _cli(
        "correct",
        archive,
        "delete",
        "--series",
        single.SeriesInstanceUID,
        "--reason",
        "x",
        code=70,
        env=fault,
    )
    assert "interrupted correction" in out
    _verify(archive)  # whichever state is visible is whole
    committed = point == "after-commit"
    assert bool(_studies(archive, PatientName="DOE^JANE")) == committed
    with open_archive(archive) as opened:
        assert (opened.index.get(single.SOPInstanceUID) is None) == committed
    _cli("trash", archive, "--list")  # read-only: shows, does not repair
    assert "interrupted correction" in _cli("trash", archive, "--empty")
    records = json.loads(_cli("correct", archive, "--list", "--json"))
    assert len(records) == (2 if committed else 0)
    assert all(r["state"] == "done" for r in records)
    assert (archive / "trash").is_dir() == committed
    # A correction finished after its process died is audited by the one that finished it.
    actions = [r["action"] for r in read_records(archive)]
    assert actions == (["correct patient", "correct delete"] if committed else [])
    if committed:
        assert any((archive / "trash").iterdir())
        _cli("trash", archive, "--restore", records[1]["id"])
        _cli("correct", archive, "--undo", records[0]["id"])
    else:
        assert not list((archive / "headers").rglob("correction-*"))
    _originals_exported(archive, tmp_path / "out", by_sop)
    _verify(archive)


def test_emptying_part_of_a_series_and_rebuild_index(archive: Path, pristine, tmp_path) -> None:
    by_sop = pristine[1]
    one = _read(by_sop[next(s for s, p in by_sop.items() if p.name == "05.dcm")])
    _correct_patient(archive, "crlab", "PatientName=DOE^JANE", reason="registration error")
    _cli("correct", archive, "delete", "--uid", one.SOPInstanceUID, "--reason", "mistake")
    pixels = next((archive / "pixels").glob(f"{one.SeriesInstanceUID}*"))
    before = _disk_bytes(pixels)
    assert "emptied 1 deletes" in _cli("trash", archive, "--empty", "--older-than", "0")
    assert _disk_bytes(pixels) < before  # its frame is out of the shard
    _verify(archive)
    # The rows files no longer hold it: a rebuilt index has the corrections, not the deleted.
    _cli("rebuild-index", archive)
    with open_archive(archive) as opened:
        assert len(opened.index) == len(by_sop) - 1
        assert opened.index.get(one.SOPInstanceUID) is None
    assert len(_studies(archive, PatientName="DOE^JANE")) == 2
    _verify(archive)
    files = _export(archive, tmp_path / "out", "--series", one.SeriesInstanceUID)
    assert len(files) == 5
    for name, path in files.items():
        assert path.read_bytes() == by_sop[name.removesuffix(".dcm")].read_bytes()


def test_rebuild_index_keeps_deleted_instances_deleted(archive: Path, pristine, tmp_path) -> None:
    by_sop = pristine[1]
    one = _read(by_sop[next(s for s, p in by_sop.items() if p.name == "05.dcm")])
    single = _read(by_sop[next(s for s, p in by_sop.items() if p.name == "10.dcm")])
    _cli("correct", archive, "delete", "--uid", one.SOPInstanceUID, "--reason", "mistake")
    _cli("correct", archive, "delete", "--series", single.SeriesInstanceUID, "--reason", "x")
    partial, whole = [c["id"] for c in json.loads(_cli("correct", archive, "--list", "--json"))]
    # The part of a series deleted in place is still in its rows file: it stays deleted.
    assert "1 rows of deleted instances were left out" in _cli("rebuild-index", archive)
    with open_archive(archive) as opened:
        assert len(opened.index) == len(by_sop) - 2
        assert opened.index.get(one.SOPInstanceUID) is None
        assert opened.query("instance", SOPInstanceUID=one.SOPInstanceUID) == []
        assert opened.query("series", SeriesInstanceUID=single.SeriesInstanceUID) == []
    _verify(archive)
    _cli("trash", archive, "--restore", partial)
    _cli("trash", archive, "--restore", whole)
    _originals_exported(archive, tmp_path / "restored", by_sop)
    # Restored: a rebuild brings them back.
    assert "deleted" not in _cli("rebuild-index", archive)
    with open_archive(archive) as opened:
        assert len(opened.index) == len(by_sop)
    # Deleted, then received again: the rows written after the delete are the instance.
    _cli("correct", archive, "delete", "--uid", one.SOPInstanceUID, "--reason", "again")
    again = tmp_path / "again" / "05.dcm"
    again.parent.mkdir()
    shutil.copyfile(by_sop[one.SOPInstanceUID], again)
    _cli("ingest", "--archive", archive, again.parent, "--workers", "0")
    _cli("rebuild-index", archive)
    with open_archive(archive) as opened:
        row = opened.index.get(one.SOPInstanceUID)
        assert row is not None and row["source_path"] == str(again)
        assert "versions" not in row  # the deleted rows are not its earlier versions
    _verify(archive)


def test_rebuilds_within_one_second_each_keep_the_index_they_replace(
    archive: Path, pristine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old index is kept as `index.damaged-<second>`: a rebuild in the same second as
    the one before (two CLI calls apart, as in the test above) keeps it as `...-2`, not
    renamed onto the first one's (which failed: directory not empty)."""
    monkeypatch.setattr(rebuild.time, "strftime", lambda *_: "20260101T000000")
    kept = [rebuild_index(archive).kept_as for _ in range(3)]
    monkeypatch.undo()
    stem = archive / "index.damaged-20260101T000000"
    assert kept == [str(stem), f"{stem}-2", f"{stem}-3"]
    assert all((Path(name) / "data.mdb").is_file() for name in kept)
    with open_archive(archive) as opened:
        assert len(opened.index) == len(pristine[1])


def test_a_deletes_source_keys_are_split_by_name_without_a_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys a delete forgets in the journal: each version's and duplicate's, and the zip
    or tar holding a member, told by the name alone: `ct::copy` is a path (even beside an
    archive folder named `ct`), `a.zip::x::y` a member of `a.zip`; no file is stat'ed."""
    monkeypatch.chdir(tmp_path)
    Archive.create(tmp_path / "ct").close()  # `ct::copy` would stat `ct/archive.json`
    earlier = {"source_path": "ct::copy", "SOPInstanceUID": "1.2"}
    row = {
        "SOPInstanceUID": "1.2",
        "source_path": "in/a.zip::x::y",
        "versions": [earlier, {"current": True}],
        "duplicates": [{"path": "b.TAR.GZ::m.dcm", "sha256": ""}, {"path": "c.dcm::z"}],
    }
    stats: list[object] = []
    real_stat = os.stat

    def counted(path: object, *args: object, **kwargs: object) -> os.stat_result:
        stats.append(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counted)
    keys = list(corrections._source_keys(row))
    monkeypatch.undo()
    assert stats == []
    assert keys == [
        "ct::copy",
        "in/a.zip::x::y",
        "in/a.zip",
        "b.TAR.GZ::m.dcm",
        "b.TAR.GZ",
        "c.dcm::z",
    ]


def test_rebuild_index_after_a_crash_amid_what_follows_a_commit(archive: Path, pristine) -> None:
    by_sop = pristine[1]
    single = _read(by_sop[next(s for s, p in by_sop.items() if p.name == "10.dcm")])
    fault = {FAULT_VARIABLE: "after-commit"}
    _cli(
        "correct",
        archive,
        "delete",
        "--series",
        single.SeriesInstanceUID,
        "--reason",
        "x",
        code=70,
        env=fault,
    )
    (record,) = [json.loads(p.read_bytes()) for p in (archive / "corrections").glob("*.json")]
    assert record["state"] == "pending"
    frm, to = record["post_moves"][0]  # the crash came after the first folder's move
    (archive / to).parent.mkdir(parents=True)
    os.rename(archive / frm, archive / to)
    # Committed, as the move shows: the rebuild finishes it (rolled back, the series would
    # have been in neither the index nor a delete to restore).
    assert "finished the interrupted correction" in _cli("rebuild-index", archive)
    with open_archive(archive) as opened:
        assert opened.query("series", SeriesInstanceUID=single.SeriesInstanceUID) == []
    assert all((archive / to).is_dir() for _, to in record["post_moves"])  # each moved
    assert "interrupted" not in _cli("trash", archive, "--empty")
    _verify(archive)
    _cli("trash", archive, "--restore", record["id"])
    _originals_exported(archive, archive.parent / "out", by_sop)
    _verify(archive)


def _pending(archive: Path) -> dict:
    (record,) = [
        r
        for r in (json.loads(p.read_bytes()) for p in (archive / "corrections").glob("*.json"))
        if r["state"] == "pending"
    ]
    return record


def test_rebuild_index_finishes_a_correction_a_crash_left_half_finished(
    archive: Path, pristine, tmp_path: Path
) -> None:
    _correct_patient(
        archive, "crlab", "PatientName=DOE^JANE", code=70, env={FAULT_VARIABLE: "after-commit"}
    )
    record = _pending(archive)
    first, second = record["new_packs"]  # crlab's two series: a pack in each folder
    rows = [
        {k: v for k, v in row.items() if k not in ("versions", "current_reason")}
        for row in record["after"].values()
        if row["header"]["pack"] == first
    ]
    (archive / rows_sidecar(first)).write_bytes(dump_rows(rows))  # died after that one
    out = _cli("rebuild-index", archive)
    # The rebuild finishes it before reading the rows files: both series' rows are there.
    assert f"finished the interrupted correction {record['id']}" in out
    assert "NOT RESTORED" not in out
    assert (archive / rows_sidecar(second)).is_file()
    with open_archive(archive) as opened:
        names = {str(r["PatientName"]) for r in opened.index if r["PatientID"] == "crlab"}
    assert names == {"DOE^JANE"}
    assert len(_studies(archive, PatientName="DOE^JANE")) == 2
    assert "interrupted" not in _cli("trash", archive, "--empty")
    assert [r["state"] for r in json.loads(_cli("correct", archive, "--list", "--json"))] == [
        "done"
    ]
    assert [r["action"] for r in read_records(archive)] == ["correct patient"]
    _verify(archive)
    _cli("correct", archive, "--undo", record["id"], "--reason", "y")
    _originals_exported(archive, tmp_path / "out", pristine[1])


def test_rebuild_index_finishes_an_undo_a_crash_left_half_finished(
    archive: Path, pristine, tmp_path: Path
) -> None:
    _correct_patient(archive, "crlab", "PatientName=DOE^JANE")
    _cli(
        "correct",
        archive,
        "--undo",
        _last_id(archive),
        "--reason",
        "y",
        code=70,
        env={FAULT_VARIABLE: "after-commit"},
    )
    undo = _pending(archive)
    (archive / undo["post_remove"][0]).unlink()  # died after removing the first pack
    assert "finished the interrupted correction" in _cli("rebuild-index", archive)
    # No series keeps the undone version (its pack is removed: verify would not read it).
    assert _studies(archive, PatientName="DOE^JANE") == []
    assert not list((archive / "headers").rglob("correction-*"))
    _cli("trash", archive, "--empty")
    _verify(archive)
    _originals_exported(archive, tmp_path / "out", pristine[1])


def test_a_rebuild_orders_a_delete_by_no_worker_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    first, again = tmp_path / "first", tmp_path / "again"
    first.mkdir()
    again.mkdir()
    for n in range(2):  # a series of two: one deleted in place, then received again
        dataset = _read(source)
        dataset.SOPInstanceUID = f"{dataset.SOPInstanceUID}.{n}"
        dataset.save_as(first / f"{n}.dcm")
    shutil.copyfile(first / "0.dcm", again / "0.dcm")
    deleted = _read(again / "0.dcm").SOPInstanceUID
    root = tmp_path / "A"
    _cli("ingest", "--archive", root, first, "--workers", "0")
    _cli("correct", root, "delete", "--uid", deleted, "--reason", "x")

    class Lagging:  # the clock of a worker on another host, an hour behind
        strftime = staticmethod(time.strftime)  # the pack's name

        @staticmethod
        def time_ns() -> int:
            return time.time_ns() - 3600 * 10**9

    monkeypatch.setattr(blobs, "time", Lagging)  # dump_rows's clock: the encoding process's
    with ingest_archive(root, readonly=False) as opened:
        assert opened.ingest([again], workers=0).archived == 1
    monkeypatch.undo()
    # Its rows file is stamped by the main process: received again after the delete.
    assert rebuild_index(root).deleted == 1
    with open_archive(root) as opened:
        row = opened.index.get(deleted)
        assert row is not None and row["source_path"] == str(again / "0.dcm")
    _verify(root)


def test_a_rebuild_keeps_deleted_what_an_earlier_correction_finished_after_the_plan(
    archive: Path, pristine
) -> None:
    by_sop = pristine[1]
    one = _read(by_sop[next(s for s, p in by_sop.items() if p.name == "00.dcm")])
    _correct_patient(
        archive, "crlab", "PatientName=DOE^JANE", code=70, env={FAULT_VARIABLE: "after-commit"}
    )
    with open_archive(archive, readonly=False) as opened:
        corrections = Corrections(opened)
        planned = corrections.delete("x", "test", sop=one.SOPInstanceUID)
        corrections.apply(planned)  # finishes the rename first: its rows file comes after
    # The rename's rows file is later than the delete's plan, but it holds a version the
    # delete took: the instance stays deleted.
    assert rebuild_index(archive).deleted == 2
    with open_archive(archive) as opened:
        assert opened.index.get(one.SOPInstanceUID) is None
        assert len(opened.index) == len(by_sop) - 1
    _verify(archive)


def test_an_instance_deleted_in_place_keeps_its_frames_from_a_later_ingest(
    tmp_path: Path,
) -> None:
    corpus = require_corpus()
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    for folder, names in ((first, CT_FILES[:5]), (second, CT_FILES[5:6])):
        folder.mkdir()
        for name in names:
            shutil.copyfile(corpus / name, folder / Path(name).name)
    archive = tmp_path / "A"
    for folder in (first, second):  # the second run's part starts a shard of its own
        _cli("ingest", "--archive", archive, folder, "--workers", "0")
    deleted = _read(second / "I60")
    _cli("correct", archive, "delete", "--uid", deleted.SOPInstanceUID, "--reason", "x")
    # Another instance of the series arrives: it must not be written over the deleted frames.
    late = _read(second / "I60")  # its layout: the same array
    late.SOPInstanceUID, late.InstanceNumber = f"{late.SOPInstanceUID}.9", 99
    late.PixelData = bytes(255 - b for b in late.PixelData)  # other pixels
    third.mkdir()
    late.save_as(third / "late.dcm")
    _cli("ingest", "--archive", archive, third, "--workers", "0")
    _cli("trash", archive, "--restore", _last_id(archive))
    _verify(archive)
    files = _export(archive, tmp_path / "out", "--uid", deleted.SOPInstanceUID)
    assert files[f"{deleted.SOPInstanceUID}.dcm"].read_bytes() == (second / "I60").read_bytes()


def test_a_series_deleted_whole_reserves_no_frames_for_its_next_ingest(tmp_path: Path) -> None:
    source = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    archive = tmp_path / "A"
    _cli("ingest", "--archive", archive, source, "--workers", "0")
    series = _read(source).SeriesInstanceUID
    _cli("correct", archive, "delete", "--series", series, "--reason", "x")
    # Its folders went to the trash: the series ingested again starts a new array at 0 (its
    # frames were taken for kept in place, and the new array began a shard later).
    _cli("ingest", "--archive", archive, source, "--workers", "0")
    with open_archive(archive) as opened:
        assert [row["pixels"]["first_frame"] for row in opened.index] == [0]
    _verify(archive)


def test_a_value_outside_ascii_makes_a_file_without_character_set_utf8(tmp_path: Path) -> None:
    # pydicom's MR_small.dcm declares no Specific Character Set (the default, ASCII).
    source = Path(pydicom.__file__).parent / "data" / "test_files" / "MR_small.dcm"
    original = _read(source)
    assert "SpecificCharacterSet" not in original
    _cli("ingest", "--archive", tmp_path / "A", source, "--workers", "0")
    _correct_patient(
        tmp_path / "A", original.PatientID, "PatientName=山田^太郎", reason="registration error"
    )
    files = _export(tmp_path / "A", tmp_path / "out")
    assert files[f"{original.SOPInstanceUID}_v1.dcm"].read_bytes() == source.read_bytes()
    corrected = _read(files[f"{original.SOPInstanceUID}.dcm"])
    assert corrected.SpecificCharacterSet == "ISO_IR 192"
    assert corrected.PatientName == "山田^太郎"
    assert _studies(tmp_path / "A", PatientName="山田^太郎")
    assert corrected.StudyDate == original.StudyDate
    assert _pixel_digest(corrected) == _pixel_digest(original)
    _verify(tmp_path / "A")


def test_a_series_appended_to_after_its_trash_is_emptied_archives_and_reads_back(
    archive: Path, pristine, tmp_path: Path
) -> None:
    """Emptying the trash leaves a deleted instance's chunks absent in a shard that keeps
    its frame count; a research copy appending to that shard then keeps the absent
    entries as absent (it failed: "a frame ... is missing from shard 0")."""
    by_sop = pristine[1]
    key = make_key(tmp_path / "key")
    research = tmp_path / "R"
    deidentify(archive, research, key, workers=0)
    # The three MR files: one series, one array, one partly full shard (in both archives).
    mr = [sop for sop, p in by_sop.items() if p.name in ("00.dcm", "01.dcm", "02.dcm")]
    with open_archive(research) as opened:
        by_array: dict[str, list] = {}
        for row in opened.index:
            if row.get("pixels"):
                by_array.setdefault(row["pixels"]["array"], []).append(row)
    array, in_shard = next(
        (a, r)
        for a, r in by_array.items()
        if a.endswith("256x256x1_u2_b12_MONOCHROME2_native") and len(r) == 3
    )
    gone = next(r for r in in_shard if r["pixels"]["first_frame"] == 1)["SOPInstanceUID"]
    _cli("correct", research, "delete", "--uid", gone, "--reason", "withdrawn")
    _cli("trash", research, "--empty", "--older-than", "0")
    # One more instance of the series in the archive of record, copied after the others.
    extra = _read(by_sop[mr[0]])
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    extra.InstanceNumber = 99
    (tmp_path / "more").mkdir()
    extra.save_as(tmp_path / "more" / "extra.dcm")
    _cli("ingest", "--archive", archive, tmp_path / "more", "--workers", "0")
    deidentify(archive, research, key, workers=0)
    with open_archive(archive) as source, open_archive(research) as copy:
        kept = [r for r in copy.index if (r.get("pixels") or {}).get("array") == array]
        # The deleted one (still in the archive of record) is copied again, after the others.
        frames = {r["SOPInstanceUID"]: r["pixels"]["first_frame"] for r in kept}
        assert len(frames) == 4 and frames[gone] >= 3 and 1 not in frames.values()
        theirs = [
            pydicom.dcmread(BytesIO(source.export_bytes(sop)))
            for sop in [*mr, extra.SOPInstanceUID]
        ]
        for row in kept:
            ours = pydicom.dcmread(BytesIO(copy.export_bytes(row["SOPInstanceUID"])))
            assert any(
                ours.InstanceNumber == t.InstanceNumber and ours.PixelData == t.PixelData
                for t in theirs
            ), row["SOPInstanceUID"]
    _verify(research)


def _round_tripping_file(path: Path, **values: str) -> None:
    """A CT file pydicom writes back byte for byte (no group lengths): a correction that
    puts a value back then makes the very bytes of the first version."""
    dataset = pydicom.dcmread(require_corpus() / "pydicom/test_files/CT_small.dcm")
    for element in list(dataset):
        if element.tag.element == 0:
            del dataset[element.tag]
    for keyword, value in values.items():
        setattr(dataset, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)


def _current(archive: Path) -> list[tuple[str, str, int]]:
    """(current Patient Name, Study Description, versions) of each instance."""
    with open_archive(archive) as opened:
        return [
            (
                str(row.get("PatientName")),
                str(row.get("StudyDescription")),
                len(opened.versions(row["SOPInstanceUID"])),
            )
            for row in opened.index
        ]


def test_a_rebuild_keeps_a_correction_that_puts_a_value_back(tmp_path: Path) -> None:
    # Its bytes are the first version's: the rebuild took it for a retried part's copy and
    # left it out, making the wrong name current again (and a tidy then removed its pack).
    _round_tripping_file(tmp_path / "src" / "a.dcm", PatientName="ORIG^NAME", PatientID="PID1")
    archive = tmp_path / "A"
    assert run_cli("ingest", "--archive", str(archive), str(tmp_path / "src")).returncode == 0
    _correct_patient(archive, "PID1", "PatientName=WRONG^NAME")
    _correct_patient(archive, "PID1", "PatientName=ORIG^NAME", reason="put back")
    live = _current(archive)
    assert [(name, versions) for name, _, versions in live] == [("ORIG^NAME", 3)]
    rebuild_index(archive)
    assert _current(archive) == live
    _cli("tidy", archive)
    _verify(archive)
    assert _current(archive) == live


def test_a_correction_finished_after_a_crash_keeps_its_place_among_the_versions(
    tmp_path: Path,
) -> None:
    # Killed after its commit, it is finished by the next writer: its rows file was stamped
    # then, after a version an ingest committed meanwhile, which a rebuild made current.
    _round_tripping_file(tmp_path / "src" / "a.dcm", PatientName="ORIG^NAME", PatientID="PID1")
    archive = tmp_path / "A"
    assert run_cli("ingest", "--archive", str(archive), str(tmp_path / "src")).returncode == 0
    fault = {FAULT_VARIABLE: "after-commit"}
    _correct_patient(archive, "PID1", "PatientName=FIXED^NAME", code=70, env=fault)
    _round_tripping_file(
        tmp_path / "later" / "a.dcm",
        PatientName="ORIG^NAME",
        PatientID="PID1",
        StudyDescription="SENT AGAIN",
    )
    assert run_cli("ingest", "--archive", str(archive), str(tmp_path / "later")).returncode == 0
    assert "interrupted correction" in _cli("trash", archive, "--empty")
    live = _current(archive)
    assert [(description, versions) for _, description, versions in live] == [("SENT AGAIN", 3)]
    rebuild_index(archive)
    assert _current(archive) == live


def test_emptying_a_delete_leaves_the_corrections_of_the_instance_received_again_whole(
    archive: Path, pristine, tmp_path: Path
) -> None:
    # The trash reduced every record naming the instance to its UIDs, those made after it
    # came back too: that correction could no longer be undone ("changed since").
    by_sop = pristine[1]
    sop = next(s for s, p in by_sop.items() if _read(p).PatientID == "crlab")
    _cli("correct", archive, "delete", "--uid", sop, "--reason", "misfiled")
    assert run_cli("ingest", "--archive", str(archive), str(by_sop[sop])).returncode == 0
    _correct_patient(archive, "crlab", "PatientName=NEW^NAME", reason="name change")
    renamed = _last_id(archive)
    _cli("trash", archive, "--empty", "--older-than", "0")
    _cli("correct", archive, "--undo", renamed)
    _originals_exported(archive, tmp_path / "out", by_sop)
    _verify(archive)


def test_a_rebuild_killed_between_its_renames_is_named_and_run_again(archive: Path) -> None:
    # Killed after the old index was renamed away, before the new one took its place:
    # every command then said "no index here", and a rerun left the first one's folder.
    code = f"""
import os, pathlib, signal
from pacs_engine.archive import rebuild
rename = pathlib.Path.rename
def killed(self, target):
    done = rename(self, target)
    if "index.damaged" in str(target):
        os.kill(os.getpid(), signal.SIGKILL)
    return done
pathlib.Path.rename = killed
rebuild.rebuild_index({str(archive)!r})
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr
    assert not (archive / "index").exists()
    with pytest.raises(ArchiveError, match="a rebuild-index was interrupted: run it again"):
        open_archive(archive)
    rebuild_index(archive)
    assert not list(archive.glob(".index.rebuilding-*"))
    _verify(archive)
