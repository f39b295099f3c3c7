"""Copy DICOM files into a fuzzing seed folder, shrinking big pixel data.

    python fuzz/make_seeds.py OUT_DIR [--max-bytes N] FILE_OR_DIR ...

Real headers are what make good seeds; megabytes of pixels only slow the
fuzzer down. A file whose pixel data the scanner can locate keeps everything
but its pixel value, cut to at most --pixel-bytes (native data: the length
field is rewritten; encapsulated data: each fragment is cut and its item
length rewritten). Files still over --max-bytes, and files the scanner
refuses that are over it, are left out. Seeds are named by content hash.
"""

from __future__ import annotations

import argparse
import hashlib
import struct
import warnings
from pathlib import Path

from pacs_engine import ScanError, scan


def shrink(data: bytes, pixel_bytes: int) -> bytes:
    """data with its pixel data value cut to about pixel_bytes (unchanged if it can't be)."""
    try:
        header = scan(data)
    except ScanError:
        return data
    pixel = header.pixel
    if pixel is None or header.deflated:
        return data
    endian = "<" if header.little_endian else ">"
    if not pixel.encapsulated:
        if pixel.value_length <= pixel_bytes:
            return data
        keep = pixel_bytes - pixel_bytes % 2
        length = struct.pack(f"{endian}I", keep)
        start = pixel.value_offset
        return data[: start - 4] + length + data[start : start + keep] + data[pixel.value_end :]
    out = bytearray(data[: pixel.value_offset])
    bot = pixel.basic_offset_table_offset
    out += data[pixel.value_offset : bot + len(pixel.basic_offset_table) * 4]
    per_fragment = max(16, pixel_bytes // max(1, pixel.number_of_fragments))
    item = struct.pack(f"{endian}HH", 0xFFFE, 0xE000)
    for offset, length in zip(pixel.fragment_offsets, pixel.fragment_lengths, strict=True):
        keep = min(int(length), per_fragment)
        keep -= keep % 2
        out += item + struct.pack(f"{endian}I", keep) + data[offset : offset + keep]
    out += struct.pack(f"{endian}HHI", 0xFFFE, 0xE0DD, 0) + data[pixel.value_end :]
    return bytes(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("inputs", type=Path, nargs="+")
    parser.add_argument("--max-bytes", type=int, default=64 * 1024)
    parser.add_argument("--pixel-bytes", type=int, default=512)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    files = [f for p in args.inputs for f in (sorted(p.rglob("*")) if p.is_dir() else [p])]
    kept = 0
    for path in files:
        if not path.is_file() or path.suffix in {".py", ".txt", ".tsv", ".md", ".json", ".gz"}:
            continue
        data = shrink(path.read_bytes(), args.pixel_bytes)
        if len(data) > args.max_bytes:
            continue
        name = hashlib.sha1(data).hexdigest()
        target = args.out / name
        if not target.exists():
            target.write_bytes(data)
            kept += 1
    print(f"{kept} seeds in {args.out}")


if __name__ == "__main__":
    main()
