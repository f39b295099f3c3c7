"""Ctrl-C while the `pacs-engine` command starts: one line and status 130, no traceback.

The command imports for up to a second or two on a loaded machine (zarr, the codecs)
before it can stop cleanly. A KeyboardInterrupt raised meanwhile prints an import's
traceback, and raised inside an import it makes Python exit by SIGINT (status -2 to a
parent) even once caught. So the package installs `_stop_quietly` when it is imported
as the command, and `pacs_engine.cli.main` gives Ctrl-C back to Python
(KeyboardInterrupt) once the command runs: each command stops cleanly then (an ingest
saves its session).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

#: What a command says when Ctrl-C stops it; an ingest says how to resume.
INTERRUPTED = {
    "ingest": "ingest: interrupted; everything committed so far is kept: "
    "run the same command again to resume",
}


def interrupted(argv: list[str]) -> str:
    """What the command of `argv` (its first word) says when Ctrl-C stops it."""
    command = next((a for a in argv if not a.startswith("-")), "")
    return INTERRUPTED.get(command, "interrupted")


def _stop_quietly(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C while the command starts: nothing is written yet."""
    print(interrupted(sys.argv[1:]), file=sys.stderr)
    raise SystemExit(130)


#: Whether this process is the `pacs-engine` command: `pacs-engine` (its argv[0]) or
#: `python -m pacs_engine.cli`, which imports this package while argv[0] is "-m".
_COMMAND = sys.argv[:1] == ["-m"] or os.path.basename(sys.argv[0]).startswith("pacs-engine")


def is_command() -> bool:
    """True in the `pacs-engine` process, as the package saw it when first imported."""
    return _COMMAND


def quiet_while_starting() -> None:
    """In the `pacs-engine` process only, make Ctrl-C stop it quietly until `main` runs it.

    Not where Ctrl-C is ignored: a pool worker imports the package again.
    """
    if _COMMAND and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _stop_quietly)
