"""benchmarks/ab_compare.py: the figures it reads from a run, the comparison, one real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import ab_compare, bench_ingest
from benchmarks.ab_compare import Tree, benchmark_figures, compare, printed_figures

SRC = Path(__file__).resolve().parent.parent / "src"


def test_printed_figures_read_bench_ingest_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table bench_ingest.py prints is read back, each number under its column."""
    rows = {
        "a": bench_ingest.Measured("pacs-engine 1 worker(s)", 2.0, 20, 8_000_000, 2.5, 300.0),
        "b": bench_ingest.Measured("Orthanc HTTP, as received", 4.0, 20, 8_000_000, None, 90.4),
    }
    monkeypatch.setattr(bench_ingest, "ROWS", rows)
    files = bench_ingest.IngestSet("set", None, [], 0, {}, {}, set(), 0)
    text = "\n".join(["9 passed in 3.2s", *bench_ingest.table_lines(files)])
    assert printed_figures(text) == {
        "printed: pacs-engine 1 worker(s) | inst/s": 10.0,
        "printed: pacs-engine 1 worker(s) | raw MB/s": 4.0,
        "printed: pacs-engine 1 worker(s) | ratio": 2.5,
        "printed: pacs-engine 1 worker(s) | wall s": 2.0,
        "printed: pacs-engine 1 worker(s) | peak RSS MiB": 300.0,
        "printed: Orthanc HTTP, as received | inst/s": 5.0,
        "printed: Orthanc HTTP, as received | raw MB/s": 2.0,
        "printed: Orthanc HTTP, as received | wall s": 4.0,
        "printed: Orthanc HTTP, as received | peak RSS MiB": 90.0,
    }


def test_benchmark_figures_flatten_extra_info() -> None:
    report = {
        "benchmarks": [
            {
                "name": "test_x[1]",
                "fullname": "benchmarks/bench_scan.py::test_x[1]",
                "stats": {"median": 0.5},
                "extra_info": {
                    "files_per_s": 1200,
                    "evict": "fadvise",
                    "cold": True,
                    "rows": [{"mode": "random", "frames_per_s": 3.5}],
                    "by_codec": {"lz4": {"ratio": 1.9}},
                },
            }
        ]
    }
    assert benchmark_figures(report) == {
        "bench_scan::test_x[1] median_s": 0.5,
        "bench_scan::test_x[1] files_per_s": 1200.0,
        "bench_scan::test_x[1] rows[0 random].frames_per_s": 3.5,
        "bench_scan::test_x[1] by_codec.lz4.ratio": 1.9,
    }


def test_compare_medians_ratio_spread() -> None:
    before = Tree("before", SRC, SRC.parent, runs=[{"t": 1.0, "n": 5}, {"t": 3.0, "n": 5}])
    after = Tree("after", SRC, SRC.parent, runs=[{"t": 1.0, "n": 5, "only_after": 1}])
    rows, constant = compare(before, after)
    assert constant == 1  # "n"; "only_after" is not in both
    assert rows == [
        {
            "figure": "t",
            "before": 2.0,
            "after": 1.0,
            "ratio": 0.5,
            "spread_before": 1.0,
            "spread_after": None,
            "rounds": (2, 1),
        }
    ]


def test_a_src_without_extensions_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pacs_engine").mkdir()
    (tmp_path / "pacs_engine" / "__init__.py").write_text("")
    with pytest.raises(SystemExit):
        ab_compare.parse_args(["--before", str(tmp_path), "--after", str(SRC), "x.py"])


def test_one_round(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real run on a tiny benchmark file: figures compared, a failing test reported."""
    (tmp_path / "bench_tiny.py").write_text(
        "def test_fast(benchmark):\n"
        "    benchmark.extra_info['answer'] = 42\n"
        "    benchmark(sum, range(100))\n"
        "def test_broken():\n"
        "    assert False, 'broken on purpose'\n"
    )
    out = tmp_path / "ab.json"
    trees = ["--before", str(SRC), "--after", str(SRC), "--bench-root", str(tmp_path)]
    code = ab_compare.main([*trees, "--rounds", "1", "--json", str(out), "--", "bench_tiny.py"])
    printed = capsys.readouterr().out
    assert code == 1  # test_broken failed in both runs
    assert printed.count("FAILED round 1: exit 1") == 2
    compared = json.loads(out.read_text())
    assert [row["figure"] for row in compared["compared"]] == ["bench_tiny::test_fast median_s"]
    for side in ("before", "after"):
        (run,) = compared["runs"][side]
        assert run["bench_tiny::test_fast answer"] == 42
    assert "bench_tiny::test_fast median_s" in printed
