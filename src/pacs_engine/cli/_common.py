"""What several commands share: option definitions, the progress switch, sizes for people."""

from __future__ import annotations

import argparse
import sys


def megabytes(n: int) -> str:
    """A byte count for people, in MB."""
    return f"{n / 1e6:,.1f} MB"


def byte_count(text: str) -> int:
    """A number of bytes from the command line: 1000, 64K, 512M, 2G (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    scale = units.get(text[-1:].upper(), 1)
    number = text[:-1] if scale > 1 else text
    if not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number of bytes: {text!r}")
    return int(number) * scale


def worker_count(text: str) -> int:
    """A number of worker processes from the command line: 0 (in the command's own process)
    or more."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"not a number of workers (0 or more): {text!r}")
    return int(text)


def add_follow_links(parser: argparse.ArgumentParser) -> None:
    """Add --follow-links."""
    parser.add_argument(
        "--follow-links",
        action="store_true",
        help="follow symbolic links met in folders, even out of SRC (default: list them as "
        "skipped, with the reason)",
    )


def add_progress(parser: argparse.ArgumentParser) -> None:
    """Add --progress / --no-progress."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )


def shows_progress(args: argparse.Namespace) -> bool:
    """Whether to show a progress bar: as asked, else when stderr is a terminal."""
    return args.progress if args.progress is not None else sys.stderr.isatty()


def fail(command: str, message: str, code: int) -> int:
    """Print `pacs-engine COMMAND: message` on stderr and return the exit code."""
    print(f"pacs-engine {command}: {message}", file=sys.stderr)
    return code
