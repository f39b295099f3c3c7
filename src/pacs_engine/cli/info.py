"""`pacs-engine info`: counts, sizes and compression ratio of an archive."""

from __future__ import annotations

import argparse
import json

from pacs_engine.cli._common import megabytes


def add_subparser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `info`."""
    info = commands.add_parser(
        "info",
        help="counts, sizes on disk and compression ratio of an archive",
        description="Patients, studies, series and instances; bytes on disk (allocated "
        "blocks, as du counts them) by part: pixels, headers, index, quarantine, reports, "
        "spool and audit (those present) and other; source, raw and stored pixel bytes "
        "and the compression ratio, by modality, by codec and by chunk layout (whole "
        "frames, or the tiles of a copy made with --tile); the storage options the "
        "archive was made with (codec, tile, frames a shard).",
    )
    info.add_argument("archive", help="the archive folder")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(run=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    """Counts, sizes and compression ratio of an archive, by modality and codec."""
    from pacs_engine.archive import open_archive

    with open_archive(args.archive) as archive:
        info = archive.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"{info['path']}: {info['patients']:,} patients, {info['studies']:,} studies, "
        f"{info['series']:,} series, {info['instances']:,} instances, "
        f"{info['quarantined']:,} quarantined"
    )
    disk = info["disk_bytes"]
    parts = ", ".join(f"{k} {megabytes(v)}" for k, v in disk.items() if k != "total")
    print(f"on disk {megabytes(disk['total'])}: {parts}")
    storage = info["storage"]
    print(
        f"storage: codec {storage['codec']}, {storage['frames_per_shard']} frames a shard, "
        f"frames over {storage['max_chunk_pixels']:,} pixels in tiles of {storage['tile']}"
        + (", transcoded" if storage["transcode"] else "")
    )
    print(
        f"source files {megabytes(info['source_bytes'])}, raw pixels "
        f"{megabytes(info['raw_pixel_bytes'])}, stored {megabytes(info['stored_bytes'])}, "
        f"ratio {info['ratio'] or '-'}"
    )
    titles = ("By modality:", "by_modality"), ("By codec:", "by_codec")
    for title, key in (*titles, ("By chunk layout:", "by_chunks")):
        print(f"\n{title}")
        for name, row in info[key].items():
            print(
                f"  {name:<40} {row['instances']:>8,}  {megabytes(row['stored_bytes']):>12}"
                f"  ratio {row['ratio'] or '-'}"
            )
    return 0
