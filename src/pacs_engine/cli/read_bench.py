"""`pacs-engine read-bench`: frame reads as a training loop sees them."""

from __future__ import annotations

import argparse
import json
import sys

from pacs_engine.cli._common import worker_count


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `read-bench`."""
    read_bench = commands.add_parser(
        "read-bench",
        help="measure frame reads as a training loop sees them (frames/s, decoded MB/s)",
        description="Read FRAMES frames of every series of ARCHIVE as a FrameDataset two "
        "ways, random access (dataset[i] for random indices) and sequential (iter_chunks), "
        "with each number of worker processes given (each opens the archive itself), and, "
        "with torch, through a DataLoader with the same workers (default collate), and "
        "report frames/s and decoded MB/s. Exits 2 if ARCHIVE is not an archive or holds "
        "no frames.",
    )
    read_bench.add_argument("archive", metavar="ARCHIVE", help="the archive folder")
    read_bench.add_argument(
        "--frames", type=int, default=512, help="frames read per measurement (default: 512)"
    )
    read_bench.add_argument(
        "--workers",
        type=worker_count,
        nargs="+",
        default=[1, 2],
        help="worker process counts to measure (default: 1 2)",
    )
    read_bench.add_argument(
        "--seed", type=int, default=0, help="seed of the random indices (default: 0)"
    )
    read_bench.add_argument(
        "--start-method",
        default="spawn",
        choices=("spawn", "forkserver", "fork"),
        help="how worker processes start (default: spawn)",
    )
    read_bench.add_argument(
        "--compare",
        action="store_true",
        help="also measure, in the same run, pydicom on the original files: the same random "
        "frames with the same workers (needs the files the index rows name; per codec and "
        "per volume comparisons: benchmarks/bench_read.py in the source tree)",
    )
    read_bench.add_argument(
        "--query",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="read only the series a series-level query selects (repeatable, e.g. "
        "--query Modality=CT --query BodyPartExamined=CHEST; wildcards as in queries)",
    )
    read_bench.add_argument(
        "--rescale", action="store_true", help="read modality values (e.g. HU) as float32"
    )
    read_bench.add_argument(
        "--shape",
        type=int,
        nargs=2,
        metavar=("ROWS", "COLUMNS"),
        help="read only frames of this size (others skipped, as FrameDataset(shape=...))",
    )
    read_bench.add_argument(
        "--batch", type=int, default=16, help="DataLoader batch size (default: 16)"
    )
    read_bench.add_argument("--json", action="store_true", help="print the report as JSON")
    read_bench.set_defaults(run=cmd_read_bench)


def cmd_read_bench(args: argparse.Namespace) -> int:
    """Measure frame reads as a training loop sees them: random and sequential, 1..N workers."""
    from pacs_engine.archive import Archive
    from pacs_engine.archive.format import MARKER
    from pacs_engine.errors import PacsEngineError
    from pacs_engine.read.bench import read_bench, render_read_bench

    if not Archive.exists(args.archive):
        print(f"{args.archive}: not an archive (no {MARKER})", file=sys.stderr)
        return 2
    query = dict(item.partition("=")[::2] for item in args.query)
    if any("=" not in item for item in args.query):
        print(f"read-bench: --query takes KEY=VALUE, not {args.query}", file=sys.stderr)
        return 2
    try:
        report = read_bench(
            args.archive,
            frames=args.frames,
            workers=args.workers,
            seed=args.seed,
            start_method=args.start_method,
            compare=args.compare,
            query=query,
            rescale=args.rescale,
            shape=tuple(args.shape) if args.shape else None,
            batch_size=args.batch,
            progress=True,
        )
    except (ValueError, PacsEngineError) as error:
        print(f"read-bench: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_read_bench(report))
    return 0
