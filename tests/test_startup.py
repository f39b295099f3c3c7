"""Start-up of a command (issue 18): what it imports, and when an ingest's first encode began.

pydicom and zarr each take a quarter of a second or more to import, in the ingesting
process and in the workers' forkserver, before the first frame is encoded: a parser
built for any command, and an ingest of uncompressed files, must import neither.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pydicom
import pydicom.uid
import pytest
import zarr
from conftest import run_cli
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword

from pacs_engine import Archive, executors
from pacs_engine.archive.prepare import LOSSLESS_SYNTAXES
from pacs_engine.cli import build_parser
from pacs_engine.codecs.deflate import DEFLATED_IMAGE_FRAME_COMPRESSION
from pacs_engine.header import PIXEL_TAG_KEYWORDS
from pacs_engine.lazy import when_imported
from pacs_engine.scanning import HEADER_KEYWORDS, HEADER_TAGS, MULTI_VALUED_KEYWORDS
from pacs_engine.synth import SYNTAXES, write_studies

LIMIT_S = 300  # bound on one command


def _probe(code: str, env: dict[str, str] | None = None) -> str:
    """What a fresh interpreter running `code` prints (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=LIMIT_S
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _synth_uncompressed(folder: Path) -> list[Path]:
    """A few small uncompressed files: two series, explicit and implicit VR."""
    return write_studies(
        folder, 1, 2, 3, rows=16, columns=16, syntaxes=["explicit", "implicit"], threads=1
    )


def _frame_sums_zarr_reads(archive: Path) -> list[int]:
    """The sum of each frame zarr reads from an archive's pixel store, in order of the sums."""
    frames = [
        frame
        for _, series in zarr.open_group(archive / "pixels", mode="r").groups()
        for _, array in series.arrays()
        for frame in array[:]
    ]
    return sorted(int(frame.sum()) for frame in frames)


def _frame_sums_pydicom_reads(files: list[Path]) -> list[int]:
    """The sum of each file's pixels as pydicom reads them, in order of the sums."""
    return sorted(int(pydicom.dcmread(path).pixel_array.sum()) for path in files)


def test_building_the_parser_imports_neither_pydicom_nor_zarr_nor_numpy() -> None:
    """Every command, even `--help`, builds the whole parser first."""
    probe = (
        "import sys; from pacs_engine.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('pydicom', 'zarr', 'numpy', 'tqdm') if m in sys.modules))"
    )
    assert _probe(probe) == "[]"


def test_a_command_line_builds_its_commands_parser_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`pacs-engine ingest ...` imports no other command's module (about 0.03 s of CPU),
    and its parser reads a command line as the whole parser does."""
    probe = (
        "import sys; from pacs_engine.cli import build_parser; build_parser('rebuild-index'); "
        "print(sorted(m for m in sys.modules if m.startswith('pacs_engine.cli.')))"
    )
    assert _probe(probe) == "['pacs_engine.cli._common', 'pacs_engine.cli.rebuild_index']"
    argv = ["ingest", "in", "--archive", "a", "--workers", "3", "--codec", "lz4", "--json"]
    assert vars(build_parser("ingest").parse_args(argv)) == vars(build_parser().parse_args(argv))
    with pytest.raises(SystemExit):  # not a command: the whole parser says which are
        build_parser("no-such-command").parse_args(["no-such-command"])
    assert "'ingest'" in capsys.readouterr().err


def test_the_ingesting_process_imports_no_numcodecs_before_its_first_encode() -> None:
    """What `pacs-engine ingest` imports to run (its command, the archive, the executors)
    leaves numcodecs (~0.05 s; Blosc compression) to the workers, which encode, and numpy
    and imagecodecs (~0.08 s; what encodes and decodes pixels) to where they are used: an
    ingest's main process locates, encodes and compresses no pixels."""
    probe = (
        "import sys; from pacs_engine.cli import build_parser; build_parser(); "
        "import pacs_engine.ingest.archive, pacs_engine.executors; "
        "print([m for m in ('numcodecs', 'numpy', 'imagecodecs') if m in sys.modules], "
        "'pacs_engine.archive.blobs' in sys.modules)"
    )
    assert _probe(probe) == "[] True"


#: Modules on the ingesting process's path that use numpy or imagecodecs, each importing
#: them where it uses them (the native scanner too, for encapsulated pixel data alone).
PIXEL_FREE_IMPORTS = [
    "pacs_engine._native.scanner",
    "pacs_engine.scanning",
    "pacs_engine.header",
    "pacs_engine.codecs",
    "pacs_engine.archive.blobs",
    "pacs_engine.archive.pixel_store",
    "pacs_engine.archive.prepare",
    "pacs_engine.archive.archive",
    "pacs_engine.ingest.encode",
    "pacs_engine.ingest.tasks",
]


@pytest.mark.parametrize("module", PIXEL_FREE_IMPORTS)
def test_a_module_of_the_ingesting_process_imports_no_numpy_nor_imagecodecs(module: str) -> None:
    probe = (
        f"import sys, {module}; print([m for m in ('numpy', 'imagecodecs') if m in sys.modules])"
    )
    assert _probe(probe) == "[]"


def test_what_a_scan_and_an_encode_use_numpy_for_imports_it_then(tmp_path: Path) -> None:
    """Encapsulated pixel data's fragment tables (the native scanner), a native pixel
    location's empty tables and a shard's index are numpy arrays made on first use."""
    files = write_studies(
        tmp_path / "in", 1, 1, 2, rows=16, columns=16, syntaxes=["rle", "explicit"], threads=1
    )
    probe = (
        "import sys\n"
        "from pacs_engine.scanning import scan\n"
        "from pacs_engine.codecs.sharding import shard_index\n"
        f"headers = [scan(path) for path in {[str(f) for f in files]!r}]\n"
        "print(sorted(type(h.pixel.fragment_offsets).__name__ for h in headers), "
        "shard_index([3, None]).hex()[:64], 'numpy' in sys.modules)\n"
    )
    empty, length = "ff" * 8, (3).to_bytes(8, "little").hex()
    assert _probe(probe) == f"['ndarray', 'ndarray'] {'00' * 8}{length}{empty}{empty} True"


def test_the_forkserver_preloads_no_numcodecs_a_worker_imports_it_at_its_first_blosc_chunk(
    tmp_path: Path,
) -> None:
    """numcodecs (~0.03 s of CPU) is left out of the forkserver's preload, before the first
    fork; a worker that compresses Blosc chunks (--codec lz4) imports it and writes chunks
    zarr reads as the frames pydicom reads."""
    probe = (
        "import sys; from importlib import import_module; "
        "from pacs_engine.forkserver import FORKSERVER_PRELOAD; "
        "[import_module(name) for name in [*FORKSERVER_PRELOAD, 'pacs_engine.cli']]; "
        "print([m for m in ('numcodecs', 'numpy', 'imagecodecs') if m in sys.modules])"
    )
    assert _probe(probe) == "['numpy', 'imagecodecs']"  # what every worker encodes with
    files = _synth_uncompressed(tmp_path / "in")
    archive = tmp_path / "archive"
    done = run_cli(
        "ingest",
        str(tmp_path / "in"),
        "--archive",
        str(archive),
        "--codec",
        "lz4",
        "--workers",
        "1",
    )
    assert done.returncode == 0, done.stderr
    assert "6 inputs: 6 archived" in done.stdout
    assert _frame_sums_zarr_reads(archive) == _frame_sums_pydicom_reads(files)


def test_the_forkserver_starts_before_the_executors_are_imported() -> None:
    """`pacs-engine` starts the workers' forkserver with multiprocessing's imports alone:
    the executors (concurrent.futures, the crash isolation: ~0.02 s of CPU) would delay
    it, and so the first encode; they are imported afterwards."""
    probe = (
        "import sys; import pacs_engine.cli; from pacs_engine.forkserver import start_forkserver; "
        "start_forkserver(); "
        "print(sorted(m for m in ('concurrent.futures', 'pacs_engine.executors', "
        "'pacs_engine.workers', 'numpy') if m in sys.modules))"
    )
    assert _probe(probe) == "[]"


#: A main module for the forkserver to preload (`start_forkserver`): notes in a file, by
#: process id, when its process runs its exit functions and when its teardown collects it.
TEARDOWN_NOTES = """
import atexit, os


def _note(event, path=os.environ["TEARDOWN_NOTES"], pid=os.getpid(), open=open):
    with open(path, "a") as notes:
        notes.write(f"{pid} {event}\\n")


class _Noted:
    def __del__(self, note=_note):
        note("teardown")


atexit.register(_note, "atexit")
noted = _Noted()
"""


def _teardown_notes(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose processes can import `teardown_notes`, and the file it notes in."""
    (tmp_path / "teardown_notes.py").write_text(TEARDOWN_NOTES)
    notes = tmp_path / "notes.txt"
    env = dict(os.environ, TEARDOWN_NOTES=str(notes))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    return env, notes


def test_the_forkserver_ends_without_the_interpreters_teardown(tmp_path: Path) -> None:
    """The forkserver, once its caller has gone, runs its exit functions and ends without
    the interpreter's teardown (it held the caller's stdout and stderr meanwhile: 0.1-0.2 s
    under load); a process that imports the same modules, the caller, keeps its teardown."""
    env, notes = _teardown_notes(tmp_path)
    probe = (
        "import multiprocessing.forkserver, os, teardown_notes\n"
        "from pacs_engine.executors import LocalExecutor, start_forkserver\n"
        "start_forkserver('teardown_notes'); pool = LocalExecutor(1)\n"
        "print(os.getpid(), pool.submit(os.getppid).result()); pool.close()\n"
    )
    # Its output read to the end: the forkserver, which held it too, has ended.
    caller, forkserver = _probe(probe, env).split()
    lines = sorted(notes.read_text().splitlines())
    assert lines == sorted([f"{caller} atexit", f"{caller} teardown", f"{forkserver} atexit"]), (
        lines
    )


def test_a_users_own_forkserver_that_imports_pacs_engine_keeps_its_teardown(
    tmp_path: Path,
) -> None:
    """A forkserver the caller started itself (multiprocessing's command line, its preload
    importing pacs_engine.forkserver first) runs its exit functions and its teardown:
    only the one `start_forkserver` starts, with its mark, ends without them, and the
    caller's environment keeps no mark."""
    env, notes = _teardown_notes(tmp_path)
    probe = (
        "import concurrent.futures, multiprocessing, os\n"
        "context = multiprocessing.get_context('forkserver')\n"
        "context.set_forkserver_preload(['pacs_engine.forkserver', 'teardown_notes'])\n"
        "with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:\n"
        "    print(pool.submit(os.getppid).result())\n"
        "from pacs_engine.forkserver import start_forkserver\n"
        "start_forkserver()\n"
        "print(sorted(name for name in os.environ if name.startswith('PACS_ENGINE_FORK')))\n"
    )
    # Its output read to the end: the forkserver, which held it too, has ended.
    forkserver, marks = _probe(probe, env).splitlines()
    assert marks == "[]"
    lines = sorted(notes.read_text().splitlines())
    assert lines == sorted([f"{forkserver} atexit", f"{forkserver} teardown"]), lines


@pytest.mark.parametrize(
    ("progress", "expected"),
    [("--no-progress", "0 False False"), ("--progress", "0 True True")],
)
def test_an_ingest_imports_tqdm_only_to_show_its_progress_bar(
    tmp_path: Path, progress: str, expected: str
) -> None:
    """tqdm (~0.015 s of CPU in the ingesting process) is imported for a bar shown alone,
    and the run makes its Progress snapshots only for a bar to show them."""
    _synth_uncompressed(tmp_path / "in")
    argv = ["ingest", str(tmp_path / "in"), "--archive", str(tmp_path / "a"), "--workers", "0"]
    probe = (
        "import contextlib, io, sys\n"
        "from pacs_engine.cli import main\n"
        "from pacs_engine.ingest import run\n"
        "made, Progress = [], run.Progress\n"
        "run.Progress = lambda *fields: made.append(fields) or Progress(*fields)\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    status = main({[*argv, progress]!r})\n"
        "print(status, 'tqdm' in sys.modules, bool(made))\n"
    )
    assert _probe(probe) == expected


def test_the_synth_help_lists_every_syntax_it_writes() -> None:
    """The names are imported only when the help is shown, and all of them are shown."""
    done = run_cli("synth", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert f"of {', '.join(SYNTAXES)} (default: all)" in text


def test_an_uncompressed_ingest_imports_no_pydicom_nor_zarr_in_any_of_its_processes(
    tmp_path: Path,
) -> None:
    """`-X importtime` lists every import of the command, of its forkserver (which the
    workers fork from) and of each worker after the fork: none is pydicom's, nor zarr's
    (the workers encode with the frame coders and write zarr.json and shards themselves)."""
    files = _synth_uncompressed(tmp_path / "in")
    archive = tmp_path / "archive"
    cmd = [sys.executable, "-X", "importtime", "-m", "pacs_engine.cli", "ingest"]
    cmd += [str(tmp_path / "in"), "--archive", str(archive), "--workers", "2", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 inputs: 6 archived" in done.stdout
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines()]
    # numpy is listed by each process that imported it: the forkserver alone (the flag
    # reached it, and the workers forked from it). The command, which encodes nothing,
    # imports it not even for its tidy (its arrays' shards: `PixelStore.layout`).
    assert imported.count("numpy") == 1
    assert [name for name in imported if name.split(".")[0] in ("pydicom", "zarr")] == []
    # What the workers wrote is what zarr reads, through the codecs its entry points name:
    # the frames pydicom reads from the inputs.
    assert _frame_sums_zarr_reads(archive) == _frame_sums_pydicom_reads(files)


@pytest.mark.parametrize(("given", "expected"), [(None, "1 None"), ("3", "3 3")])
def test_workers_start_with_one_blas_thread_unless_the_caller_says(
    given: str | None, expected: str
) -> None:
    """A worker sees OPENBLAS_NUM_THREADS=1 (numpy then starts no thread per core) where
    the caller's environment does not set it, and the caller's environment is left as it
    was; a value the caller sets is the workers' too."""
    probe = (
        "import os; from pacs_engine.executors import LocalExecutor; pool = LocalExecutor(1); "
        "print(pool.submit(os.getenv, 'OPENBLAS_NUM_THREADS').result(), "
        "os.getenv('OPENBLAS_NUM_THREADS')); pool.close()"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    assert _probe(probe, env) == expected


@pytest.mark.parametrize(
    ("main_module", "expected"), [("'pacs_engine.synth'", "True"), ("", "False")]
)
def test_the_forkserver_preloads_the_callers_main_module(main_module: str, expected: str) -> None:
    """Each worker imports its caller's main module again as it starts (the CLI's package for
    `pacs-engine`): named to `start_forkserver`, it is imported once, before the forks."""
    probe = (
        "from pacs_engine.executors import LocalExecutor, start_forkserver; "
        f"start_forkserver({main_module}); pool = LocalExecutor(1); "
        "print(pool.submit(eval, \"'pacs_engine.synth' in __import__('sys').modules\").result()); "
        "pool.close()"
    )
    assert _probe(probe) == expected


def test_a_local_pool_forks_one_worker_first_and_the_others_as_tasks_need_them() -> None:
    """The first worker forks as soon as the forkserver is ready, not when the caller sends
    its first task (which would then wait for the forkserver's imports and the fork); tasks
    sent one at a time, each on the last one's result, fork no other; tasks in flight
    together fork one each, up to the pool's size."""
    probe = (
        "import multiprocessing, os, time\n"
        "from pacs_engine.executors import LocalExecutor\n"
        "pool = LocalExecutor(4)\n"
        "deadline = time.monotonic() + 60\n"
        "while not multiprocessing.active_children() and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "counts = [len(multiprocessing.active_children())]\n"
        "for _ in range(5):\n"
        "    pool.submit(os.getpid).result()\n"
        "counts.append(len(multiprocessing.active_children()))\n"
        "together = [pool.submit(time.sleep, 0.5) for _ in range(3)]\n"
        "counts.append(len(multiprocessing.active_children()))\n"
        "together += [pool.submit(time.sleep, 0.5) for _ in range(3)]\n"
        "counts.append(len(multiprocessing.active_children()))\n"
        "print(counts); pool.close()\n"
    )
    assert _probe(probe) == "[1, 1, 3, 4]"


def test_a_one_file_ingest_forks_one_worker(tmp_path: Path) -> None:
    """On a pool of four, a one-file ingest (one scan task, then one encode task) forks one
    worker: a many-core host does not start a process per core for it."""
    (path,) = write_studies(tmp_path / "in", 1, 1, 1, rows=16, columns=16, threads=1)
    probe = (
        "import multiprocessing\n"
        "from pacs_engine import Archive\n"
        "from pacs_engine.executors import LocalExecutor\n"
        "pool = LocalExecutor(4)\n"
        f"with Archive.create({str(tmp_path / 'archive')!r}) as archive:\n"
        f"    report = archive.ingest([{str(path)!r}], executor=pool)\n"
        "print(report.archived, len(multiprocessing.active_children())); pool.close()\n"
    )
    assert _probe(probe) == "1 1"


def test_workers_that_cannot_be_forked_early_leave_the_error_to_the_first_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The thread that forks a pool's first worker ends quietly when it cannot (an error
    from a thread prints "Exception in thread" over the CLI's output); the caller's own
    submit meets the same error and reports it."""

    def cannot_spawn(pool: executors._Pool) -> None:  # no process left for the user
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    uncaught: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: uncaught.append(args.exc_value))
    monkeypatch.setattr(executors._Pool, "_spawn_process", cannot_spawn)
    context = multiprocessing.get_context("forkserver")
    pool = executors._Pool(2, context, executors._start_worker, (os.getpid(),))
    thread = threading.Thread(target=pool.fork_first)
    thread.start()
    thread.join(LIMIT_S)
    assert not thread.is_alive() and uncaught == []
    executor = object.__new__(executors.LocalExecutor)  # its pool alone, no forkserver
    executor.pool = pool
    with pytest.raises(OSError, match=os.strerror(errno.EAGAIN)):
        executor.submit(os.getpid)
    executor.close()


#: Loaded by `pacs-engine` below: the workers' forkserver does not start its preload until
#: the process that started it has exited (at most FORKSERVER_HELD_S).
SLOW_FORKSERVER = """
import os, sys, time

if "multiprocessing.forkserver" in " ".join(sys.orig_argv):
    parent, deadline = os.getppid(), time.monotonic() + float(os.environ["FORKSERVER_HELD_S"])
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.02)
"""
FORKSERVER_HELD_S = 120


def test_an_ingest_whose_archive_cannot_be_opened_exits_before_the_forkserver_is_ready(
    tmp_path: Path,
) -> None:
    """The command's error comes at once, alone: it waits neither for the forkserver's
    preload (which here waits for the command's exit) nor for the fork of the first worker,
    which no forkserver serves after the command has gone (it would print a traceback)."""
    _synth_uncompressed(tmp_path / "in")
    (tmp_path / "not-an-archive").mkdir()
    (tmp_path / "not-an-archive" / "notes.txt").write_text("mine\n")
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "sitecustomize.py").write_text(SLOW_FORKSERVER)
    env = dict(os.environ, FORKSERVER_HELD_S=str(FORKSERVER_HELD_S))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "probe"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pacs_engine.cli", "ingest", str(tmp_path / "in")]
    cmd += ["--archive", str(tmp_path / "not-an-archive"), "--workers", "2"]
    # Its output's end: once every process that holds the pipes (the forkserver too) exited.
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=FORKSERVER_HELD_S / 2
    )
    assert done.returncode == 2
    assert (
        done.stderr
        == f"pacs-engine ingest: {tmp_path / 'not-an-archive'}: exists and is not empty\n"
    )
    assert (tmp_path / "not-an-archive" / "notes.txt").read_text() == "mine\n"


def test_a_pool_closed_before_its_first_fork_leaves_a_forkserver_the_next_pool_starts() -> None:
    """Closed at once (the forkserver still importing), a pool stops the forkserver; the
    next pool starts another, with its preload, and its worker runs tasks."""
    probe = (
        "import multiprocessing.forkserver as fs, os; "
        "from pacs_engine.executors import LocalExecutor; "
        "first = LocalExecutor(1); server = fs._forkserver._forkserver_pid; first.close(); "
        "pool = LocalExecutor(1); restarted = fs._forkserver._forkserver_pid; "
        "print(restarted not in (None, server), os.path.exists(f'/proc/{server}'), "
        "pool.submit(eval, \"'pacs_engine.ingest.tasks' in __import__('sys').modules\")"
        ".result()); pool.close()"
    )
    assert _probe(probe) == "True False True"


def test_a_pool_closed_before_its_first_fork_leaves_the_forkserver_another_pool_uses() -> None:
    """Each worker's sentinel is a pipe its forkserver holds: a pool closed before its first
    fork while another pool is live leaves the forkserver running, and the other pool's task
    in flight and its next task complete."""
    probe = (
        "import multiprocessing, os, time; from pacs_engine import executors; "
        "pool = executors.LocalExecutor(1); pool.submit(os.getpid).result(); "
        "running = pool.submit(time.sleep, 0.5); "
        "other = executors._Pool(1, multiprocessing.get_context('forkserver'), "
        "executors._start_worker, (os.getpid(),)); "  # its first worker not forked yet
        "other.close(); "
        "print(running.result(), pool.submit(os.getpid).result() in pool.pool._processes); "
        "pool.close()"
    )
    assert _probe(probe) == "None True"


def test_a_pool_closed_before_its_first_fork_leaves_a_users_forkserver_process_alive() -> None:
    """A process the caller started with the forkserver context (a DataLoader's worker, say;
    the default context from Python 3.14) outlives a pool closed before its first fork: the
    forkserver, which holds its sentinel, is not stopped under it."""
    probe = (
        "import multiprocessing, os, time; from pacs_engine.executors import LocalExecutor; "
        "user = multiprocessing.get_context('forkserver').Process(target=time.sleep, args=(3,)); "
        "user.start(); LocalExecutor(1).close(); "
        "print(user.is_alive(), os.path.exists(f'/proc/{user.pid}')); user.join()"
    )
    assert _probe(probe) == "True True"


def test_a_first_fork_that_comes_after_close_stopped_the_forkserver_forks_nothing() -> None:
    """The thread forking a pool's first worker may reach the fork just after `close` stopped
    the forkserver: it then forks nothing, where multiprocessing would start another
    forkserver from that thread (not deaf to Ctrl-C) and `close` would wait for its preload."""
    probe = (
        "import multiprocessing, multiprocessing.forkserver as fs, os; "
        "from pacs_engine import executors; executors.start_forkserver(); "
        "server = fs._forkserver._forkserver_pid; "
        "pool = executors._Pool(1, multiprocessing.get_context('forkserver'), "
        "executors._start_worker, (os.getpid(),)); "
        "stop = executors.stop_forkserver; "
        "executors.stop_forkserver = lambda: (stop(), pool.fork_first()); "  # the thread, late
        "pool.close(); "
        "print(fs._forkserver._forkserver_pid == server, multiprocessing.active_children())"
    )
    assert _probe(probe) == "True []"


def test_a_worker_whose_caller_ends_as_it_starts_prints_no_traceback() -> None:
    """A command that ends while a worker it asked for is still starting (an ingest whose
    archive cannot be opened, as its first worker forks) leaves that worker without its
    data, or with its queues' semaphores gone, which the caller's exit functions unlink just
    before it ends: the worker ends without a traceback on the command's stderr. A worker
    that fails to start while its caller goes on prints one."""
    code = (
        "import os, sys, time, multiprocessing.forkserver as fs; "
        "from pacs_engine import forkserver; "
        "forkserver.start_forkserver(); "
        # A fork asked for as a pool does: the pid comes back once the worker is forked.
        "status, data = fs._forkserver.connect_to_new_process([]); "
        "print(fs.read_signed(status), flush=True); "
        "how = sys.argv[1]; "
        # Its data never sent: the worker reads the end of it as the caller ends.
        "how == 'cut' and os._exit(0); "
        # Data it cannot start from, then the caller ends soon after, or goes on.
        "os.write(data, b'not a pickle'); os.close(data); "
        "time.sleep(0.1 if how == 'ends' else forkserver.CALLER_GRACE_S + 1.5); "
        "os._exit(0)"  # at once, as the command ends
    )
    for how in ("cut", "ends", "goes on"):
        done = subprocess.run(
            [sys.executable, "-c", code, how], capture_output=True, text=True, timeout=LIMIT_S
        )
        assert done.returncode == 0 and int(done.stdout.split()[0]) > 0  # a worker was forked
        if how == "goes on":
            assert "Traceback" in done.stderr and "UnpicklingError" in done.stderr, how
        else:
            assert done.stderr == "", how


def test_a_worker_whose_queue_semaphore_is_gone_prints_no_traceback() -> None:
    """A Ctrl-C as a worker starts: the caller shuts its pool down, unlinking the queues'
    semaphores, and the worker finds them gone as it unpickles its queues. The caller may
    take longer than CALLER_GRACE_S to end (waiting for its other workers on a loaded
    machine: seen once in CI, a FileNotFoundError traceback after the command's line)."""
    code = (
        "import io, os, multiprocessing, multiprocessing.context as context, "
        "multiprocessing.forkserver as fs, multiprocessing.reduction as reduction, "
        "multiprocessing.synchronize as synchronize, time; "
        "from pacs_engine import forkserver; "
        "forkserver.start_forkserver(); "
        "lock = multiprocessing.get_context('forkserver').Lock(); "
        "buffer = io.BytesIO(); context.set_spawning_popen(object()); "
        "reduction.ForkingPickler(buffer).dump(lock); context.set_spawning_popen(None); "
        "synchronize.SemLock._cleanup(lock._semlock.name); "  # the pool's shutdown
        "status, data = fs._forkserver.connect_to_new_process([]); "
        "print(fs.read_signed(status), flush=True); "
        "os.write(data, buffer.getvalue()); os.close(data); "
        "time.sleep(forkserver.CALLER_GRACE_S + 1.5); "  # the caller lingers
        "os._exit(0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=LIMIT_S
    )
    assert done.returncode == 0 and int(done.stdout.split()[0]) > 0  # a worker was forked
    assert done.stderr == ""


def test_a_forkserver_that_died_restarts_with_its_preload_and_quiet_blas() -> None:
    """After a worker and the forkserver died, the restarted pool's workers still come from a
    forkserver that preloaded the caller's main module and started with QUIET_BLAS."""
    probe = (
        "import multiprocessing.forkserver as fs, os, signal; "
        "from pacs_engine.executors import LocalExecutor, start_forkserver; "
        "start_forkserver('pacs_engine.synth'); pool = LocalExecutor(1); "
        "pool.submit(os._exit, 1).exception(); "  # the worker dies: the pool is broken
        "server = fs._forkserver._forkserver_pid; os.kill(server, signal.SIGKILL); "
        "os.waitid(os.P_PID, server, os.WEXITED | os.WNOWAIT); "  # dead, left for its reaper
        "pool.restart(); "
        "print(pool.submit(eval, \"('pacs_engine.synth' in __import__('sys').modules, "
        "__import__('os').environ.get('OPENBLAS_NUM_THREADS'))\").result()); "
        "pool.close()"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    assert _probe(probe, env) == "(True, '1')"


#: Loaded by each `pacs-engine` command below: notes its exit functions, and the teardown
#: of its modules (an object of this module deleted as the interpreter finalizes). The exit
#: function prints too: stdout, a pipe here, is block-buffered.
EXIT_PROBE = """
import atexit, os, sys

class _Probe:
    def __del__(self, write=os.write, open=os.open, flags=os.O_WRONLY | os.O_APPEND):
        fd = open(os.environ["EXIT_NOTES"], flags)
        write(fd, b"teardown\\n")

if os.environ.get("EXIT_NOTES") and os.path.basename(sys.argv[0]) in ("-m", "__main__.py"):
    PROBE = _Probe()
    atexit.register(lambda: open(os.environ["EXIT_NOTES"], "a").write("atexit\\n"))
    atexit.register(print, "printed at exit")
"""


def test_the_ingest_command_exits_without_the_interpreters_teardown(tmp_path: Path) -> None:
    """`pacs-engine ingest` ends once its exit functions ran and its output, theirs included,
    is flushed, without tearing its modules down (0.05-0.1 s); another command ends as
    Python ends."""
    _synth_uncompressed(tmp_path / "in")
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "sitecustomize.py").write_text(EXIT_PROBE)
    notes = tmp_path / "notes.txt"
    env = dict(os.environ, EXIT_NOTES=str(notes))
    env.pop("PYTHONUNBUFFERED", None)  # stdout block-buffered, as a pipe's usually is
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "probe"), env.get("PYTHONPATH", "")])
    archive = str(tmp_path / "archive")
    outputs = []
    for args, expected in [
        (["ingest", str(tmp_path / "in"), "--archive", archive, "--json"], "atexit\n"),
        (["info", archive], "atexit\nteardown\n"),
    ]:
        notes.write_text("")
        done = subprocess.run(
            [sys.executable, "-m", "pacs_engine.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=LIMIT_S,
        )
        assert done.returncode == 0, done.stderr
        assert notes.read_text() == expected, args[0]
        report, _, printed = done.stdout.rpartition("printed at exit\n")
        assert report and not printed, args[0]  # printed by the exit function, last
        outputs.append(report)
    assert json.loads(outputs[0])["archived"] == 6  # the whole report, flushed


def test_header_tags_are_the_data_dictionarys() -> None:
    """The scanner's tags and VRs, kept without pydicom, are pydicom's (first VR of "US or SS")."""
    assert list(HEADER_TAGS) == list(HEADER_KEYWORDS)
    for keyword, (tag, vr) in HEADER_TAGS.items():
        assert tag == tag_for_keyword(keyword), keyword
        assert vr == dictionary_VR(tag)[:2], keyword
    several = {k for k in HEADER_KEYWORDS if dictionary_VM(tag_for_keyword(k)) != "1"}
    assert several == MULTI_VALUED_KEYWORDS


def test_pixel_data_keywords_are_the_data_dictionarys() -> None:
    """The keyword of each pixel data tag the scanner locates, as pydicom names it."""
    assert {tag: keyword_for_tag(tag) for tag in PIXEL_TAG_KEYWORDS} == PIXEL_TAG_KEYWORDS


def test_the_lossless_syntaxes_are_pydicoms_by_name() -> None:
    """Kept as UIDs (prepare imports no pydicom), they are the syntaxes pydicom names."""
    names = [
        "JPEGLossless",
        "JPEGLosslessSV1",
        "JPEGLSLossless",
        "JPEG2000Lossless",
        "HTJ2KLossless",
        "HTJ2KLosslessRPCL",
        "RLELossless",
    ]
    expected = {getattr(pydicom.uid, name) for name in names} | {DEFLATED_IMAGE_FRAME_COMPRESSION}
    assert expected == LOSSLESS_SYNTAXES


@pytest.fixture
def module_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module not imported yet, importable from tmp_path (forgotten afterwards)."""
    name = f"startup_probe_{time.monotonic_ns()}"
    (tmp_path / f"{name}.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_when_imported_acts_once_the_module_is_imported(module_file: str) -> None:
    """The action runs after the module's own code, once, and the module keeps its loader."""
    seen: list[ModuleType] = []

    def action(module: ModuleType) -> None:
        module.VALUE += 1
        seen.append(module)

    when_imported(module_file, action)
    assert seen == []
    module = __import__(module_file)
    assert seen == [module] and module.VALUE == 42
    assert type(module.__loader__).__name__ == "SourceFileLoader"
    assert module.__spec__ is not None and module.__spec__.loader is module.__loader__


def test_when_imported_acts_at_once_on_a_module_already_imported(module_file: str) -> None:
    module = __import__(module_file)
    seen: list[ModuleType] = []
    when_imported(module_file, seen.append)
    assert seen == [module]


def test_the_report_says_when_the_first_encode_began(tmp_path: Path) -> None:
    """From the run's start by default, from `launched` when given; None when nothing was
    encoded (every input a duplicate)."""
    _synth_uncompressed(tmp_path / "in")
    before = time.time()
    with Archive.create(tmp_path / "a") as archive:
        report = archive.ingest([tmp_path / "in"], workers=0)
    assert report.archived == 6
    assert report.first_encode_seconds is not None
    assert 0 <= report.first_encode_seconds <= time.time() - before
    assert report.to_dict()["first_encode_seconds"] == round(report.first_encode_seconds, 3)

    with Archive.create(tmp_path / "b") as archive:
        report = archive.ingest([tmp_path / "in"], workers=0, launched=before - 100)
    assert report.first_encode_seconds is not None and report.first_encode_seconds >= 100

    (tmp_path / "again").mkdir()
    for path in sorted((tmp_path / "in").rglob("*.dcm")):
        (tmp_path / "again" / path.name).write_bytes(path.read_bytes())
    with Archive.open_or_create(tmp_path / "b") as archive:
        report = archive.ingest([tmp_path / "again"], workers=0)
    assert report.duplicates == 6 and report.first_encode_seconds is None


def test_the_cli_summary_gives_the_first_encode(tmp_path: Path) -> None:
    _synth_uncompressed(tmp_path / "in")
    done = run_cli("ingest", str(tmp_path / "in"), "--archive", str(tmp_path / "a"))
    assert done.returncode == 0, done.stderr
    assert "s after the start (the command's launch)" in done.stdout
