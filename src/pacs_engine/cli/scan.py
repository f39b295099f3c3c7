"""`pacs-engine scan`: inventory DICOM files in folders and files."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING

from pacs_engine.cli._common import add_follow_links, add_progress, megabytes, shows_progress

if TYPE_CHECKING:
    from pacs_engine.errors import ScanError
    from pacs_engine.header import Header
    from pacs_engine.inventory import Inventory


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `scan`."""
    scan = commands.add_parser(
        "scan",
        help="inventory DICOM files in folders (recursively) and files",
        description="Scan every file under SRC with the native header scanner and report "
        "instances, patients, studies, series, bytes, and counts by modality, transfer "
        "syntax and SOP class. Files that are not DICOM or are malformed are listed with "
        "the reason. With --preflight, predicts what `ingest` would do with each input "
        "(archived, duplicate, conflict, quarantined: of what, and why). "
        "Exits 1 if a SRC does not exist.",
    )
    scan.add_argument("sources", nargs="+", metavar="SRC", help="a folder or a file")
    scan.add_argument("--json", action="store_true", help="print the inventory as JSON")
    add_follow_links(scan)
    scan.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="scanning threads (default: the number of cores)",
    )
    scan.add_argument(
        "--preflight",
        action="store_true",
        help="predict what `ingest` would do with each input: archived (how), duplicate or "
        "conflict (of what), quarantined (the exact reason); reads and prepares every file",
    )
    scan.add_argument(
        "--archive",
        metavar="A",
        help="with --preflight: the archive the ingest would go into (its instances count "
        "for duplicates, versions and conflicts; its settings apply)",
    )
    scan.add_argument(
        "--no-decode",
        action="store_true",
        help="with --preflight: do not decode compressed frames (faster; as ingest "
        "--trust-bitstreams: frames that do not decode are then not checked)",
    )
    scan.add_argument(
        "--transcode",
        action="store_true",
        help="with --preflight and no --archive: predict for a new archive made with --transcode",
    )
    add_progress(scan)
    scan.set_defaults(run=cmd_scan)


def cmd_scan(args: argparse.Namespace) -> int:
    """Inventory what the sources hold (or, with --preflight, predict the ingest)."""
    if args.preflight:
        return cmd_preflight(args)
    from tqdm import tqdm

    from pacs_engine.inventory import Inventory, take_inventory
    from pacs_engine.sources import iter_files

    inventory = Inventory()

    paths = list(iter_files(args.sources, inventory.add_problem, follow_links=args.follow_links))
    walk_problems = list(inventory.problems)
    bar = tqdm(
        total=len(paths),
        unit=" files",
        disable=not shows_progress(args),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    started = time.perf_counter()
    done_bytes = 0

    def progress(result: Header | ScanError) -> None:
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


def render_inventory(inventory: Inventory, seconds: float) -> str:
    """The inventory as a report for people."""
    summary = inventory.to_dict()
    duplicates = inventory.instances - summary["unique_sop_instances"]
    lines = [
        f"{summary['files']:,} files, {megabytes(summary['bytes'])}, "
        f"scanned in {seconds:.2f} s ({summary['files'] / max(seconds, 1e-9):,.0f} files/s)",
        f"  instances  {summary['instances']:>9,}   "
        f"(unique SOP Instance UIDs {summary['unique_sop_instances']:,}; "
        f"files repeating one {duplicates:,})",
        f"  patients   {summary['patients']:>9,}",
        f"  studies    {summary['studies']:>9,}",
        f"  series     {summary['series']:>9,}",
        f"  pixel data {megabytes(summary['pixel_bytes']):>12}",
        "",
        "By modality:",
    ]
    for modality, row in summary["by_modality"].items():
        lines.append(f"  {modality:<8} {row['instances']:>9,}  {megabytes(row['bytes']):>12}")
    for title, key in (
        ("By transfer syntax:", "by_transfer_syntax"),
        ("By SOP class:", "by_sop_class"),
    ):
        lines += ["", title]
        for uid, row in summary[key].items():
            lines.append(f"  {row['instances']:>9,}  {uid:<32} {row['name']}")
    problems = summary["problems"]
    lines += ["", f"Not DICOM or malformed: {len(problems):,}"]
    lines += [f"  {p['path']}: {p['reason']}" for p in problems]
    return "\n".join(lines)


def cmd_preflight(args: argparse.Namespace) -> int:
    """Print what the ingest would do with each input, and a summary by outcome and reason."""
    from pacs_engine.ingest.encode import Checks
    from pacs_engine.ingest.preflight import preflight, summary

    missing = [s for s in args.sources if not os.path.lexists(s)]
    if args.archive is not None and not os.path.isdir(args.archive):
        missing.append(args.archive)
    if missing:
        print(f"scan: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 1
    checks = Checks(decode_bitstreams=not args.no_decode)
    predictions = preflight(
        args.sources, args.archive, checks, args.follow_links, transcode=args.transcode
    )
    if args.json:
        for prediction in predictions:
            print(json.dumps(prediction.to_dict()))
        return 0
    for p in predictions:
        if p.outcome == "archived" and not p.version and not p.not_verified:
            continue
        what = p.reason or ""
        if p.outcome == "archived":
            version = f"new version of {p.same_as}" if p.version else ""
            what = "; ".join(w for w in (version, p.not_verified) if w)
        elif p.outcome == "duplicate":
            what = f"same bytes as {p.same_as}"
        elif p.outcome == "conflict":
            what = f"{what} (against {p.same_as})"
        kind = " [DICOMDIR]" if p.media_directory else " [not DICOM]" if p.not_dicom else ""
        print(f"{p.outcome:<12} {p.key}{kind}: {what}")
    counts = summary(predictions)
    print(f"\n{len(predictions):,} inputs; by outcome and reason:")
    for category, count in sorted(counts.items()):
        print(f"  {count:>9,}  {category}")
    if args.no_decode:
        print("  (frames not decoded: --no-decode; frames that do not decode not checked)")
    return 0
