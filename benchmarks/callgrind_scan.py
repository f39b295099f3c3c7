"""Noise-free cost per file: one scan workload over the benchmark file set, for callgrind.

    PYTHONHASHSEED=0 valgrind --tool=callgrind --collect-atstart=no \\
        --toggle-collect=functools_reduce .venv/bin/python -m benchmarks.callgrind_scan scan

Only the workload runs inside `functools.reduce`, so `--toggle-collect` counts its
instructions alone (user space: syscalls count as their libc wrappers). Divide
callgrind's "Collected" by the number of files this prints. Workloads: parse (the
native scan with one requested attribute), scan, read_all (scan, then read every
attribute), scan_many (threads=1). The counts repeat exactly with a fixed
PYTHONHASHSEED; the cyclic garbage collector is off during the workload, so that
collections due to earlier allocations do not blur them.
"""

from __future__ import annotations

import functools
import gc
import os
import sys

from benchmarks.conftest import build_file_set
from pacs_engine import scan, scan_many
from pacs_engine.scanning import _make_scanner


def main(workload: str) -> None:
    paths = build_file_set().paths  # scans every file once: caches and imports are warm
    one = _make_scanner(("SOPInstanceUID",))
    encoded = [os.fsencode(p) for p in paths]
    steps = {
        "parse": lambda: functools.reduce(lambda _, p: one.scan_paths([p]), encoded, None),
        "scan": lambda: functools.reduce(lambda _, p: scan(p), paths, None),
        "read_all": lambda: functools.reduce(
            lambda _, p: list(scan(p).attributes.values()), paths, None
        ),
        "scan_many": lambda: functools.reduce(lambda _, h: None, scan_many(paths, threads=1), None),
    }
    gc.collect()
    gc.disable()
    steps[workload]()
    print(f"{workload}: {len(paths)} files")


if __name__ == "__main__":
    main(sys.argv[1])
