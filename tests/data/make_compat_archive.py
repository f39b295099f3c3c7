"""Rebuild tests/data/archive-71bdf4b/: archives written by commit 71bdf4b, kept as test data.

Issue 12 asks that an archive written before its changes opens, reads and verifies
after them. Commit 71bdf4b is the last commit before those changes; this script
must run with THAT commit's code (a worktree of it, extensions built), not the
current one:

    git worktree add --detach /tmp/base71 71bdf4b
    (cd /tmp/base71 && python setup.py build_ext --inplace)
    PYTHONPATH=/tmp/base71/src python tests/data/make_compat_archive.py

It refuses to run with any other code. What it makes, under archive-71bdf4b/:

- sources/CT_small_changed.dcm: pydicom's CT_small.dcm with another InstitutionName
  (same SOP Instance UID, same pixels: a version of it), written once by pydicom and
  kept, so the tests compare with these exact bytes.
- archive/: `Archive.create(codec="auto")`, then `ingest(SOURCES, workers=0)`, then
  `ingest([sources/CT_small_changed.dcm], workers=0)` as a second run. SOURCES are
  pydicom's bundled test files (SOURCES.tsv lists them with their sha256): native
  CT, MR and RGB, big endian, deflated, a multi-frame RT dose, JPEG baseline, JPEG
  lossless, JPEG-LS, JPEG 2000 and RLE kept as their bitstream, the MR instance in
  four transfer syntaxes (versions of one instance), and MR_truncated.dcm, which is
  quarantined.
- derived/: the read-optimised copy `ingest([archive], workers=0)` into
  `Archive.create(codec="lz4", transcode=True)`, as `pacs-engine ingest ARCHIVE
  --archive DERIVED --codec lz4 --transcode` makes it.
- expected.json: what the old code reported (ingest reports, info, query counts).

Every file is the old code's, as it wrote it, except three kinds removed after it
closed the archives: `index/lock.mdb` (LMDB's reader table, no data; LMDB makes a
new one on open), `.writer.lock` (an empty flock file) and the run reports in
`reports/` (they name this machine's paths; a reader never opens them). The index
files are small as written (`data.mdb` about 200 kB: LMDB grows the file as it
fills, the 1 TiB map size is address space only), so they are not compacted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

COMMIT = "71bdf4b"
HERE = Path(__file__).resolve().parent
OUT = HERE / f"archive-{COMMIT}"
#: pydicom's bundled test files ingested, in this order (none is downloaded).
SOURCES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "rtdose.dcm",
    "SC_rgb_small_odd.dcm",
    "ExplVR_BigEnd.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle.dcm",
    "image_dfl.dcm",
    "MR_truncated.dcm",
)
CHANGED = "CT_small_changed.dcm"


def _check_code() -> None:
    """Refuse to run unless pacs_engine is imported from a checkout of COMMIT."""
    import pacs_engine

    src = Path(pacs_engine.__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "--short=7", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no", "src"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if head != COMMIT or dirty:
        sys.exit(
            f"pacs_engine is imported from {src} at {head} (changed: {bool(dirty)}); "
            f"run with PYTHONPATH=<a clean checkout of {COMMIT}>/src"
        )


def _counts(archive: object) -> dict[str, int]:
    return {level: len(archive.query(level)) for level in ("study", "series", "instance")}


def main() -> None:
    """Build the archives (see the module docstring)."""
    _check_code()
    from pacs_engine import Archive

    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "sources").mkdir(parents=True)
    paths = [get_testdata_file(name) for name in SOURCES]
    lines = ["name\tsha256\tbytes"]
    for name, path in zip(SOURCES, paths, strict=True):
        data = Path(path).read_bytes()
        lines.append(f"{name}\t{hashlib.sha256(data).hexdigest()}\t{len(data)}")
    changed = OUT / "sources" / CHANGED
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.InstitutionName = "Compat Test Hospital"
    ds.save_as(changed)
    data = changed.read_bytes()
    lines.append(f"sources/{CHANGED}\t{hashlib.sha256(data).hexdigest()}\t{len(data)}")
    (OUT / "SOURCES.tsv").write_text("\n".join(lines) + "\n")

    expected: dict[str, object] = {"commit": COMMIT, "pydicom": pydicom.__version__}
    with Archive.create(OUT / "archive", codec="auto") as archive:
        first = archive.ingest(paths, workers=0)
        second = archive.ingest([changed], workers=0)
        expected["reports"] = [first.to_dict(), second.to_dict()]
        expected["info"] = archive.info()
        expected["counts"] = _counts(archive)
    with Archive.create(OUT / "derived", codec="lz4", transcode=True) as derived:
        expected["derived_report"] = derived.ingest([OUT / "archive"], workers=0).to_dict()
        expected["derived_info"] = derived.info()
        expected["derived_counts"] = _counts(derived)
    for root in (OUT / "archive", OUT / "derived"):
        (root / "index" / "lock.mdb").unlink()
        shutil.rmtree(root / "reports", ignore_errors=True)
        (root / ".writer.lock").unlink(missing_ok=True)
    (OUT / "expected.json").write_text(json.dumps(expected, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
