"""The `pacs-engine` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from tqdm import tqdm

from pacs_engine.inventory import Inventory, take_inventory
from pacs_engine.sources import sample_data_dir


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def render_inventory(inventory: Inventory, seconds: float) -> str:
    """The inventory as a report for people."""
    summary = inventory.to_dict()
    duplicates = inventory.instances - summary["unique_sop_instances"]
    lines = [
        f"{summary['files']:,} files, {_megabytes(summary['bytes'])}, "
        f"scanned in {seconds:.2f} s ({summary['files'] / max(seconds, 1e-9):,.0f} files/s)",
        f"  instances  {summary['instances']:>9,}   "
        f"(unique SOP Instance UIDs {summary['unique_sop_instances']:,}; "
        f"files repeating one {duplicates:,})",
        f"  patients   {summary['patients']:>9,}",
        f"  studies    {summary['studies']:>9,}",
        f"  series     {summary['series']:>9,}",
        f"  pixel data {_megabytes(summary['pixel_bytes']):>12}",
        "",
        "By modality:",
    ]
    for modality, row in summary["by_modality"].items():
        lines.append(f"  {modality:<8} {row['instances']:>9,}  {_megabytes(row['bytes']):>12}")
    for title, key in (("By transfer syntax:", "by_transfer_syntax"),
                       ("By SOP class:", "by_sop_class")):  # fmt: skip
        lines += ["", title]
        for uid, row in summary[key].items():
            lines.append(f"  {row['instances']:>9,}  {uid:<32} {row['name']}")
    problems = summary["problems"]
    lines += ["", f"Not DICOM or malformed: {len(problems):,}"]
    lines += [f"  {p['path']}: {p['reason']}" for p in problems]
    return "\n".join(lines)


def cmd_scan(args: argparse.Namespace) -> int:
    """Inventory what the sources hold."""
    inventory = Inventory()
    from pacs_engine.sources import iter_files

    paths = list(iter_files(args.sources, inventory.add_problem))
    walk_problems = list(inventory.problems)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    bar = tqdm(total=len(paths), unit=" files", disable=not show, file=sys.stderr,
               dynamic_ncols=True)  # fmt: skip
    started = time.perf_counter()
    done_bytes = 0

    def progress(result) -> None:
        nonlocal done_bytes
        done_bytes += getattr(result, "file_size", 0)
        bar.update()
        if bar.n % 256 == 0:
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(f"{done_bytes / elapsed / 1e6:,.0f} MB/s", refresh=False)

    inventory = take_inventory(paths, threads=args.threads, progress=progress)
    bar.close()
    inventory.problems[:0] = walk_problems
    seconds = time.perf_counter() - started
    if args.json:
        report = inventory.to_dict()
        report["seconds"] = round(seconds, 3)
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_inventory(inventory, seconds))
    missing = [p for p, r in walk_problems if r == "no such file or folder"]
    return 1 if missing else 0


def cmd_samples(args: argparse.Namespace) -> int:
    """Print the folder of real DICOM sample files that ships with pydicom."""
    print(sample_data_dir())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="pacs-engine",
        description="A native-accelerated DICOM archive engine.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scan = commands.add_parser(
        "scan",
        help="inventory DICOM files in folders (recursively) and files",
        description="Scan every file under SRC with the native header scanner and report "
        "instances, patients, studies, series, bytes, and counts by modality, transfer "
        "syntax and SOP class. Files that are not DICOM or are malformed are listed with "
        "the reason. Exits 1 if a SRC does not exist.",
    )
    scan.add_argument("sources", nargs="+", metavar="SRC", help="a folder or a file")
    scan.add_argument("--json", action="store_true", help="print the inventory as JSON")
    scan.add_argument(
        "--threads", type=int, default=os.cpu_count(),
        help="scanning threads (default: the number of cores)",
    )  # fmt: skip
    scan.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )  # fmt: skip
    scan.set_defaults(run=cmd_scan)

    samples = commands.add_parser(
        "samples", help="print the folder of DICOM sample files shipped with pydicom"
    )
    samples.set_defaults(run=cmd_samples)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `pacs-engine`."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
