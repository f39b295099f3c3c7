"""Sessions of an ingest through the CLI: Ctrl-C in its first second stops without a
traceback and says how to resume; a session killed with kill -9 still counts in the
resumed run's report (its time is committed with its work)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pacs_engine.index import Index
from pacs_engine.ingest.journal import Journal
from pacs_engine.synth import write_studies

CLI = [sys.executable, "-m", "pacs_engine.cli"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 series of 80 slices of 256 x 256: several seconds of work for 2 workers, and a
    commit (with its session time) per series."""
    out = tmp_path_factory.mktemp("synth")
    write_studies(out, 2, 6, 80, rows=256, columns=256, seed=5)
    return out


def _start(source: Path, archive: Path) -> subprocess.Popen:
    """The ingest in a process group of its own, as a terminal's foreground job."""
    return subprocess.Popen(
        [*CLI, "ingest", str(source), "--archive", str(archive), "--workers", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.parametrize("tenths", range(1, 11))
def test_ctrl_c_in_the_first_second_prints_no_traceback(
    synth: Path, tmp_path: Path, tenths: int
) -> None:
    """SIGINT to the group 0.1 ... 1.0 s after the command starts: while Python imports the
    command, builds its parser, starts the forkserver (a KeyboardInterrupt traceback from
    an import, or a worker's FileNotFoundError, before this change)."""
    process = _start(synth, tmp_path / "a")
    time.sleep(tenths / 10)
    os.killpg(process.pid, signal.SIGINT)
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired as error:
        # Seen once in CI, not reproduced since: what each process of the session waits on.
        alive = subprocess.run(
            ["ps", "-s", str(process.pid), "-L", "-o", "pid,lwp,ppid,stat,wchan:32,etime,args"],
            capture_output=True,
            text=True,
        ).stdout
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"no end 120 s after Ctrl-C ({error.stderr!r}); the session:\n{alive}")
    assert process.returncode == 130, (out, err)
    for noise in ("Traceback", "KeyboardInterrupt", "FileNotFoundError"):
        assert noise not in err, err
    assert "run the same command again to resume" in err


def _journal_record(archive: Path) -> dict | None:
    """The unfinished run's record, read while the ingest may run (None: none yet)."""
    if not (archive / "index").is_dir():
        return None
    index = Index.open(archive / "index", readonly=True)
    try:
        runs = Journal(index).unfinished()
    finally:
        index.close()
    return runs[0] if runs else None


def test_a_session_killed_with_kill_9_counts_in_the_resumed_report(
    synth: Path, tmp_path: Path
) -> None:
    """The killed session's time, committed with its work, is in the resumed report: its
    sessions, seconds, phases and each process's stages. Killed once the scan's end is
    committed with the session's time (`session` in the journal), while most of the
    encoding is still to do; the scan phase and the main process's journal stage, which
    the resumed session does not run again, are the killed session's alone."""
    archive = tmp_path / "a"
    process = _start(synth, archive)
    deadline = time.monotonic() + 120
    record = None
    while process.poll() is None and time.monotonic() < deadline:
        record = _journal_record(archive)
        if record and record["state"] == "encoding" and record.get("session", {}).get("seconds"):
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert record is not None and record["state"] == "encoding", record
    killed = _journal_record(archive)
    assert killed is not None and killed["seconds"] == 0.0  # it never saved its time itself
    session = killed["session"]
    assert session["seconds"] > 0 and session["phases"]["scan"] > 0
    stages = session["stages"]  # [CPU, wall] by process and stage
    assert stages["main"]["journal"][1] > 0  # the scan batches it recorded
    workers = [name for name in stages if name.startswith("worker ")]
    assert workers and all(stages[name]["scan"][0] > 0 for name in workers), stages

    resumed = _start(synth, archive)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    report = json.loads(out)
    assert report["balanced"] and report["archived"] == sum(
        1 for p in synth.rglob("*") if p.is_file()
    )
    assert report["sessions"] == 2 and report["resumed"] == 1
    assert report["seconds"] >= session["seconds"]
    assert report["phase_seconds"]["scan"] >= round(session["phases"]["scan"], 3) > 0
    encoded = session["phases"].get("encode", 0.0)
    assert report["phase_seconds"]["encode"] >= round(encoded, 3)
    reported = report["stage_seconds"]
    for process, times in stages.items():
        for name, (cpu, wall) in times.items():
            assert reported[process][name]["cpu"] >= round(cpu, 3) - 0.001, (process, name)
            assert reported[process][name]["wall"] >= round(wall, 3) - 0.001, (process, name)
