"""What the tests' shared set-up promises the other tests."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

#: Test modules that use benchmarks/orthanc.py (`conftest.benchmark_module`).
USERS_OF_BENCHMARKS = ["test_migrate", "test_web_wado", "test_web_qido"]

CHECK = """
import sys
before = list(sys.path)
for name in sys.argv[1:]:
    __import__(name)
assert sys.path == before, [p for p in sys.path if p not in before]
import conftest
print(conftest.__file__)
"""


def test_importing_test_modules_leaves_sys_path_and_conftest_alone() -> None:
    """benchmarks/ on sys.path made its conftest.py the one a worker process found when it
    imported a test module by name (the worker-crash test of test_ingest then failed)."""
    tests = ROOT / "tests"
    done = subprocess.run(
        [sys.executable, "-c", CHECK, *USERS_OF_BENCHMARKS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tests,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(ROOT / "src")])},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(tests / "conftest.py")
