"""libFuzzer harness (atheris) for the ingest: one input file into a fresh archive.

The checks are those of `benchmarks/fuzz_ingest.py` (`check_batch`): the report's
invariant, every input archived, a duplicate or quarantined with its bytes, archived
instances exporting byte for byte with pydicom's pixels. A finding raises, which
libFuzzer reports as a crash with its input. Memory is capped by libFuzzer's
`-rss_limit_mb` and, like the plain job, by RLIMIT_DATA (PACS_FUZZ_CAP_GIB, default 2).

    python fuzz/fuzz_ingest.py CORPUS_DIR SEED_DIR [libFuzzer flags]

Seeds are whole small DICOM files with pixel data (not `make_seeds.py`'s, whose cut
pixel data would only be quarantined). Without atheris, run the plain job instead:
`python benchmarks/fuzz_ingest.py --seconds 600`.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import tempfile
import warnings
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

warnings.simplefilter("ignore")  # pydicom warns about every odd value
logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
CAP = int(float(os.environ.get("PACS_FUZZ_CAP_GIB", "2")) * (1 << 30))

with atheris.instrument_imports(include=["pacs_engine"]):
    from benchmarks.fuzz_ingest import check_batch


class Finding(AssertionError):
    """The ingest broke one of its promises on this input."""


def test_one_input(data: bytes) -> None:
    """Ingest `data` as one file alone; raise Finding on what check_batch finds."""
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pacs-fuzz-ingest-") as workdir:
        _, findings = check_batch({"input.dcm": data}, Path(workdir), None, notes)
    if findings:
        raise Finding("; ".join(findings))


def main() -> None:
    """Cap memory, then fuzz."""
    resource.setrlimit(resource.RLIMIT_DATA, (CAP, CAP))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
