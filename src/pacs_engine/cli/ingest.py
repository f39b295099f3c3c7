"""`pacs-engine ingest`: archive DICOM inputs into an archive, created when missing."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pacs_engine.cli._common import (
    add_follow_links,
    add_progress,
    byte_count,
    fail,
    megabytes,
    shows_progress,
    worker_count,
)
from pacs_engine.interrupt import INTERRUPTED

if TYPE_CHECKING:
    from pacs_engine.workers import Executor


class _CodecChoices:
    """The `--codec` choices, imported when first needed (a --codec given, the help).

    The codecs come from the pixel store and the codec registry (plugins too), which
    import zarr, numpy and pydicom: building the parser of every command must not.
    """

    def __contains__(self, codec: object) -> bool:
        return codec in self._choices()

    def __iter__(self) -> Iterator[str]:
        return iter(self._choices())

    @staticmethod
    def _choices() -> tuple[str, ...]:
        from pacs_engine.archive.pixel_store import CODEC_CHOICES

        return CODEC_CHOICES


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `ingest`."""
    ingest = commands.add_parser(
        "ingest",
        help="archive DICOM files (folders are walked) into an archive",
        description="Archive every input under SRC into ARCHIVE (created when missing): "
        "folders (walked recursively), files, and .zip/.tar/.tar.gz archives (read in place). "
        "Inputs are scanned, grouped by series and encoded in parallel worker processes. "
        "Each input ends archived, as a duplicate, as a conflict or quarantined with its "
        "reason; the report (also written to ARCHIVE/reports/) says how many of each. "
        "Interrupted (Ctrl-C, even kill -9), the same command resumes where it stopped. "
        "A file (or zip/tar) with the size, mtime and inode it had when a finished run read "
        "it is skipped unread and reported as unchanged, not as an input. "
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
        choices=_CodecChoices(),
        metavar="CODEC",  # named, so that argparse lists the choices only in the help
        help="lossless codec for uncompressed frames of a new archive, one of %(choices)s "
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
        "--tile",
        type=int,
        metavar="N",
        help="for a new archive: store frames larger than NxN pixels with the archive codec "
        "as NxN chunks, each decodable alone (e.g. 128 for a training copy read in patches: "
        "a 32x128x128 patch then decodes only the chunks it overlaps); default: frames up to "
        "4096x4096 in one chunk, larger ones in 1024x1024 tiles",
    )
    ingest.add_argument(
        "--workers",
        type=worker_count,
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
        type=byte_count,
        metavar="N",
        help="the largest input read (default 2 GiB; suffixes K, M, G, T): a larger one is "
        "quarantined with its size, sha256 and first 64 KiB, without being read into memory",
    )
    ingest.add_argument(
        "--keep-non-dicom",
        action="store_true",
        help="keep the whole bytes of a file that is not DICOM in the quarantine "
        "(default: only its path, size and sha256)",
    )
    add_follow_links(ingest)
    ingest.add_argument(
        "--group",
        metavar="NAME",
        help="for a new archive: let this group read it (folders 2750 with the group, files "
        "0640) instead of its owner alone (0700/0600)",
    )
    _add_deid_arguments(ingest)
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")
    add_progress(ingest)
    ingest.set_defaults(run=cmd_ingest)


def _add_deid_arguments(ingest: argparse.ArgumentParser) -> None:
    """The options of a de-identified copy (`--deidentify`, docs/deidentify.md)."""
    group = ingest.add_argument_group("de-identified research copies (DICOM PS3.15 Annex E)")
    group.add_argument(
        "--deidentify",
        action="store_true",
        help="SRC is one pacs_engine archive: copy it into ARCHIVE de-identified (headers "
        "rewritten by PS3.15 Table E.1-1, pixels copied untouched)",
    )
    group.add_argument("--profile", default="basic", choices=("basic",), help="the profile")
    group.add_argument(
        "--option",
        default="",
        metavar="A,B,...",
        help="options of Table E.1-1 by name, e.g. retain-longitudinal-modified-dates,"
        "clean-descriptors,retain-patient-characteristics",
    )
    group.add_argument("--key-file", metavar="KEY", help="the key (`pacs-engine deid-key`)")
    group.add_argument(
        "--burned-in",
        default="leave-out",
        choices=("leave-out", "keep"),
        help="instances that may carry identity in their pixels (Burned In Annotation YES, "
        "ultrasound, secondary capture, photographs, video): left out and listed in the "
        "report (default), or copied like any other",
    )
    group.add_argument(
        "--keep-private",
        action="append",
        default=[],
        metavar="CREATOR:XX",
        help="with the retain-safe-private option, a private attribute known to be safe: its "
        "private creator and element byte in hex (repeatable), e.g. 'SIEMENS CT VA0  COAD:10'",
    )


def _keep_private(values: list[str]) -> list[tuple[str, int]]:
    """--keep-private values as (private creator, element byte)."""
    kept = []
    for value in values:
        creator, _, element = value.rpartition(":")
        try:
            kept.append((creator, int(element, 16)))
        except ValueError:
            raise ValueError(f"--keep-private {value!r}: expected CREATOR:XX (hex)") from None
    return kept


def cmd_deidentify(args: argparse.Namespace) -> int:
    """Copy an archive of record into a de-identified research archive."""
    from pacs_engine.deid.run import deidentify
    from pacs_engine.executors import ExecutorError
    from pacs_engine.ingest import IngestStopped

    if len(args.sources) != 1 or not args.key_file:
        return fail("ingest", "--deidentify needs one source archive and --key-file KEY", 2)
    if args.follow_links or args.keep_non_dicom or args.max_frame_bytes:
        # The inputs are the source archive's instances: these would be ignored.
        return fail(
            "ingest",
            "--follow-links, --keep-non-dicom and --max-frame-bytes do not apply to --deidentify",
            2,
        )
    if args.tile is not None:
        return fail("ingest", "--tile does not apply to --deidentify", 2)
    try:
        keep_private = _keep_private(args.keep_private)
    except ValueError as error:
        return fail("ingest", str(error), 2)
    # Local work: `deidentify` chooses, from the source's size, this process or workers; a
    # Dask cluster it reaches once the archives are open (what is wrong with them first).
    try:
        report = deidentify(
            args.sources[0],
            args.archive,
            args.key_file,
            options=[o.strip() for o in args.option.split(",") if o.strip()],
            profile=args.profile,
            burned_in=args.burned_in,
            safe_private=keep_private,
            workers=args.workers,
            scheduler=args.scheduler if args.executor == "dask" else None,
            codec=args.codec,
            transcode=args.transcode,
            group=args.group,
            verify=args.verify,
            trust_bitstreams=args.trust_bitstreams,
        )
    except (IngestStopped, ExecutorError) as error:  # ExecutorError: no dask.distributed here
        return fail("ingest", str(error), 3)
    summary = report.to_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_render_deid(summary))
    return 0 if report.balanced else 1


def _render_deid(summary: dict[str, Any]) -> str:
    """A de-identification report for people (it holds no identifying value)."""
    lines = [
        f"{summary['source_instances']:,} source instances: {summary['staged']:,} de-identified, "
        f"{summary['already_copied']:,} copied before, {summary['withheld']:,} withheld "
        f"(burned-in text), {summary['refused']:,} refused"
    ]
    for sop, reason in summary["refused_instances"].items():
        lines.append(f"  refused {sop}: {reason}")
    for sop, reason in summary["withheld_instances"].items():
        lines.append(f"  withheld {sop}: {reason}")
    actions = ", ".join(f"{a} {n:,}" for a, n in summary["actions"].items())
    lines.append(f"attributes changed, per action: {actions or 'none'}")
    if summary["source_quarantined_not_copied"]:
        lines.append(
            f"{summary['source_quarantined_not_copied']:,} files the source archive quarantined "
            "are not copied"
        )
    mismatches = summary["verify_mismatches"]
    if mismatches is not None:
        lines.append(f"verify of the research archive: {len(mismatches):,} mismatches")
    return "\n".join(lines)


def _executor_problem(args: argparse.Namespace) -> str | None:
    """Why the executor options do not fit together; None when they do.

    Options that would be ignored are refused rather than silently dropped.
    """
    if args.executor == "dask" and not args.scheduler:
        return "--executor dask needs --scheduler ADDRESS"
    if args.executor == "dask" and args.workers is not None:
        return "--workers applies to the local executor; a Dask cluster has its own workers"
    if args.scheduler and args.executor != "dask":
        return "--scheduler applies only with --executor dask"
    return None


def cmd_ingest(args: argparse.Namespace) -> int:
    """Archive the sources into an archive (created when missing); resumes an unfinished run."""
    from pacs_engine.executors import make_executor

    problem = _executor_problem(args)
    if problem:
        return fail("ingest", problem, 2)
    if args.deidentify:
        return cmd_deidentify(args)
    if args.key_file or args.option or args.keep_private or args.burned_in != "leave-out":
        return fail(
            "ingest", "--key-file, --option, --keep-private and --burned-in need --deidentify", 2
        )
    # Local workers first: they fork (as the forkserver is ready) while this process imports.
    # A Dask cluster is reached by the run, once the archive is open: an archive that cannot
    # be opened is said at once, not after an unreachable scheduler's connect timeout (30 s).
    executor = make_executor(args.workers) if args.executor != "dask" else None
    try:
        return _ingest(args, executor)
    finally:
        if executor is not None:
            executor.close()


def _ingest(args: argparse.Namespace, executor: Executor | None) -> int:
    """`cmd_ingest` once its local executor is made (the caller closes it); None: the run
    makes (and closes) the Dask executor of `args.scheduler`."""
    from pacs_engine.archive.prepare import MAX_INPUT_BYTES
    from pacs_engine.executors import ExecutorError
    from pacs_engine.ingest import IngestStopped
    from pacs_engine.ingest.archive import Archive
    from pacs_engine.stages import process_started

    # Options an existing archive was made with are checked there (ArchiveError: exit 2).
    try:
        archive = Archive.open_or_create(
            args.archive,
            codec=args.codec,
            transcode=args.transcode,
            group=args.group,
            tile=args.tile,
        )
    except ValueError as error:  # a --tile out of range
        return fail("ingest", str(error), 2)
    bar = _IngestBar(shows_progress(args))
    try:
        with archive:
            report = archive.ingest(
                args.sources,
                executor=executor,
                scheduler=args.scheduler,
                verify=args.verify,
                progress=bar.update if bar.shown else None,  # else no snapshots
                trust_bitstreams=args.trust_bitstreams,
                max_input_bytes=args.max_input_bytes or MAX_INPUT_BYTES,
                follow_links=args.follow_links,
                keep_non_dicom=args.keep_non_dicom,
                max_frame_bytes=args.max_frame_bytes,
                launched=process_started(),
            )
    except (IngestStopped, ExecutorError) as error:  # ExecutorError: no dask.distributed here
        bar.close()
        return fail("ingest", str(error), 3)
    except KeyboardInterrupt:  # the workers ignore Ctrl-C: they finish their task and stop
        bar.close()
        print(INTERRUPTED["ingest"], file=sys.stderr)
        return 130
    bar.close()
    summary = report.to_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_render_report(summary))
    return 0 if report.balanced else 1


def _render_report(summary: dict[str, Any]) -> str:
    """An ingest report (`IngestReport.to_dict()`) for people."""
    sessions = summary["sessions"]
    resumed = f", in {sessions} sessions (resumed {sessions - 1}x)" if sessions > 1 else ""
    lines = [
        f"{summary['inputs']:,} inputs: {summary['archived']:,} archived, "
        f"{summary['duplicates']:,} duplicates, {summary['conflicts']:,} conflicts, "
        f"{summary['quarantined']:,} quarantined"
    ]
    if summary["unchanged"]:
        lines.append(
            f"  {summary['unchanged']:,} files skipped unread: unchanged (size, mtime, inode) "
            "since an earlier run gave them an outcome; not counted as inputs"
        )
    if summary["versions"]:
        lines.append(
            f"  of the archived, {summary['versions']:,} are new versions of instances "
            "already archived (same SOP Instance UID and pixels, other bytes); "
            f"current: the version {summary['current_version']}"
        )
    lines.append(
        f"raw pixels {megabytes(summary['raw_pixel_bytes'])}, stored "
        f"{megabytes(summary['stored_bytes'])}, ratio {summary['ratio'] or '-'}, "
        f"{summary['seconds']} s ({summary['instances_per_second']} inputs/s, "
        f"{summary['raw_mb_per_second']} MB/s raw) with {summary['workers']} workers{resumed}"
    )
    phases = ", ".join(f"{p} {s} s" for p, s in summary["phase_seconds"].items())
    lines.append(f"  of which {phases}")
    if summary.get("first_encode_seconds") is not None:
        first = summary["first_encode_seconds"]
        lines.append(f"  first encode {first} s after the start (the command's launch)")
    if summary["stage_seconds"]:
        lines.append("  where each process's time went (CPU / wall s, largest first):")
    for process, stages in summary["stage_seconds"].items():
        if not stages:
            continue
        spent = ", ".join(f"{n} {t['cpu']:.2f}/{t['wall']:.2f}" for n, t in stages.items())
        lines.append(f"    {process}: {spent}")
    for reason, count in summary["quarantine_reasons"].items():
        lines.append(f"  quarantined {count:>6,}  {reason}")
    not_dicom = summary.get("not_dicom", [])
    if not_dicom:  # the first few here; every one in the report's "not_dicom"
        lines.append(f"  not DICOM (kept as path, size and sha256): {', '.join(not_dicom[:10])}")
        if len(not_dicom) > 10:
            lines.append(f"    and {len(not_dicom) - 10:,} more: see the run's report")
    flagged = summary.get("not_verified", {})
    trusted = summary["archived_undecoded"] - sum(flagged.values())
    if trusted:
        lines.append(
            f"{trusted:,} archived instances keep original compressed "
            "bitstreams that were not decoded (--trust-bitstreams: stored byte for byte); "
            "`pacs-engine verify` decodes them"
        )
    for reason, count in flagged.items():
        lines.append(f"  archived {count:>9,}  {reason}")
    return "\n".join(lines)


class _IngestBar:
    """The ingest progress bar: inputs done of all, raw MB/s and the ratio so far, ETA.

    Not shown, it is nothing: tqdm (~0.015 s of CPU) is imported only to show it.
    """

    def __init__(self, show: bool) -> None:
        self.shown = show
        self.bar: Any = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(unit=" inputs", file=sys.stderr, dynamic_ncols=True)
        self.phase = ""

    def update(self, progress: Any) -> None:
        """Show one Progress snapshot (only while shown: not called otherwise)."""
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
        if self.bar is not None:
            self.bar.close()
