"""The bulk-migration orchestrator: parallel equals serial, resume after kill -9, full disk,
Dask, completeness on malformed files, duplicates and conflicts across runs."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import pydicom_test_files, require_corpus
from crash_helpers import Crashing

from pacs_engine import Archive, open_archive
from pacs_engine.archive import pixel_store
from pacs_engine.archive.blobs import PENDING_SUFFIX
from pacs_engine.archive.prepare import frame_hash
from pacs_engine.ingest import IngestStopped
from pacs_engine.scanning import scan
from pacs_engine.storage import series_folders
from pacs_engine.synth import write_studies

CLI = [sys.executable, "-m", "pacs_engine.cli"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 series of 48 slices (CT and MR, every synthetic transfer syntax), 192 files."""
    out = tmp_path_factory.mktemp("synth")
    write_studies(out, 2, 2, 48, rows=192, columns=192, seed=7)
    return out


@pytest.fixture(scope="module")
def clean(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The state an uninterrupted in-process run gives, and its report."""
    path = tmp_path_factory.mktemp("clean") / "a"
    with Archive.create(path) as archive:
        report = archive.ingest([synth], workers=0)
    return {"state": state(path), "report": report.to_dict(), "path": path}


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def state(path: Path) -> dict[str, tuple]:
    """What must not depend on how a run went: each instance's pixels, source and duplicates."""
    with open_archive(path) as archive:
        return {
            row["SOPInstanceUID"]: (
                # Read back, not the rows' hashes: original bitstreams have none.
                tuple(frame_hash(f) for f in archive.frames(row["SOPInstanceUID"]))
                if row["pixels"]
                else (),
                row["source_sha256"],
                sorted(d["sha256"] for d in row["duplicates"]),
            )
            for row in archive.index
        }


def unreferenced(path: Path) -> list[str]:
    """Files and frames of the archive that no committed row reaches (must be none)."""
    with open_archive(path) as archive:
        rows = list(archive.index)
        packs = {row["header"]["pack"] for row in rows}
        ends: dict[str, int] = {}
        used: dict[str, set[int]] = {}
        for row in rows:
            pixels = row.get("pixels")
            if pixels:
                per_shard, _ = archive.pixels.grid(pixels["array"])
                first, last = pixels["first_frame"], pixels["first_frame"] + pixels["frames"]
                ends[pixels["array"]] = max(ends.get(pixels["array"], 0), last)
                used.setdefault(pixels["array"], set()).update(
                    range(first // per_shard, (last - 1) // per_shard + 1)
                )
        found = [
            str(p)
            for p in (path / "headers").rglob("*")
            # A pack's rows file (X.rows beside X.pack) is used when its pack is.
            if p.is_file() and str(p.with_suffix(".pack").relative_to(path)) not in packs
        ]
        arrays = {
            str(p.parent.relative_to(path / "pixels"))
            for p in (path / "pixels").glob("*/*/zarr.json")
        }
        for array in arrays:
            if array not in ends:
                found.append(f"array {array} has no rows")
                continue
            if archive.pixels.frames(array) != ends[array]:
                found.append(f"array {array} has {archive.pixels.frames(array)} frames")
            found += [str(p) for p in archive.pixels.unreferenced_files(array, used[array])]
        found += [str(p) for p in path.rglob("*.tmp")]
        return found


def assert_complete(report: dict[str, Any], inputs: int) -> None:
    assert report["balanced"]
    assert report["inputs"] == inputs
    assert (
        report["archived"] + report["duplicates"] + report["conflicts"] + report["quarantined"]
        == inputs
    )


def test_two_workers_give_the_archive_one_process_gives(
    synth: Path, clean: dict, tmp_path: Path
) -> None:
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([synth], workers=2).to_dict()
        assert archive.verify().ok
    assert_complete(report, len(files_under(synth)))
    assert report["archived"] == clean["report"]["archived"] == len(files_under(synth))
    assert report["workers"] == 2
    phases = report["phase_seconds"]
    assert set(phases) == {"scan", "encode", "tidy"} and min(phases.values()) > 0
    assert sum(phases.values()) <= report["seconds"]
    assert state(tmp_path / "a") == clean["state"]
    assert unreferenced(tmp_path / "a") == []
    written = json.loads(next((tmp_path / "a" / "reports").glob("ingest-*.json")).read_text())
    assert {k: written[k] for k in report if k != "seconds"} == {
        k: v for k, v in report.items() if k != "seconds"
    }


def _start(synth: Path, archive: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "ingest", str(synth), "--archive", str(archive), "--workers", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def clean_cli_seconds(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    """Wall time of an uninterrupted CLI run: the scale for random kill points."""
    started = time.perf_counter()
    process = _start(synth, tmp_path_factory.mktemp("timed") / "a")
    process.communicate(timeout=300)
    assert process.returncode == 0
    return time.perf_counter() - started


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_resume_after_kill_9_equals_an_uninterrupted_run(
    seed: int, synth: Path, clean: dict, clean_cli_seconds: float, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    archive = tmp_path / "a"
    kills = 0
    for _ in range(1 + seed % 2):  # seeds 1 and 3 kill twice before the final run
        for attempt in range(6):
            process = _start(synth, archive)
            time.sleep(rng.uniform(0.15, 0.9) * clean_cli_seconds / (attempt + 1))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)  # the main process only: workers live on
            process.communicate()
            if process.returncode == -signal.SIGKILL and not list(archive.glob("reports/*")):
                kills += 1  # killed before the run's end
                break
            shutil.rmtree(archive)  # finished before the kill: start again, kill sooner
    assert kills == 1 + seed % 2
    committed = 0
    if (archive / "archive.json").exists():  # the last kill may land before the archive exists
        with open_archive(archive) as opened:
            committed = len(opened.index)
    final = _start(synth, archive)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    report = json.loads(out)
    assert_complete(report, len(files_under(synth)))
    assert report["archived"] == len(files_under(synth)) and report["duplicates"] == 0
    assert report["resumed"] <= kills
    if committed:  # rows were committed, so the run had started: this session resumed it
        assert report["resumed"] >= 1
    assert state(archive) == clean["state"]
    assert unreferenced(archive) == []
    with open_archive(archive) as opened:
        assert opened.verify().ok


def fill_disk_after(writes: int, monkeypatch: pytest.MonkeyPatch) -> Callable:
    """Make the archive's pixel writes fail with ENOSPC after `writes` of them; returns the
    real write, to put back."""
    write, calls = pixel_store.write_atomic, {"n": 0}

    def fill_up(path: Any, data: bytes, dirs: Any = None, **options: Any) -> None:
        calls["n"] += 1
        if calls["n"] > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write(path, data, dirs, **options)

    monkeypatch.setattr(pixel_store, "write_atomic", fill_up)
    return write


def test_a_full_disk_stops_the_run_and_it_resumes(
    synth: Path, clean: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write = fill_disk_after(3, monkeypatch)
    with Archive.create(tmp_path / "a") as archive, pytest.raises(IngestStopped) as stopped:
        archive.ingest([synth], workers=0)
    assert "No space left on device" in str(stopped.value)
    assert "run the same ingest again to resume" in str(stopped.value)
    with open_archive(tmp_path / "a") as archive:
        assert archive.verify().ok  # what was committed is whole
        committed = len(archive.index)
    assert 0 < committed < len(files_under(synth))
    monkeypatch.setattr(pixel_store, "write_atomic", write)
    with open_archive(tmp_path / "a", readonly=False) as archive:
        report = archive.ingest([synth], workers=0).to_dict()
    assert_complete(report, len(files_under(synth)))
    assert report["resumed"] == 1 and report["duplicates"] == 0
    # The scan ran in the first session only: its time is carried over from the journal.
    assert report["phase_seconds"]["scan"] > 0 and report["phase_seconds"]["encode"] > 0
    assert state(tmp_path / "a") == clean["state"]
    assert unreferenced(tmp_path / "a") == []


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    return subprocess.run(command, capture_output=True).returncode == 0


def test_a_really_full_disk_stops_the_cli_and_it_resumes_once_space_is_back(
    synth: Path, clean: dict, tmp_path: Path
) -> None:
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount_tmpfs(disk, "3m"):
        pytest.skip("mounting a small tmpfs needs root (the injected ENOSPC test still runs)")
    try:
        archive = disk / "a"
        stopped = _start(synth, archive)
        out, err = stopped.communicate(timeout=300)
        assert stopped.returncode == 3, (out, err)
        assert "No space left on device" in err and "resume" in err
        subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        with open_archive(archive) as opened:
            committed = len(opened.index)
            assert opened.verify().ok
        assert committed < len(files_under(synth))
        resumed = _start(synth, archive)
        out, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
        report = json.loads(out)
        assert_complete(report, len(files_under(synth)))
        assert report["resumed"] >= 1 and report["duplicates"] == 0
        assert state(archive) == clean["state"]
        assert unreferenced(archive) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_dask_executor_gives_the_archive_the_local_pool_gives(
    synth: Path, clean: dict, tmp_path: Path
) -> None:
    from distributed import LocalCluster

    from pacs_engine.ingest import DaskExecutor

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        executor = DaskExecutor(cluster.scheduler_address)
        try:
            with Archive.create(tmp_path / "a") as archive:
                report = archive.ingest([synth], executor=executor).to_dict()
        finally:
            executor.close()
    assert report["workers"] == 2
    assert_complete(report, len(files_under(synth)))
    assert state(tmp_path / "a") == clean["state"]
    assert unreferenced(tmp_path / "a") == []


@pytest.mark.parametrize("trusted", [False, True], ids=["default", "trusted"])
def test_every_malformed_corpus_file_is_accounted_for(trusted: bool, tmp_path: Path) -> None:
    """Every input is counted once; by default whatever is archived decodes; trusting
    bitstreams, the only thing verify finds later is frames that do not decode."""
    malformed = require_corpus() / "malformed"
    inputs = files_under(malformed)
    assert inputs
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([malformed], workers=2, trust_bitstreams=trusted).to_dict()
        records = archive.quarantine.records()
        quarantined = archive.quarantine.paths()
        checked = archive.verify()
    if not trusted:
        assert checked.ok, checked.mismatches
    for mismatch in checked.mismatches:
        assert "cannot read back" in mismatch["problem"], mismatch
    assert_complete(report, len(inputs))
    assert report["quarantined"] >= 1
    assert len(quarantined) == report["quarantined"] + report["conflicts"]
    assert len(set(quarantined)) == len(quarantined)
    assert all(r["reason"] for r in records)
    assert sum(report["quarantine_reasons"].values()) == report["quarantined"]


def test_duplicates_versions_and_conflicts_across_two_runs(synth: Path, tmp_path: Path) -> None:
    """Byte-identical copies are duplicates; another header with the same pixels a new
    version, current from then on; other pixels a conflict."""
    first = files_under(synth)[:30]
    source = tmp_path / "first"
    for i, path in enumerate(first):
        target = source / f"{i:03d}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    second = tmp_path / "second"
    shutil.copytree(source, second / "copies")
    changed = pydicom.dcmread(first[0])
    changed.PatientID = "SOMEONE-ELSE"
    changed.save_as(second / "changed.dcm")
    other = pydicom.dcmread(first[1])
    pixels = other.pixel_array.copy()
    pixels[0, 0] ^= 1
    other.PixelData = pixels.tobytes()
    other.save_as(second / "other_pixels.dcm")
    with Archive.create(tmp_path / "a") as archive:
        one = archive.ingest([source], workers=2).to_dict()
        two = archive.ingest([second], workers=2).to_dict()
        assert archive.verify().ok
        row = archive.index.get(changed.SOPInstanceUID)
        old, new = archive.versions(changed.SOPInstanceUID)
        assert archive.export_bytes(changed.SOPInstanceUID, 0) == first[0].read_bytes()
        assert archive.export_bytes(changed.SOPInstanceUID) == (second / "changed.dcm").read_bytes()
        conflict = [r for r in archive.quarantine.records() if r["reason"].startswith("conflict")]
    assert one["archived"] == 30
    assert_complete(two, 32)
    assert (two["archived"], two["versions"], two["duplicates"], two["conflicts"]) == (1, 1, 30, 1)
    assert one["run"] != two["run"]
    assert len(row["duplicates"]) == 1
    assert row["PatientID"] == "SOMEONE-ELSE" and row["source_path"] == str(second / "changed.dcm")
    assert [v["run"] for v in row["versions"]] == [one["run"], two["run"]]
    assert row["current_reason"].startswith("received last")
    assert (
        old["source_path"] == str(source / "000.dcm")
        and new["source_sha256"] == row["source_sha256"]
    )
    assert old["pixels"] == new["pixels"]  # native pixels: shared, not stored twice
    assert "different pixels" in conflict[0]["reason"]
    assert conflict[0]["path"] == str(second / "other_pixels.dcm")


def test_cli_ingest_shows_progress_and_explains_itself(synth: Path, tmp_path: Path) -> None:
    help_text = subprocess.run([*CLI, "ingest", "--help"], capture_output=True, text=True).stdout
    for flag in ("--workers", "--executor", "--scheduler", "resume", ".zip"):
        assert flag in help_text
    done = subprocess.run(
        [*CLI, "ingest", str(synth), "--archive", str(tmp_path / "a"), "--progress"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "MB/s raw" in done.stderr and "ratio" in done.stderr and "encoding" in done.stderr
    assert f"{len(files_under(synth))} inputs" in done.stdout.replace(",", "")


def test_zip_and_tar_sources_archive_what_the_folder_gives(
    synth: Path, clean: dict, tmp_path: Path
) -> None:
    import tarfile
    import zipfile

    files = files_under(synth)
    thirds = [files[0::3], files[1::3], files[2::3]]
    with zipfile.ZipFile(tmp_path / "one.zip", "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in thirds[0]:
            zipped.write(path, path.relative_to(synth).as_posix())
    with tarfile.open(tmp_path / "two.tar", "w") as tar:
        for path in thirds[1]:
            tar.add(path, path.relative_to(synth).as_posix())
    with tarfile.open(tmp_path / "three.tar.gz", "w:gz") as tar:
        for path in thirds[2]:
            tar.add(path, path.relative_to(synth).as_posix())
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really a zip")
    sources = [tmp_path / n for n in ("one.zip", "two.tar", "three.tar.gz", "bad.zip")]
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest(sources, workers=2).to_dict()
        assert archive.verify().ok
        paths = {row["source_path"] for row in archive.index}
        bad = [r for r in archive.quarantine.records() if r["path"].endswith("bad.zip")]
    assert_complete(report, len(files) + 1)
    assert report["archived"] == len(files) and report["quarantined"] == 1
    assert state(tmp_path / "a") == clean["state"]
    assert any("::" in p and p.startswith(str(tmp_path / "three.tar.gz")) for p in paths)
    assert bad and "zip" in bad[0]["reason"]
    assert unreferenced(tmp_path / "a") == []


def test_a_folder_that_vanishes_mid_run_is_quarantined_not_fatal(
    synth: Path, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    shutil.copytree(synth, source)
    series_folders = sorted({p.parent for p in files_under(source)}, key=lambda p: p.name)
    doomed = series_folders[-1]  # series are encoded in UID order: this one comes last
    gone = {str(p) for p in files_under(doomed)}

    def vanish(progress: Any) -> None:
        if progress.phase == "encoding" and doomed.exists():
            shutil.rmtree(doomed)

    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([source], workers=0, progress=vanish).to_dict()
        records = {r["path"]: r["reason"] for r in archive.quarantine.records()}
        assert archive.verify().ok
    assert_complete(report, len(files_under(synth)))
    assert report["quarantined"] == len(gone) and report["archived"] == len(files_under(source))
    assert set(records) == gone
    assert all("No such file" in reason for reason in records.values())


def test_long_and_non_utf8_paths_are_archived_and_exported(tmp_path: Path) -> None:
    source = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    deep = tmp_path / "in" / ("d" * 200) / ("e" * 200) / ("f" * 200)  # keys > LMDB's 511 bytes
    deep.mkdir(parents=True)
    long_path = deep / "CT_small.dcm"
    shutil.copy(source, long_path)
    odd = tmp_path / "in" / os.fsdecode(b"caf\xe9-\xff.dcm")  # Latin-1 name on a UTF-8 system
    changed = pydicom.dcmread(source)
    changed.SOPInstanceUID = "1.2.3.4.5.6.7"
    changed.save_as(odd)
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([tmp_path / "in"], workers=0).to_dict()
        paths = {row["source_path"] for row in archive.index}
        assert archive.export_bytes("1.2.3.4.5.6.7") == odd.read_bytes()
        assert archive.verify().ok
    assert (report["inputs"], report["archived"]) == (2, 2)
    assert paths == {str(long_path), str(odd)}


def planned_inputs(journal: Any, run: str) -> int:
    """How many inputs the run's plan still holds (every series of it)."""
    count, series = 0, None
    while series := journal.next_series(run, series):
        count += sum(1 for _ in journal.series(run, series))
    return count


def test_an_abandoned_run_leaves_the_journal_and_its_sources_start_a_new_run(
    synth: Path, clean: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pacs-engine tidy --abandon RUN` drops a stopped run's plan (an abandon that is
    interrupted leaves no run to resume, and finishes when repeated); the same sources then
    make a new run, which finds what the old one archived as duplicates."""
    from pacs_engine.ingest import journal as journal_module
    from pacs_engine.ingest.journal import Journal

    write = fill_disk_after(3, monkeypatch)
    with Archive.create(tmp_path / "a") as archive, pytest.raises(IngestStopped):
        archive.ingest([synth], workers=0)
    monkeypatch.setattr(pixel_store, "write_atomic", write)
    with open_archive(tmp_path / "a", readonly=False) as archive:
        journal = Journal(archive.index)
        (record,) = journal.unfinished()
        committed = len(archive.index)
        before = planned_inputs(journal, record["run"])
        # The disk fills after the run is marked and one page of its plan is dropped.
        monkeypatch.setattr(journal_module, "_PAGE", 2)
        commit, calls = archive.index.commit, {"n": 0}

        def fills_up(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] > 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return commit(*args, **kwargs)

        monkeypatch.setattr(archive.index, "commit", fills_up)
        with pytest.raises(OSError):
            journal.abandon(record["run"])
        monkeypatch.setattr(archive.index, "commit", commit)
        assert journal.unfinished() == []
        planned = planned_inputs(journal, record["run"])
    assert before - 2 == planned > 0

    wrong = subprocess.run(
        [*CLI, "tidy", str(tmp_path / "a"), "--abandon", "no-such-run"],
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and "not an unfinished run" in wrong.stderr
    twice = ["--abandon", record["run"]] * 2
    result = subprocess.run(
        [*CLI, "tidy", str(tmp_path / "a"), *twice], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    said = f"abandoned ingest run {record['run']}: {planned:,} planned inputs"
    assert result.stdout.count(said) == 1
    assert "unfinished ingest run" not in result.stdout
    with open_archive(tmp_path / "a") as archive:
        journal = Journal(archive.index)
        assert journal.unfinished() == []
        assert planned_inputs(journal, record["run"]) == 0
        assert len(list(journal.outcomes(record["run"]))) == committed  # their record stays

    with open_archive(tmp_path / "a", readonly=False) as archive:
        report = archive.ingest([synth], workers=0).to_dict()
    assert_complete(report, len(files_under(synth)))
    assert report["run"] != record["run"] and report["resumed"] == 0
    assert (report["archived"], report["duplicates"]) == (
        len(files_under(synth)) - committed,
        committed,
    )
    # The same pixels and files as a clean run; the old run's instances, met again, also
    # list their own file as a duplicate.
    again = state(tmp_path / "a")
    assert {uid: v[:2] for uid, v in again.items()} == {
        uid: v[:2] for uid, v in clean["state"].items()
    }
    assert sum(v[2] == [v[1]] for v in again.values()) == committed
    assert unreferenced(tmp_path / "a") == []


@contextmanager
def second_scan_batch_failing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within: the second scan task of a run fails (EIO), stopping its scan midway."""
    from pacs_engine.ingest import tasks

    scan_task, calls = tasks.scan_task, {"n": 0}

    def second_batch_fails(root: str, keys: list[str], *rest: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO), root)
        return scan_task(root, keys, *rest)

    monkeypatch.setattr(tasks, "scan_task", second_batch_fails)
    try:
        yield
    finally:
        monkeypatch.setattr(tasks, "scan_task", scan_task)


def test_a_run_stopped_while_scanning_resumes_without_counting_anything_twice(
    synth: Path, clean: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = [synth, tmp_path / "missing"]  # a source that is not there: quarantined once
    with (
        second_scan_batch_failing(monkeypatch),
        Archive.create(tmp_path / "a") as archive,
        pytest.raises(IngestStopped) as stopped,
    ):
        archive.ingest(sources, workers=0)
    assert "Input/output error" in str(stopped.value)
    with open_archive(tmp_path / "a", readonly=False) as archive:
        report = archive.ingest(sources, workers=0).to_dict()
    assert_complete(report, len(files_under(synth)) + 1)
    assert report["quarantined"] == 1 and report["resumed"] == 1
    assert state(tmp_path / "a") == clean["state"]


@pytest.mark.parametrize("change", ["series", "number"])
def test_a_file_changed_while_a_stopped_scan_waits_is_planned_once(
    synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    # Planned by the stopped session, then changed: the resumed scan planned it again, and
    # both entries were encoded (one file counted twice and quarantined as changed, or
    # archived as a duplicate of itself).
    from pacs_engine.ingest import run as ingest_run

    source = tmp_path / "src"
    shutil.copytree(synth, source)
    files = files_under(source)
    monkeypatch.setattr(ingest_run, "SCAN_RECORD", 1)  # the first batch's plan journaled
    with (
        second_scan_batch_failing(monkeypatch),
        Archive.create(tmp_path / "a") as archive,
        pytest.raises(IngestStopped),
    ):
        archive.ingest([source], workers=0)
    changed = pydicom.dcmread(files[0])
    if change == "series":
        changed.SeriesInstanceUID = changed.SeriesInstanceUID + ".9"
    else:
        changed.InstanceNumber = int(changed.InstanceNumber) + 1000
    changed.save_as(files[0])
    with open_archive(tmp_path / "a", readonly=False) as archive:
        report = archive.ingest([source], workers=0).to_dict()
        row = archive.index.get(str(changed.SOPInstanceUID))
    assert_complete(report, len(files))
    assert (report["archived"], report["resumed"]) == (len(files), 1)
    assert row is not None and row["source_path"] == str(files[0]) and not row["duplicates"]
    assert row["SeriesInstanceUID"] == changed.SeriesInstanceUID


def test_uids_the_index_cannot_key_are_quarantined_not_fatal(tmp_path: Path) -> None:
    source = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(source, folder / "good.dcm")
    long_uid = pydicom.dcmread(source)
    long_uid.SOPInstanceUID = "1." + "2" * 250
    long_uid.save_as(folder / "long.dcm")
    escaping = pydicom.dcmread(source)  # series UIDs name folders: this one would leave the archive
    escaping.SeriesInstanceUID = "../../escaped"
    escaping.SOPInstanceUID = "1.2.3.4"
    escaping.save_as(folder / "escaping.dcm")
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([folder], workers=0).to_dict()
        reasons = {Path(r["path"]).name: r["reason"] for r in archive.quarantine.records()}
    assert (report["archived"], report["quarantined"]) == (1, 2)
    assert "SOPInstanceUID is longer than 200 bytes" in reasons["long.dcm"]
    assert "path separator" in reasons["escaping.dcm"]
    assert not (tmp_path / "escaped").exists()


POISON = "poison.dcm"


def test_a_file_that_crashes_a_worker_is_quarantined_and_the_run_goes_on(
    synth: Path, clean: dict, tmp_path: Path
) -> None:
    poison = tmp_path / POISON
    shutil.copy(next(p for p in pydicom_test_files() if p.name == "CT_small.dcm"), poison)
    executor = Crashing(2, POISON)
    try:
        with Archive.create(tmp_path / "a") as archive:
            report = archive.ingest([synth, poison], executor=executor).to_dict()
            reasons = {r["path"]: r["reason"] for r in archive.quarantine.records()}
            assert archive.verify().ok
    finally:
        executor.close()
    assert_complete(report, len(files_under(synth)) + 1)
    assert (report["archived"], report["quarantined"]) == (len(files_under(synth)), 1)
    assert "the encoding process died on this file" in reasons[str(poison)]
    assert state(tmp_path / "a") == clean["state"]
    assert unreferenced(tmp_path / "a") == []


def test_tidy_removes_what_a_killed_run_left_and_the_run_still_resumes(
    synth: Path, clean: dict, clean_cli_seconds: float, tmp_path: Path
) -> None:
    """After kill -9 and no resume, `pacs-engine tidy` leaves only what committed rows use,
    names the unfinished run, and refuses to run beside an ingest; resuming still works."""
    archive = tmp_path / "a"
    delay = 0.5
    for _ in range(10):  # kill once some series' header pack is written, before the end
        process = _start(synth, archive)
        time.sleep(delay * clean_cli_seconds)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        finished = bool(list(archive.glob("reports/*")))
        if not finished and list(archive.glob("headers/*/*.pack")):
            break
        delay *= 0.7 if finished else 1.3
        shutil.rmtree(archive, ignore_errors=True)
    else:
        pytest.fail("no kill landed between the first header pack and the end of the run")
    series = next(p.name for p in (archive / "headers").iterdir())
    orphan = archive / "headers" / series / "20000101T000000-abandoned.pack"
    orphan.write_bytes(b"x" * 1000)  # what a killed worker wrote, whatever the kill timing
    (archive / ".archive.json.stale.tmp").write_bytes(b"{")
    # A series group's zarr.json a killed worker was writing (its batch's writes deferred to
    # the batch's end: CI saw one left after a worker's crash).
    group = next(p for p in (archive / "pixels").iterdir() if p.is_dir())
    (group / ".zarr.json.99999.tmp").write_bytes(b"{")
    with open_archive(archive) as opened:
        committed = {
            uid: clean["state"][uid] for uid in (r["SOPInstanceUID"] for r in opened.index)
        }

    with open_archive(archive, readonly=False):  # as an ingest holds it
        refused = subprocess.run([*CLI, "tidy", str(archive)], capture_output=True, text=True)
        assert refused.returncode == 2 and "another process is writing" in refused.stderr
    assert orphan.exists()

    result = subprocess.run([*CLI, "tidy", str(archive)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "unfinished ingest run" in result.stdout and str(synth) in result.stdout
    assert not orphan.exists() and not list(archive.glob(".*.tmp"))
    assert unreferenced(archive) == []
    assert state(archive) == committed
    with open_archive(archive) as opened:
        assert opened.verify().ok

    final = _start(synth, archive)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert_complete(json.loads(out), len(files_under(synth)))
    assert state(archive) == clean["state"]
    assert unreferenced(archive) == []


def test_the_tidy_step_searches_each_series_folder_for_pending_rows_files_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest's tidy step renames the pending rows files of committed parts in all its
    series before it removes anything (`mark_series_committed`), then tidies each series
    without searching its folders for them again."""
    write_studies(tmp_path / "dcm", 1, 3, 2, rows=32, columns=32, syntaxes=("explicit",))
    searched: list[str] = []
    glob = Path.glob

    def counted(self: Path, pattern: str, *args: Any, **kwargs: Any) -> Any:
        if pattern.endswith(PENDING_SUFFIX):
            searched.append(self.name)
        return glob(self, pattern, *args, **kwargs)

    with Archive.open_or_create(tmp_path / "a") as archive:
        with monkeypatch.context() as patch:
            patch.setattr(Path, "glob", counted)
            archive.ingest([tmp_path / "dcm"], workers=0)
        series = {row["SeriesInstanceUID"] for row in archive.index}
    assert len(series) == 3
    assert sorted(searched) == sorted(name for uid in series for name in series_folders(uid))


def test_a_late_conflict_keeps_the_bytes_of_a_linked_input_the_run_follows(
    tmp_path: Path,
) -> None:
    """An input whose SOP UID another series committed after its worker looked is a
    conflict found at the commit, which reads the input again to keep it: with the
    run's policy (here, following links), so its bytes are kept, not only its name."""
    from pacs_engine.archive.report import Outcome
    from pacs_engine.ingest.encode import Checks
    from pacs_engine.ingest.inputs import InputPolicy
    from pacs_engine.ingest.run import _Run

    source = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    data = source.read_bytes()
    link = tmp_path / "inputs" / "ct.dcm"
    link.parent.mkdir()
    link.symlink_to(source)
    sha256 = hashlib.sha256(data).hexdigest()
    ds = pydicom.dcmread(source)
    row: dict[str, Any] = {
        "SOPInstanceUID": ds.SOPInstanceUID,
        "StudyInstanceUID": ds.StudyInstanceUID,
        "SeriesInstanceUID": ds.SeriesInstanceUID,
        "source_path": str(link),
        "source_sha256": sha256,
        "pixel_hash": None,
    }
    prior = {**row, "SeriesInstanceUID": "1.2.3.4", "source_sha256": "0" * 64}
    checks = Checks(inputs=InputPolicy(follow_links=True))
    with Archive.create(tmp_path / "archive") as archive:
        run = _Run(archive, [], 0, None, checks, None)
        outcome = run._late_conflict(
            prior, str(link), row, {}, Outcome(str(link), "archived", len(data))
        )
        assert outcome.outcome == "conflict" and "SeriesInstanceUID" in (outcome.reason or "")
        [record] = archive.quarantine.records()
        assert record["path"] == str(link)
        assert (tmp_path / "archive" / "quarantine" / f"{sha256}.dcm").read_bytes() == data


def test_staged_results_stay_in_memory_until_the_bound_then_wait_on_disk_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pacs_engine.archive.report import Outcome
    from pacs_engine.ingest import run as run_module
    from pacs_engine.ingest.encode import Part, PartResult

    def result(n: int) -> PartResult:
        part = Part("1.2.3", 64 * n, 64, (f"in-{n}",))
        return PartResult(part, outcomes=[Outcome(f"in-{n}", "archived", n)])

    small = run_module._Staged(str(tmp_path))
    small.add(result(0))
    small.add(result(1))
    assert small.file is None  # a few parts: no pickling round trip
    assert [r.part.keys for r in small] == [("in-0",), ("in-1",)]
    small.close()

    monkeypatch.setattr(run_module, "STAGED_INPUTS", 2)
    large = run_module._Staged(str(tmp_path))
    for n in range(4):
        large.add(result(n))
    assert large.file is not None and len(large.held) == 1  # the first three went to disk
    assert [r.outcomes[0].size for r in large] == [0, 1, 2, 3]
    assert [r.outcomes[0].size for r in large] == [0, 1, 2, 3]  # read again: the same
    large.close()
    assert large.file.closed


def test_series_results_past_the_memory_bound_commit_what_held_ones_do(
    synth: Path, clean: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pacs_engine.ingest import run as run_module

    monkeypatch.setattr(run_module, "STAGED_INPUTS", 0)  # every part's results to disk
    files: list[Any] = []
    made = run_module.tempfile.TemporaryFile

    def counted(*args: Any, **kwargs: Any) -> Any:
        files.append(made(*args, **kwargs))
        return files[-1]

    monkeypatch.setattr(run_module.tempfile, "TemporaryFile", counted)
    with Archive.create(tmp_path / "a", frames_per_shard=16) as archive:
        report = archive.ingest([synth], workers=0).to_dict()
    assert len(files) >= 4 and all(f.closed for f in files)  # one a series, each dropped
    assert_complete(report, len(files_under(synth)))
    assert state(tmp_path / "a") == clean["state"]
    assert unreferenced(tmp_path / "a") == []


def test_a_commit_raises_its_arrays_counts_together_and_the_cli_then_exits_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that raises two arrays' frame counts writes both zarr.json files in one
    `write_together` (synced from the sync threads); a commit that raises none (only
    duplicates) writes nothing. The idle sync threads left do not keep the CLI from ending
    at once (`_exit_at_once` reaches `exit_flushed`)."""
    from pacs_engine import cli, forkserver
    from pacs_engine.ingest import run

    files = [p for p in pydicom_test_files() if p.name in ("CT_small.dcm", "MR_small.dcm")]
    writes: list[list[Path]] = []
    write_together = run.write_together

    def spy(files: list[tuple[Path, bytes]]) -> None:
        writes.append([path for path, _ in files])
        write_together(files)

    monkeypatch.setattr(run, "write_together", spy)
    with Archive.create(tmp_path / "archive") as archive:
        assert archive.ingest(files, workers=0).archived == 2
        assert [sorted(p.name for p in paths) for paths in writes] == [["zarr.json"] * 2]
        copies = tmp_path / "copies"  # other paths: read again, not skipped as unchanged
        copies.mkdir()
        for path in files:
            shutil.copy(path, copies)
        assert archive.ingest([copies], workers=0).duplicates == 2
        assert len(writes) == 1  # no write of nothing for the duplicates' commit
    assert any(t.name.startswith("fsync_") for t in threading.enumerate())
    exits: list[int] = []
    monkeypatch.setattr(cli.atexit, "_run_exitfuncs", lambda: None)  # pytest's own stay
    monkeypatch.setattr(forkserver, "exit_flushed", exits.append)
    cli._exit_at_once(3)
    assert exits == [3]


def test_each_row_holds_its_files_attributes_first_and_names_its_array_by_layout(
    clean: dict[str, Any],
) -> None:
    """A row starts with the scanned attributes in tag order (its stored JSON keeps that
    order), and its frames are in the array its layout names: native frames in the
    `_native` array, bitstreams in their codec's."""
    seen = set()
    with open_archive(clean["path"]) as archive:
        for row in archive.index:
            data = Path(row["source_path"]).read_bytes()
            attributes = dict(scan(data).attributes)
            assert list(row)[: len(attributes)] == list(attributes)
            assert {k: row[k] for k in attributes} == attributes
            ds = pydicom.dcmread(row["source_path"], stop_before_pixels=True)
            kind = "i" if ds.PixelRepresentation else "u"
            layout = (
                f"{ds.Rows}x{ds.Columns}x{ds.SamplesPerPixel}_{kind}{ds.BitsAllocated // 8}"
                f"_b{ds.BitsStored}_{ds.PhotometricInterpretation}_"
            )
            array = row["pixels"]["array"].rsplit("/", 1)[1]
            assert array.startswith(layout), (array, layout)
            storage = array.removeprefix(layout)
            native = not ds.file_meta.TransferSyntaxUID.is_compressed
            assert (storage == "native") == native, (storage, ds.file_meta.TransferSyntaxUID)
            seen.add(native)
    assert seen == {True, False}


def _in_study(source: Path, out: Path, study: str, patient: str, number: int) -> str:
    """A copy of `source` as instance `number` of series 9.5 in `study`, of `patient`."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"9.1.{number}"
    ds.SeriesInstanceUID, ds.StudyInstanceUID = "9.5", study
    ds.PatientID, ds.InstanceNumber = patient, number
    ds.save_as(out / f"{number}.dcm", enforce_file_format=True)
    return str(ds.SOPInstanceUID)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("apart", [False, True], ids=["one run", "two runs"])
def test_a_series_uid_in_two_studies_keeps_the_first_study_and_quarantines_the_other(
    tmp_path: Path, workers: int, apart: bool
) -> None:
    """A Series Instance UID given by instances of two studies (of two patients): the
    series' record took the last row's study, so the other study vanished from the index
    and its instance answered queries for the other patient. Its study's instances are
    indexed; another study's are conflicts, quarantined (nothing lost)."""
    source = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    kept = [_in_study(source, first, "9.10", "PA", n) for n in (1, 2)]
    other = _in_study(source, first if not apart else second, "9.20", "PB", 3)
    with Archive.create(tmp_path / "archive") as archive:
        if apart:
            assert archive.ingest([first], workers=workers).archived == 2
        report = archive.ingest([first, second] if apart else [first], workers=workers)
        assert report.conflicts == 1
        assert sorted(r["SOPInstanceUID"] for r in archive.index) == kept
        assert [r["SOPInstanceUID"] for r in archive.query("instance", PatientID="PA")] == kept
        assert archive.query("instance", PatientID="PB") == []
        assert archive.index.study_record("9.10") is not None
        (record,) = (tmp_path / "archive" / "quarantine").glob("*.json")
        quarantined = json.loads(record.read_text())
        assert quarantined["sop_instance_uid"] == other
        assert quarantined["reason"] == "conflict: its series is in study 9.10 already"
