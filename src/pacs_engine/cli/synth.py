"""`pacs-engine synth`: write realistic synthetic CT/MR series."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pacs_engine.cli._common import add_progress, fail, megabytes, shows_progress


class _SyntaxNames:
    """The transfer syntaxes synth writes, as the help lists them, imported when shown.

    pacs_engine.synth imports pydicom and numpy: building the parser of every
    command must not (argparse fills `%(names)s` from the option's attributes).
    """

    def __str__(self) -> str:
        from pacs_engine.synth import SYNTAXES

        return ", ".join(SYNTAXES)


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `synth`."""
    synth = commands.add_parser(
        "synth",
        help="write realistic synthetic CT/MR series for throughput and scale tests",
        description="Write STUDIES x SERIES x SLICES synthetic DICOM files as "
        "OUT/<study>/<series>/<instance>.dcm: an anatomy-like phantom with realistic noise, "
        "CT in HU (signed, rescaled) and MR (unsigned 16-bit), correct geometry, and a mix "
        "of transfer syntaxes across series. The same seed writes byte-identical files.",
    )
    synth.add_argument("out", metavar="OUT", help="the folder to write to")
    synth.add_argument("--studies", type=int, default=1, help="studies (default: 1)")
    synth.add_argument(
        "--series-per-study", type=int, default=2, help="series per study (default: 2)"
    )
    synth.add_argument("--slices", type=int, default=50, help="slices per series (default: 50)")
    synth.add_argument("--rows", type=int, default=512, help="image rows (default: 512)")
    synth.add_argument("--columns", type=int, default=512, help="image columns (default: 512)")
    synth.add_argument("--seed", type=int, default=0, help="the seed of everything (default: 0)")
    syntaxes = synth.add_argument(
        "--syntaxes",
        default=None,
        help="comma-separated transfer syntaxes, used in turn across series; of "
        "%(names)s (default: all)",
    )
    syntaxes.names = _SyntaxNames()  # type: ignore[attr-defined]
    synth.add_argument(
        "--modalities",
        default="CT,MR",
        help="comma-separated modalities, used in turn across studies (default: CT,MR)",
    )
    synth.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="series written at once (default: the number of cores)",
    )
    add_progress(synth)
    synth.set_defaults(run=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    """Write synthetic CT/MR series for throughput and scale tests."""
    from tqdm import tqdm

    from pacs_engine.synth import write_studies

    total = args.studies * args.series_per_study * args.slices
    bar = tqdm(
        total=total,
        unit=" files",
        disable=not shows_progress(args),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    written_bytes = 0

    def progress(path: Path, size: int) -> None:
        nonlocal written_bytes
        written_bytes += size
        bar.update()

    try:
        paths = write_studies(
            args.out,
            args.studies,
            args.series_per_study,
            args.slices,
            rows=args.rows,
            columns=args.columns,
            seed=args.seed,
            # None (no --syntaxes) or empty: write_studies writes its default mix.
            syntaxes=[s.strip() for s in (args.syntaxes or "").split(",") if s.strip()],
            modalities=[m.strip().upper() for m in args.modalities.split(",") if m.strip()],
            progress=progress,
            threads=args.threads,
        )
    except ValueError as error:
        bar.close()
        return fail("synth", str(error), 2)
    bar.close()
    seconds = max(time.perf_counter() - started, 1e-9)
    print(
        f"{len(paths):,} files, {megabytes(written_bytes)} written under {args.out} "
        f"in {seconds:.2f} s ({len(paths) / seconds:,.0f} files/s, "
        f"{written_bytes / seconds / 1e6:,.1f} MB/s)"
    )
    return 0
