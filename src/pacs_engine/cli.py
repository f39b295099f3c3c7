"""The `pacs-engine` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

# Modules that import zarr, pydicom or the codecs are imported where they are used:
# `main` starts the ingest workers' forkserver first, so both start up at once.
if TYPE_CHECKING:
    from pacs_engine.inventory import Inventory


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


def _byte_count(text: str) -> int:
    """A number of bytes from the command line: 1000, 64K, 512M, 2G (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    scale = units.get(text[-1:].upper(), 1)
    number = text[:-1] if scale > 1 else text
    if not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number of bytes: {text!r}")
    return int(number) * scale


def _add_follow_links(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--follow-links",
        action="store_true",
        help="follow symbolic links met in folders, even out of SRC (default: list them as "
        "skipped, with the reason)",
    )


def cmd_scan(args: argparse.Namespace) -> int:
    """Inventory what the sources hold."""
    from pacs_engine.inventory import Inventory, take_inventory
    from pacs_engine.sources import iter_files

    inventory = Inventory()

    paths = list(iter_files(args.sources, inventory.add_problem, follow_links=args.follow_links))
    walk_problems = list(inventory.problems)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    bar = tqdm(
        total=len(paths), unit=" files", disable=not show, file=sys.stderr, dynamic_ncols=True
    )
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


def _ingest_option_problem(args: argparse.Namespace, target: Path) -> str | None:
    """Why the ingest options do not fit together or with the archive; None when they do.

    Options that would be ignored are refused rather than silently dropped.
    """
    if args.executor == "dask" and not args.scheduler:
        return "--executor dask needs --scheduler ADDRESS"
    if args.executor == "dask" and args.workers is not None:
        return "--workers applies to the local executor; a Dask cluster has its own workers"
    if args.scheduler and args.executor != "dask":
        return "--scheduler applies only with --executor dask"
    from pacs_engine.inputs import PACS_ARCHIVE_MARKER

    meta = target / PACS_ARCHIVE_MARKER
    if not meta.exists():
        return None
    try:
        config = json.loads(meta.read_bytes())
    except (OSError, ValueError):
        return None  # opening the archive says what is wrong with it
    if not isinstance(config, dict):
        return None
    if args.codec is not None and args.codec != config.get("codec"):
        return (
            f"{target} stores new series with codec {config.get('codec')!r}; --codec "
            "applies only when the archive is created"
        )
    if args.transcode and not config.get("transcode"):
        return f"{target} keeps original bitstreams; --transcode applies only when it is created"
    if args.group is not None:
        return f"{target} exists; --group applies only when it is created (chgrp -R, chmod)"
    return None


def cmd_ingest(args: argparse.Namespace) -> int:
    """Archive the sources into an archive (created when missing); resumes an unfinished run."""
    from pacs_engine.archive import Archive, open_archive
    from pacs_engine.ingest import IngestStopped, make_executor
    from pacs_engine.inputs import PACS_ARCHIVE_MARKER

    target = Path(args.archive)
    problem = _ingest_option_problem(args, target)
    if problem:
        print(f"pacs-engine ingest: {problem}", file=sys.stderr)
        return 2
    if (target / PACS_ARCHIVE_MARKER).exists():
        archive = open_archive(target, readonly=False)
    else:
        archive = Archive.create(
            target, codec=args.codec or "auto", transcode=args.transcode, group=args.group
        )
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    bar = _IngestBar(show)
    executor = make_executor(args.workers, args.scheduler if args.executor == "dask" else None)
    try:
        with archive:
            report = archive.ingest(
                args.sources,
                executor=executor,
                verify=args.verify,
                progress=bar.update,
                trust_bitstreams=args.trust_bitstreams,
                max_input_bytes=args.max_input_bytes,
                follow_links=args.follow_links,
                keep_non_dicom=args.keep_non_dicom,
                max_frame_bytes=args.max_frame_bytes,
            )
    except IngestStopped as error:
        bar.close()
        print(f"pacs-engine ingest: {error}", file=sys.stderr)
        return 3
    finally:
        executor.close()
    bar.close()
    summary = report.to_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        resumed = f", resumed {summary['resumed']}x" if summary["resumed"] else ""
        print(
            f"{summary['inputs']:,} inputs: {summary['archived']:,} archived, "
            f"{summary['duplicates']:,} duplicates, {summary['conflicts']:,} conflicts, "
            f"{summary['quarantined']:,} quarantined"
        )
        if summary["versions"]:
            print(
                f"  of the archived, {summary['versions']:,} are new versions of instances "
                "already archived (same SOP Instance UID and pixels, other bytes); "
                f"current: the version {summary['current_version']}"
            )
        print(
            f"raw pixels {_megabytes(summary['raw_pixel_bytes'])}, stored "
            f"{_megabytes(summary['stored_bytes'])}, ratio {summary['ratio'] or '-'}, "
            f"{summary['seconds']} s ({summary['instances_per_second']} inputs/s, "
            f"{summary['raw_mb_per_second']} MB/s raw) with {summary['workers']} workers{resumed}"
        )
        phases = ", ".join(f"{p} {s} s" for p, s in summary["phase_seconds"].items())
        print(f"  of which {phases}")
        for reason, count in summary["quarantine_reasons"].items():
            print(f"  quarantined {count:>6,}  {reason}")
        if summary["archived_undecoded"]:
            print(
                f"{summary['archived_undecoded']:,} archived instances keep original compressed "
                "bitstreams that were not decoded (--trust-bitstreams: stored byte for byte); "
                "`pacs-engine verify` decodes them"
            )
    return 0 if report.balanced else 1


class _IngestBar:
    """The ingest progress bar: inputs done of all, raw MB/s and the ratio so far, ETA."""

    def __init__(self, show: bool) -> None:
        self.bar = tqdm(unit=" inputs", disable=not show, file=sys.stderr, dynamic_ncols=True)
        self.phase = ""

    def update(self, progress: Any) -> None:
        """Show one Progress snapshot."""
        report = progress.report
        if progress.phase != self.phase:
            self.phase = progress.phase
            self.bar.set_description(progress.phase)
        if progress.total is not None and self.bar.total != progress.total:
            self.bar.total = progress.total
        self.bar.n = report.inputs
        seconds = max(progress.seconds, 1e-9)
        self.bar.set_postfix_str(
            f"{report.raw_bytes / seconds / 1e6:,.1f} MB/s raw, ratio {report.ratio or '-'}",
            refresh=False,
        )
        self.bar.refresh()

    def close(self) -> None:
        """Leave the bar as it is."""
        self.bar.close()


def cmd_verify(args: argparse.Namespace) -> int:
    """Decode every stored frame and rebuild every file; report what does not match."""
    from pacs_engine.archive import open_archive
    from pacs_engine.index import DamagedIndexError

    try:
        archive = open_archive(args.archive)
    except DamagedIndexError as error:
        print(f"DAMAGED INDEX {error}; `pacs-engine rebuild-index {args.archive}` rebuilds it")
        return 1
    with archive:
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        bar = tqdm(
            total=len(archive.index),
            unit=" instances",
            disable=not show,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            report = archive.verify(progress=lambda uid, ok: bar.update(), workers=args.workers)
        except DamagedIndexError as error:
            bar.close()
            print(f"DAMAGED INDEX {error}; `pacs-engine rebuild-index {args.archive}` rebuilds it")
            return 1
        bar.close()
    for mismatch in report.mismatches:
        print(
            f"MISMATCH {mismatch['SOPInstanceUID']} ({mismatch['source_path']}): "
            f"{mismatch['problem']}"
        )
    print(
        f"{report.instances:,} instances, {report.frames:,} frames checked: "
        + ("all match" if report.ok else f"{len(report.mismatches):,} mismatches")
    )
    return 0 if report.ok else 1


def cmd_tidy(args: argparse.Namespace) -> int:
    """Delete what ingest runs killed and never resumed left unreferenced; list those runs."""
    from pacs_engine.archive import open_archive
    from pacs_engine.ingest.journal import Journal
    from pacs_engine.ingest.tidy import tidy_archive

    with open_archive(args.archive, readonly=False) as archive:  # one writer: never beside ingest
        tidied = tidy_archive(archive)
        journal = Journal(archive.index)
        given = list(dict.fromkeys(args.abandon))
        unknown = [run for run in given if not journal.can_abandon(run)]
        if unknown:
            print(
                f"pacs-engine tidy: not an unfinished run of {args.archive}: "
                f"{', '.join(unknown)} (`pacs-engine tidy` lists them)",
                file=sys.stderr,
            )
            return 2
        abandoned = {run: journal.abandon(run) for run in given}
        unfinished = journal.unfinished()
    print(
        f"removed {tidied.files:,} files ({tidied.bytes / 1e6:,.1f} MB) that no archived "
        f"instance uses; {len(tidied.arrays_resized):,} arrays resized to their committed frames"
    )
    for run, dropped in abandoned.items():
        print(
            f"abandoned ingest run {run}: {dropped:,} planned inputs it had not archived "
            "were dropped; ingesting the same sources again starts a new run"
        )
    for record in unfinished:
        print(
            f"unfinished ingest run {record['run']} (started {record['started']}) of "
            f"{' '.join(record['sources'])}: run the same ingest again to finish it, "
            f"or give it up with --abandon {record['run']}"
        )
    return 0


def cmd_rebuild_index(args: argparse.Namespace) -> int:
    """Rebuild the archive's index from its rows files."""
    from pacs_engine.archive.rebuild import rebuild_index

    rebuilt = rebuild_index(args.archive)
    print(f"{rebuilt.rows:,} instances restored into a new index")
    if rebuilt.kept_as:
        print(f"the old index is kept as {rebuilt.kept_as}")
    if rebuilt.uncommitted:
        print(f"{rebuilt.uncommitted:,} rows of parts that were never committed were left out")
    for name in rebuilt.packs_without_rows:
        print(f"NOT RESTORED {name}: written before rows files existed")
    for name in rebuilt.damaged_rows_files:
        print(f"NOT RESTORED {name}: its rows file is damaged")
    return 1 if rebuilt.packs_without_rows or rebuilt.damaged_rows_files else 0


def cmd_info(args: argparse.Namespace) -> int:
    """Counts, sizes and compression ratio of an archive, by modality and codec."""
    from pacs_engine.archive import open_archive

    with open_archive(args.archive) as archive:
        info = archive.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"{info['path']}: {info['instances']:,} instances in {info['series']:,} series, "
        f"{info['quarantined']:,} quarantined"
    )
    print(
        f"source files {_megabytes(info['source_bytes'])}, raw pixels "
        f"{_megabytes(info['raw_pixel_bytes'])}, stored {_megabytes(info['stored_bytes'])}, "
        f"ratio {info['ratio'] or '-'}"
    )
    for title, key in (("By modality:", "by_modality"), ("By codec:", "by_codec")):
        print(f"\n{title}")
        for name, row in info[key].items():
            print(
                f"  {name:<40} {row['instances']:>8,}  {_megabytes(row['stored_bytes']):>12}"
                f"  ratio {row['ratio'] or '-'}"
            )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Rebuild original files from the archive, byte for byte."""
    from pacs_engine.archive import open_archive

    with open_archive(args.archive) as archive:
        uids = args.uids or None
        written = archive.export(args.destination, uids, all_versions=args.all_versions)
    print(f"{len(written):,} files written under {args.destination}")
    return 0


def cmd_read_bench(args: argparse.Namespace) -> int:
    """Measure frame reads as a training loop sees them: random and sequential, 1..N workers."""
    from pacs_engine.inputs import PACS_ARCHIVE_MARKER
    from pacs_engine.read.bench import read_bench, render_read_bench

    if not (Path(args.archive) / PACS_ARCHIVE_MARKER).is_file():
        print(f"{args.archive}: not an archive (no {PACS_ARCHIVE_MARKER})", file=sys.stderr)
        return 2
    try:
        report = read_bench(
            args.archive,
            frames=args.frames,
            workers=args.workers,
            seed=args.seed,
            start_method=args.start_method,
            compare=args.compare,
        )
    except ValueError as error:
        print(f"read-bench: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_read_bench(report))
    return 0


def cmd_samples(args: argparse.Namespace) -> int:
    """Print the folder of real DICOM sample files that ships with pydicom."""
    from pacs_engine.sources import sample_data_dir

    print(sample_data_dir())
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Write synthetic CT/MR series for throughput and scale tests."""
    from pacs_engine.synth import write_studies

    total = args.studies * args.series_per_study * args.slices
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    bar = tqdm(total=total, unit=" files", disable=not show, file=sys.stderr, dynamic_ncols=True)
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
            syntaxes=[s.strip() for s in args.syntaxes.split(",") if s.strip()],
            modalities=[m.strip().upper() for m in args.modalities.split(",") if m.strip()],
            progress=progress,
            threads=args.threads,
        )
    except ValueError as error:
        bar.close()
        print(f"pacs-engine synth: {error}", file=sys.stderr)
        return 2
    bar.close()
    seconds = max(time.perf_counter() - started, 1e-9)
    print(
        f"{len(paths):,} files, {_megabytes(written_bytes)} written under {args.out} "
        f"in {seconds:.2f} s ({len(paths) / seconds:,.0f} files/s, "
        f"{written_bytes / seconds / 1e6:,.1f} MB/s)"
    )
    return 0


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar on stderr (default: when stderr is a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from pacs_engine.archive.encoder import CODEC_CHOICES
    from pacs_engine.inputs import MAX_INPUT_BYTES

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
    _add_follow_links(scan)
    scan.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="scanning threads (default: the number of cores)",
    )
    _add_progress(scan)
    scan.set_defaults(run=cmd_scan)

    ingest = commands.add_parser(
        "ingest",
        help="archive DICOM files (folders are walked) into an archive",
        description="Archive every input under SRC into ARCHIVE (created when missing): "
        "folders (walked recursively), files, and .zip/.tar/.tar.gz archives (read in place). "
        "Inputs are scanned, grouped by series and encoded in parallel worker processes. "
        "Each input ends archived, as a duplicate, as a conflict or quarantined with its "
        "reason; the report (also written to ARCHIVE/reports/) says how many of each. "
        "Interrupted (even with kill -9), the same command resumes where it stopped. "
        "Exits 1 if the report does not balance, 3 if the run stopped (e.g. the disk is "
        "full): run it again to resume.",
    )
    ingest.add_argument(
        "sources",
        nargs="+",
        metavar="SRC",
        help="a folder, a file, a zip/tar archive, or another pacs_engine archive",
    )
    ingest.add_argument("--archive", required=True, help="the archive folder")
    ingest.add_argument(
        "--codec",
        default=None,
        choices=CODEC_CHOICES,
        help="lossless codec for uncompressed frames of a new archive "
        "(default: auto, chosen per series from a sample frame; lz4 and raw make a "
        "read-optimised archive for training loops, with --transcode, at about 1.9x and "
        "4.6x the bytes of auto on CT/MR; refused for an existing archive with another "
        "codec)",
    )
    ingest.add_argument(
        "--verify",
        action="store_true",
        help="decode every frame encoded with the archive codec again and check it before "
        "committing",
    )
    ingest.add_argument(
        "--trust-bitstreams",
        action="store_true",
        help="store compressed frames kept as their original bitstream byte for byte without "
        "decoding them (faster); a file whose frames do not decode is then archived, not "
        "quarantined, and only `verify` finds it",
    )
    ingest.add_argument(
        "--max-frame-bytes",
        type=int,
        metavar="N",
        help="quarantine files whose compressed frames would decode to more than N bytes "
        "each (default 1 GiB: decoders allocate what a file declares)",
    )
    ingest.add_argument(
        "--transcode",
        action="store_true",
        help="for a new archive: store frames of lossless compressed transfer syntaxes with "
        "the archive codec instead of as their original bitstream (they then export as "
        "explicit VR little endian files with the same pixels, not their original bytes)",
    )
    ingest.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: the number of cores; 0: in this process)",
    )
    ingest.add_argument(
        "--executor",
        choices=("local", "dask"),
        default="local",
        help="where tasks run: a local process pool (default) or a dask.distributed cluster",
    )
    ingest.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="the dask.distributed scheduler, e.g. tcp://10.0.0.5:8786 (with --executor dask); "
        "its workers must see ARCHIVE and SRC at the same paths",
    )
    ingest.add_argument(
        "--max-input-bytes",
        type=_byte_count,
        default=MAX_INPUT_BYTES,
        metavar="N",
        help="the largest input read (default 2 GiB; suffixes K, M, G, T): a larger one is "
        "quarantined with its size, sha256 and first 64 KiB, without being read into memory",
    )
    ingest.add_argument(
        "--keep-non-dicom",
        action="store_true",
        help="keep the whole bytes of a file that is not DICOM in the quarantine "
        "(default: its size, sha256 and first 64 KiB)",
    )
    _add_follow_links(ingest)
    ingest.add_argument(
        "--group",
        metavar="NAME",
        help="for a new archive: let this group read it (folders 2750 with the group, files "
        "0640) instead of its owner alone (0700/0600)",
    )
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_progress(ingest)
    ingest.set_defaults(run=cmd_ingest)

    verify = commands.add_parser(
        "verify",
        help="check every stored frame and every rebuilt file of an archive",
        description="Decode every stored frame and compare it with the hash recorded at "
        "ingest (original bitstreams stored undecoded have none: they must decode), and "
        "rebuild every original file and compare its sha256. Exits 1 on any mismatch.",
    )
    verify.add_argument("archive", help="the archive folder")
    verify.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: the number of cores; 0: in this process). In "
        "workers, a decoder that crashes on damaged data is reported as a mismatch instead "
        "of ending the check",
    )
    _add_progress(verify)
    verify.set_defaults(run=cmd_verify)

    tidy = commands.add_parser(
        "tidy",
        help="delete files of killed, never-resumed ingest runs that no instance uses",
        description="An ingest deletes what a killed earlier session of the same run left "
        "behind when it is resumed. A run that is never resumed leaves its uncommitted shards "
        "and header packs on disk: this deletes every file no archived instance uses, sets "
        "arrays' frame counts to what is committed, and lists unfinished runs (resuming one "
        "after a tidy is safe: its uncommitted work is redone). Refused (exit 2) while an "
        "ingest runs.",
    )
    tidy.add_argument("archive", help="the archive folder")
    tidy.add_argument(
        "--abandon",
        action="append",
        default=[],
        metavar="RUN",
        help="give up this unfinished run (repeatable): its plan leaves the journal, the "
        "record of where its finished inputs went stays, and ingesting the same sources "
        "again starts a new run (whose already archived instances are then duplicates)",
    )
    tidy.set_defaults(run=cmd_tidy)

    rebuild = commands.add_parser(
        "rebuild-index",
        help="rebuild a damaged index from the header packs' rows files",
        description="Rebuild ARCHIVE's index from the rows file each ingest part writes "
        "beside its header pack (docs/archive.md, 'Recovering a damaged index'); the old "
        "index is kept as index.damaged-<time>. Exits 1 if some instances could not be "
        "restored (header packs written before rows files existed, damaged rows files), "
        "2 if ARCHIVE is not an archive or an ingest runs.",
    )
    rebuild.add_argument("archive", help="the archive folder")
    rebuild.set_defaults(run=cmd_rebuild_index)

    info = commands.add_parser("info", help="counts, sizes and compression ratio of an archive")
    info.add_argument("archive", help="the archive folder")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(run=cmd_info)

    export = commands.add_parser(
        "export",
        help="rebuild original files, byte for byte",
        description="Write the original files as DESTINATION/<study>/<series>/<sop>.dcm "
        "(the current version of each instance), each checked against its sha256 first. UIDs "
        "become names safe on any filesystem (digits, lower-case letters and dots kept, other "
        "characters written _XX); links in DESTINATION are never written through.",
    )
    export.add_argument("archive", help="the archive folder")
    export.add_argument("destination", help="the folder to write to")
    export.add_argument(
        "--uid",
        dest="uids",
        action="append",
        metavar="SOP_INSTANCE_UID",
        help="export only this instance (repeatable)",
    )
    export.add_argument(
        "--all-versions",
        action="store_true",
        help="also write each earlier version of an instance (same SOP Instance UID and "
        "pixels, other bytes) as <sop>_v<n>.dcm, n from 1, oldest first",
    )
    export.set_defaults(run=cmd_export)

    from pacs_engine.synth import DEFAULT_SYNTAXES, SYNTAXES

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
    synth.add_argument(
        "--syntaxes",
        default=",".join(DEFAULT_SYNTAXES),
        help=f"comma-separated transfer syntaxes, used in turn across series; of "
        f"{', '.join(SYNTAXES)} (default: all)",
    )
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
    _add_progress(synth)
    synth.set_defaults(run=cmd_synth)

    read_bench = commands.add_parser(
        "read-bench",
        help="measure frame reads as a training loop sees them (frames/s, decoded MB/s)",
        description="Read FRAMES frames of every series of ARCHIVE as a FrameDataset two "
        "ways, random access (dataset[i] for random indices) and sequential (iter_chunks), "
        "with each number of worker processes given (each opens the archive itself), and "
        "report frames/s and decoded MB/s. Exits 2 if ARCHIVE is not an archive or holds "
        "no frames.",
    )
    read_bench.add_argument("archive", metavar="ARCHIVE", help="the archive folder")
    read_bench.add_argument(
        "--frames", type=int, default=512, help="frames read per measurement (default: 512)"
    )
    read_bench.add_argument(
        "--workers",
        type=int,
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
        help="also measure, in the same run, pydicom on the original files (the same random "
        "frames with the same workers, and every volume) and the codec alone on the same "
        "chunks, per modality and codec (needs the files the index rows name)",
    )
    read_bench.add_argument("--json", action="store_true", help="print the report as JSON")
    read_bench.set_defaults(run=cmd_read_bench)

    samples = commands.add_parser(
        "samples", help="print the folder of DICOM sample files shipped with pydicom"
    )
    samples.set_defaults(run=cmd_samples)
    return parser


def _starts_local_workers(argv: list[str]) -> bool:
    """True when the command line runs ingest or verify in local worker processes."""
    early = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    early.add_argument("command", nargs="?")
    early.add_argument("--workers", type=int)
    early.add_argument("--executor")
    try:
        known, _ = early.parse_known_args(argv)
    except argparse.ArgumentError:  # a malformed command line: the real parser says why
        return False
    command_workers = known.command in ("ingest", "verify") and known.workers != 0
    asks_help = not {"-h", "--help"}.isdisjoint(argv)
    return command_workers and known.executor != "dask" and not asks_help


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `pacs-engine`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if _starts_local_workers(argv):
        from pacs_engine.ingest.executors import start_forkserver

        start_forkserver()
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except _package_errors() as error:  # not an archive, locked, damaged: say so in one line
        print(f"pacs-engine {args.command}: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the disk, permissions: the error names the file
        print(f"pacs-engine {args.command}: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _package_errors() -> tuple[type[Exception], ...]:
    """The errors of the package that say what is wrong with an archive or an input."""
    from pacs_engine.archive import ArchiveError
    from pacs_engine.archive.blobs import BlobError
    from pacs_engine.archive.pixel_store import ArrayMetadataError
    from pacs_engine.codecs import CodecError
    from pacs_engine.errors import ScanError
    from pacs_engine.index import DamagedIndexError
    from pacs_engine.ingest.session import StaleSession
    from pacs_engine.inputs import InputError
    from pacs_engine.read.volume import VolumeError

    return (
        ArchiveError,
        ArrayMetadataError,
        BlobError,
        CodecError,
        DamagedIndexError,
        InputError,
        ScanError,
        StaleSession,
        VolumeError,
    )


if __name__ == "__main__":
    sys.exit(main())
