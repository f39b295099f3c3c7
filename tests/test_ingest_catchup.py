"""Day-to-day ingest through the CLI: catch-up runs skip unchanged files unread, Ctrl-C stops
cleanly and says how to resume, a resumed run's report counts every session."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import pydicom_test_files, require_corpus

from pacs_engine import Archive, open_archive
from pacs_engine.archive.corrections import Corrections
from pacs_engine.cli import main
from pacs_engine.index.keys import identity_key
from pacs_engine.ingest import inputs, run_ingest
from pacs_engine.ingest.journal import Journal
from pacs_engine.synth import write_studies

CLI = [sys.executable, "-m", "pacs_engine.cli"]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def assert_complete(report: dict[str, Any], inputs_: int) -> None:
    assert report["balanced"] and report["inputs"] == inputs_
    assert (
        report["archived"] + report["duplicates"] + report["conflicts"] + report["quarantined"]
        == inputs_
    )


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of input files opened (in this process: runs use --workers 0)."""
    paths: list[str] = []
    real = inputs._open_regular

    def counting(path: str, follow_links: bool = True) -> Any:
        paths.append(path)
        return real(path, follow_links)

    monkeypatch.setattr(inputs, "_open_regular", counting)
    return paths


def ingest(
    source: Path, archive: Path, capsys: pytest.CaptureFixture, *more: str
) -> dict[str, Any]:
    """`pacs-engine ingest SOURCE --archive ARCHIVE --workers 0 --json`: its report."""
    code = main(
        ["ingest", str(source), "--archive", str(archive), "--workers", "0", "--json", *more]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_a_catch_up_run_skips_unchanged_files_unread_and_reads_changed_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture, opened: list[str]
) -> None:
    source = tmp_path / "src"
    shutil.copytree(require_corpus() / "dcm_qa_ct", source)
    for i, path in enumerate(pydicom_test_files()[:40]):  # real oddities: quarantined ones too
        shutil.copyfile(path, source / f"pydicom-{i}-{path.name}")
    files = files_under(source)
    archive = tmp_path / "a"

    first = ingest(source, archive, capsys)
    assert_complete(first, len(files))
    assert first["unchanged"] == 0 and first["quarantined"] > 0
    assert {str(f) for f in files} <= set(opened)

    opened.clear()
    again = ingest(source, archive, capsys)
    # Not one input opened but the quarantined ones, which every run tries again.
    assert len(opened) == first["quarantined"] == again["quarantined"]
    assert again["unchanged"] == len(files) - first["quarantined"]
    assert_complete(again, first["quarantined"])

    # Touched (mtime), copied anew (another inode, same bytes), a new copy, an edited file.
    picks = [f for f in files if f.name.startswith("I")][:4]  # archived CT slices
    archived, touched, recopied, edited = picks
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    shutil.copyfile(recopied, tmp_path / "copy")
    os.replace(tmp_path / "copy", recopied)
    shutil.copyfile(archived, source / "new-copy")
    dataset = pydicom.dcmread(edited)
    dataset.StudyDescription = "corrected"
    dataset.save_as(edited)

    quarantined = set(opened)
    opened.clear()
    third = ingest(source, archive, capsys)
    changed = {str(touched), str(recopied), str(edited), str(source / "new-copy")}
    assert set(opened) == changed | quarantined
    assert third["unchanged"] == len(files) - 3 - len(quarantined)
    assert_complete(third, 4 + len(quarantined))
    assert third["duplicates"] == 3 and third["archived"] == 1 and third["versions"] == 1

    opened.clear()  # what the third run read is recorded: a fourth run reads nothing else
    fourth = ingest(source, archive, capsys)
    assert fourth["unchanged"] == len(files) + 1 - len(quarantined)
    assert set(opened) == quarantined


def test_the_same_files_under_other_sources_are_skipped_too(
    tmp_path: Path, capsys: pytest.CaptureFixture, opened: list[str]
) -> None:
    """A file's identity is recorded whatever run read it: a run of a subfolder (other
    sources, so a new run, not a resumed one) skips the files the first run read."""
    source = tmp_path / "src"
    shutil.copytree(require_corpus() / "dcm_qa_ct", source)
    archive = tmp_path / "a"
    first = ingest(source, archive, capsys)
    with open_archive(archive) as done:
        assert Journal(done.index).unfinished() == []
    sub = sorted(p for p in source.iterdir() if p.is_dir())[0]
    opened.clear()
    report = ingest(sub, archive, capsys)
    # All the first run's quarantined files (no SOP Instance UID) are in the subfolder.
    assert report["quarantined"] == len(opened) == first["quarantined"] > 0
    assert report["unchanged"] == len(files_under(sub)) - len(opened) > 0
    assert_complete(report, len(opened))


# --- Ctrl-C and resumed reports -------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 series of 160 slices, 640 files: about ten parts per series to encode."""
    out = tmp_path_factory.mktemp("synth")
    write_studies(out, 2, 2, 160, rows=256, columns=256, seed=11)
    return out


def _start(synth: Path, archive: Path) -> subprocess.Popen:
    """The ingest in a process group of its own, as a terminal's foreground job."""
    return subprocess.Popen(
        [*CLI, "ingest", str(synth), "--archive", str(archive), "--workers", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_encoding(archive: Path, process: subprocess.Popen) -> None:
    """Until a worker has written a header pack (the run is encoding), bounded."""
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if (archive / "headers").is_dir() and any(
            p.is_file() for p in (archive / "headers").rglob("*")
        ):
            return
        time.sleep(0.01)


def test_ctrl_c_stops_cleanly_and_the_resumed_report_counts_every_session(
    synth: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "a"
    process = _start(synth, archive)
    _wait_for_encoding(archive, process)  # the scan is done, parts are being encoded
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: to the whole group, workers included
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted" in err and "run the same command again to resume" in err

    with open_archive(archive) as stopped:
        (record,) = Journal(stopped.index).unfinished()
        committed = len(stopped.index)
    # The interrupted session's time is kept for the report of the resumed run.
    assert record["sessions"] == 1 and record["seconds"] > 0
    assert record["phases"].get("scan", 0) > 0
    assert committed < len(files_under(synth))

    resumed = _start(synth, archive)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    report = json.loads(out)
    assert_complete(report, len(files_under(synth)))
    assert report["duplicates"] == 0
    assert report["sessions"] == 2 and report["resumed"] == 1
    assert report["seconds"] > record["seconds"]  # both sessions, not the last one only
    assert report["phase_seconds"]["scan"] >= round(record["phases"]["scan"], 3)
    # The report rounds `seconds` to the ms and the rate to 0.1: the rate from the rounded
    # seconds differs by up to rate * 0.0005 / seconds (3.5/s at 700/s over 0.1 s) + 0.05.
    rate = report["inputs"] / report["seconds"]
    slack = rate * 0.0005 / report["seconds"] + 0.051
    assert report["instances_per_second"] == pytest.approx(rate, abs=slack)

    text = subprocess.run(
        [*CLI, "ingest", str(synth), "--archive", str(archive), "--workers", "0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{len(files_under(synth)):,} files skipped unread: unchanged" in text


def test_an_unchanged_zip_is_skipped_unopened_and_a_touched_one_read_again(
    tmp_path: Path, capsys: pytest.CaptureFixture, opened: list[str]
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    slices = [f for f in files_under(require_corpus() / "dcm_qa_ct") if f.name.startswith("I")]
    with zipfile.ZipFile(source / "study.zip", "w") as bundle:
        for i, path in enumerate(slices[:12]):
            bundle.write(path, f"slice{i}.dcm")
    shutil.copyfile(slices[20], source / "loose.dcm")
    archive = tmp_path / "a"

    first = ingest(source, archive, capsys)
    assert_complete(first, 13)
    assert first["archived"] == 13

    opened.clear()
    again = ingest(source, archive, capsys)
    assert opened == []  # neither the zip nor the loose file
    assert again["unchanged"] == 2  # the zip counts as one
    assert_complete(again, 0)

    stat = (source / "study.zip").stat()
    os.utime(source / "study.zip", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    opened.clear()
    touched = ingest(source, archive, capsys)
    assert str(source / "study.zip") in opened
    assert touched["unchanged"] == 1 and touched["duplicates"] == 12
    assert_complete(touched, 12)


def test_a_catch_up_run_archives_again_the_files_of_a_deleted_instance(
    tmp_path: Path, capsys: pytest.CaptureFixture, opened: list[str]
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    slices = [f for f in files_under(require_corpus() / "dcm_qa_ct") if f.name.startswith("I")]
    with zipfile.ZipFile(source / "study.zip", "w") as bundle:
        for i, path in enumerate(slices[:3]):
            bundle.write(path, f"slice{i}.dcm")
    for path in slices[3:5]:
        shutil.copyfile(path, source / f"{path.parent.name}-{path.name}")
    archive = tmp_path / "a"
    assert ingest(source, archive, capsys)["archived"] == 5
    loose, kept = sorted(p for p in source.iterdir() if p.suffix != ".zip")
    deleted = [pydicom.dcmread(path).SOPInstanceUID for path in (loose, slices[0])]
    with open_archive(archive, readonly=False) as opened_archive:
        corrections = Corrections(opened_archive)
        for sop in deleted:
            corrections.apply(corrections.delete("sent by mistake", "test", sop=sop))

    # Their files are read again and archived again (the zip's others are duplicates);
    # the file whose instance stayed is skipped unread.
    opened.clear()
    again = ingest(source, archive, capsys)
    assert str(kept) not in opened and again["unchanged"] == 1
    assert again["archived"] == 2 and again["duplicates"] == 2
    with open_archive(archive) as opened_archive:
        assert all(opened_archive.index.get(sop) is not None for sop in deleted)


def test_a_delete_keeps_the_catch_up_record_of_a_file_named_like_a_container_part(
    tmp_path: Path, capsys: pytest.CaptureFixture, opened: list[str]
) -> None:
    """A key is cut at `::` only after a zip, tar or archive folder: deleting the instance of
    `ct::copy` does not make the unrelated file `ct` be read again."""
    source = tmp_path / "src"
    source.mkdir()
    slices = [f for f in files_under(require_corpus() / "dcm_qa_ct") if f.name.startswith("I")]
    shutil.copyfile(slices[0], source / "ct")
    shutil.copyfile(slices[1], source / "ct::copy")
    archive = tmp_path / "a"
    assert ingest(source, archive, capsys)["archived"] == 2
    with open_archive(archive, readonly=False) as opened_archive:
        corrections = Corrections(opened_archive)
        sop = pydicom.dcmread(slices[1]).SOPInstanceUID
        corrections.apply(corrections.delete("sent by mistake", "test", sop=sop))

    opened.clear()
    again = ingest(source, archive, capsys)
    assert opened == [str(source / "ct::copy")]
    assert again["unchanged"] == 1 and again["archived"] == 1
    assert_complete(again, 1)


def test_a_run_without_catch_up_skips_nothing_and_records_no_identities(
    tmp_path: Path, opened: list[str]
) -> None:
    """`catch_up=False` (the receive spool's runs): the journal gets no `s` entry, for files
    (of a short or a long path), or a zip, and the same unchanged files given again are read
    again (as duplicates)."""
    source = tmp_path / "src"
    # A path too long to be an LMDB key: its `s` entry is keyed by a digest (`s\x01...`).
    deep = source.joinpath(*(c * 200 for c in "abc"))
    deep.mkdir(parents=True)
    slices = [f for f in files_under(require_corpus() / "dcm_qa_ct") if f.name.startswith("I")]
    files = [source / "slice0.dcm", deep / "slice1.dcm"]
    for path, copy in zip(slices, files, strict=False):
        shutil.copyfile(path, copy)
    with zipfile.ZipFile(source / "study.zip", "w") as bundle:
        bundle.write(slices[2], "slice.dcm")
    with Archive.create(tmp_path / "a") as archive:
        first = run_ingest(archive, [source], workers=0, catch_up=False).to_dict()
        # `s`: every identity entry (by key or by digest), and no other journal entry.
        assert archive.index.journal_items(b"s") == []
        opened.clear()
        again = run_ingest(archive, [source], workers=0, catch_up=False).to_dict()
        assert archive.index.journal_items(b"s") == []
        assert set(opened) == {str(p) for p in [*files, source / "study.zip"]}
        # The same calls with catch-up (the default) record them: the check above can fail.
        run_ingest(archive, [source], workers=0)
        recorded = [key for key, _ in archive.index.journal_items(b"s")]
        assert sorted(recorded) == sorted(
            map(identity_key, [str(files[0]), str(files[1]), str(source / "study.zip")])
        )
        assert identity_key(str(files[1])).startswith(b"s\x01")
    assert first["archived"] == 3 and first["unchanged"] == 0
    assert again["unchanged"] == 0 and again["duplicates"] == 3
    assert_complete(again, 3)


@pytest.mark.parametrize("delay", [0.0, 0.15])
def test_ctrl_c_while_workers_start_prints_no_traceback(
    synth: Path, tmp_path: Path, delay: float
) -> None:
    """Ctrl-C soon after the run claimed the archive, while the workers may still be
    importing (before any initializer of theirs runs): no traceback anywhere (a worker
    still starting used to print a FileNotFoundError from rebuilding its queue's
    semaphore after the pool shut down)."""
    archive = tmp_path / "a"
    process = _start(synth, archive)
    deadline = time.monotonic() + 60
    while not (archive / ".session").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "KeyboardInterrupt" not in err and "Traceback" not in err, err
    assert "run the same command again to resume" in err
