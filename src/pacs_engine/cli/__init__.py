"""The `pacs-engine` command line: one module per command, each adding its own subparser.

Modules that import zarr, pydicom, numpy, tqdm or the codecs are imported where they are
used, not to build the parser (tests/test_startup.py checks it): `main` starts the ingest
workers' forkserver first, so that its imports and the command's run at once.
"""

from __future__ import annotations

import argparse
import atexit
import signal
import sys
import threading
from collections.abc import Sequence
from importlib import import_module
from types import ModuleType

from pacs_engine.cli._common import fail
from pacs_engine.errors import PacsEngineError
from pacs_engine.interrupt import interrupted, is_command

__all__ = ["COMMAND_MODULES", "build_parser", "command_modules", "main"]

#: Each command's module in `pacs_engine.cli`, in the order `pacs-engine --help` lists them.
#: Imported when the parser is built (`command_modules`), so that `main` starts the workers'
#: forkserver before (it then imports while the commands' modules do).
COMMAND_MODULES = (
    "scan",
    "ingest",
    "deid_key",
    "verify",
    "tidy",
    "rebuild_index",
    "info",
    "query",
    "export",
    "correct",
    "trash",
    "serve",
    "keys",
    "audit",
    "migrate",
    "synth",
    "read_bench",
    "samples",
)


def command_modules() -> tuple[ModuleType, ...]:
    """The commands' modules (COMMAND_MODULES), imported."""
    return tuple(import_module(f"{__name__}.{name}") for name in COMMAND_MODULES)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of every subcommand, or of command `only`'s alone when it names
    one: the other commands' modules are then not imported (about 0.03 s of CPU before
    an ingest's first encode)."""
    parser = argparse.ArgumentParser(
        prog="pacs-engine",
        description="A native-accelerated DICOM archive engine.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    name = (only or "").replace("-", "_")
    modules = (import_module(f"{__name__}.{name}"),) if name in COMMAND_MODULES else None
    for command in modules or command_modules():
        command.add_subparser(commands)
    return parser


def _starts_local_workers(argv: list[str]) -> bool:
    """True when the command line runs ingest, verify, serve or migrate in worker processes."""
    early = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    early.add_argument("command", nargs="?")
    early.add_argument("--workers", type=int)
    early.add_argument("--executor")
    early.add_argument("--deidentify", action="store_true")
    try:
        known, _ = early.parse_known_args(argv)
    except argparse.ArgumentError:  # a malformed command line: the real parser says why
        return False
    command_workers = (
        known.command in ("ingest", "verify", "serve", "migrate") and known.workers != 0
    )
    asks_help = not {"-h", "--help"}.isdisjoint(argv)
    # `ingest --deidentify` copies a small source in process (deid.run.IN_PROCESS_BELOW).
    return command_workers and known.executor != "dask" and not asks_help and not known.deidentify


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `pacs-engine`."""
    args = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in args if not a.startswith("-")), "")
    status = _main(command, args)
    if argv is None and is_command() and command == "ingest":
        _exit_at_once(status)
    return status


def _exit_at_once(status: int) -> None:
    """End the `pacs-engine` process with `status` without the interpreter's finalization.

    Tearing down the modules and objects an ingest loaded (numpy, the codecs, LMDB) took
    0.05-0.1 s after the command had finished; its files are closed and synced by then
    (the archive is closed, the report written). The exit functions run (multiprocessing's,
    the codecs') as at a normal exit, then the output is flushed, with what they printed.
    Not while another thread that Python would wait for runs (but the idle threads that
    synced the commits' files at once), nor when the output cannot be flushed: Python's
    own exit then says so.
    """
    from pacs_engine.storage import is_sync_thread

    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(not t.daemon and not is_sync_thread(t) for t in others):
        return
    atexit._run_exitfuncs()
    from pacs_engine.forkserver import exit_flushed

    exit_flushed(status)


def _main(command: str, argv: list[str]) -> int:
    """Run `command`, the command of `argv`; its exit status."""
    try:
        # Until the command runs (the forkserver started, the parser built, the command's
        # imports), a Ctrl-C still stops quietly (pacs_engine.interrupt).
        if _starts_local_workers(argv):
            from pacs_engine.forkserver import quiet_blas, start_forkserver

            quiet_blas()  # before anything imports numpy here; the forkserver too
            start_forkserver(__name__)  # workers import this module again as they start
        # The command first (not `pacs-engine -h ingest`, the list of every command): its
        # parser alone.
        parser = build_parser(command if argv[:1] == [command] else None)
        args, extras = parser.parse_known_args(argv)
        if extras:
            # argparse takes a command's positionals in one run: `query ARCHIVE --level study
            # KEY=VALUE` leaves the filters after the option here; the command names the list.
            late = getattr(args, "late_positionals", None)
            if late is None or any(arg.startswith("-") for arg in extras):
                parser.error(f"unrecognized arguments: {' '.join(extras)}")
            setattr(args, late, [*getattr(args, late), *extras])
        if threading.current_thread() is threading.main_thread():  # signals: main thread only
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the command stops cleanly
        return args.run(args)
    except PacsEngineError as error:  # not an archive, locked, damaged: say so in one line
        return fail(command, str(error), 2)
    except OSError as error:  # the disk, permissions: the error names the file
        return fail(command, str(error), 3)
    except KeyboardInterrupt:
        print(interrupted(argv), file=sys.stderr)
        return 130
