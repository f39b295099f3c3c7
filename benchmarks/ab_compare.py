"""Before and after, same run, same machine: one benchmark selection on two source trees.

    python benchmarks/ab_compare.py --before /path/to/old/src --after src --rounds 3 \\
        -- benchmarks/bench_scan.py -k per_file_ratios

Runs `python -m pytest SELECTION` once per tree per round, alternating the trees
(before, after, then after, before, ... so that a drift of the machine during the run
weighs on both alike), each time with PYTHONPATH=<that tree's src>:<bench root>, so
the same benchmark code measures both trees (or, with --own-benchmarks, each tree's
own benchmarks/, from the folder above its src). Before the first round it checks
that each tree's `pacs_engine` and its native scanner are imported from that tree.

Figures collected from each run:
- pytest-benchmark's JSON (--benchmark-json): per benchmark its median round time
  (`<test> median_s`) and every number in its extra_info (`<test> <key>`; nested
  dicts and lists flattened, list items named by their index and text fields);
- the tables the benchmarks print (bench_ingest.py and bench_read.py print theirs
  with -s): rows of a label then numbers, each number named by its column in the
  header line above the table (`printed: <label> | <column>`).

Per figure it prints the median over rounds before and after, after / before, the
spread of each tree's rounds ((max - min) / median), and whether after / before
differs from 1 by more than the larger spread, so a reader sees which differences
stand out of the run-to-run noise (two or three rounds understate it: a change just
beyond the spread is a reason to run more rounds, not a finding). Figures equal in
every run are counted, not listed. Whether higher or lower is better depends on the figure (a
time, a rate, a ratio): read its name. Bounded: at most --rounds rounds, each pytest
run stopped after --timeout seconds, and no new run started after --max-seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MAX_ROUNDS = 20
#: A number as the benchmarks print one: 1,234.5, 67.3x, 0.93; "-" is a missing value.
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?x?|-")
TREES = ("before", "after")


@dataclass
class Tree:
    """One side of the comparison: its src folder and where its benchmarks run from."""

    name: str
    src: Path
    bench_root: Path
    runs: list[dict[str, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (the pytest selection follows `--`)."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/ab_compare.py",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python benchmarks/ab_compare.py --before ../base/src --after src "
        "--rounds 2 -- benchmarks/bench_scan.py -k per_file_ratios",
    )
    parser.add_argument("--before", type=Path, required=True, help="the old tree's src folder")
    parser.add_argument("--after", type=Path, required=True, help="the new tree's src folder")
    parser.add_argument(
        "--rounds", type=int, default=3, help=f"runs per tree, 1..{MAX_ROUNDS} (default 3)"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds one pytest run may take (3600)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=4 * 3600,
        help="start no new run after this many seconds (14400)",
    )
    parser.add_argument(
        "--bench-root",
        type=Path,
        default=ROOT,
        help="folder pytest runs in, holding benchmarks/ (default: this repository)",
    )
    parser.add_argument(
        "--own-benchmarks",
        action="store_true",
        help="run each tree's own benchmarks (the folder above its src) instead",
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    parser.add_argument("--keep", type=Path, help="keep each run's JSON and output in this folder")
    parser.add_argument("--json", type=Path, help="write every run's figures and the table here")
    parser.add_argument(
        "selection", nargs="+", help="pytest arguments, after --: files, -k EXPR, ..."
    )
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be 1..{MAX_ROUNDS}, not {args.rounds}")
    for side in TREES:
        src = getattr(args, side)
        if not (src / "pacs_engine" / "__init__.py").is_file():
            parser.error(f"--{side} {src}: no pacs_engine package in it (give a src folder)")
        if not list((src / "pacs_engine" / "_native").glob("scanner*.so")):
            parser.error(f"--{side} {src}: the native extensions are not built in it")
    return args


def environment(tree: Tree) -> dict[str, str]:
    """This process's environment, with the tree's src first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree.src.resolve()), str(tree.bench_root.resolve())])
    return env


def check_imports(tree: Tree, python: str) -> None:
    """Fail unless the tree's pacs_engine and native scanner are the ones imported."""
    code = (
        "import pacs_engine, pacs_engine._native.scanner as s; "
        "print(pacs_engine.__file__); print(s.__file__)"
    )
    done = subprocess.run(
        [python, "-c", code],
        env=environment(tree),
        cwd=tree.bench_root,
        capture_output=True,
        text=True,
        check=False,
    )
    src = tree.src.resolve()
    paths = [Path(line).resolve() for line in done.stdout.split()]
    if done.returncode != 0 or len(paths) != 2 or not all(p.is_relative_to(src) for p in paths):
        sys.exit(f"{tree.name}: pacs_engine not imported from {src}: {done.stdout}{done.stderr}")


def flatten(prefix: str, value: Any) -> Iterator[tuple[str, float]]:
    """Every number in a JSON value, named by its path (list items by index and text fields)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield prefix, float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(f"{prefix}.{key}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            texts = (
                [v for v in item.values() if isinstance(v, str)] if isinstance(item, dict) else []
            )
            yield from flatten(f"{prefix}[{' '.join([str(index), *texts])}]", item)


def benchmark_figures(report: dict[str, Any]) -> dict[str, float]:
    """Median round time and extra_info numbers of every benchmark in a --benchmark-json file."""
    figures = {}
    for bench in report.get("benchmarks", []):
        # "benchmarks/bench_scan.py::test_x[1]" -> "bench_scan::test_x[1]"
        file, _, test = (bench.get("fullname") or bench["name"]).rpartition("::")
        name = f"{Path(file).stem}::{test}" if file else test
        figures[f"{name} median_s"] = float(bench["stats"]["median"])
        for key, value in bench.get("extra_info", {}).items():
            figures.update(flatten(f"{name} {key}", value))
    return figures


def printed_figures(text: str) -> dict[str, float]:
    """Numbers of the tables in a run's output, named `printed: <row label> | <column>`.

    A row is a label (with a letter in it) followed by at least two numbers ("-" for a
    missing one); the line above the row's table is its header, whose names are
    separated by two spaces or more (the benchmarks pad their columns), and the
    numbers take its last names in order.
    """
    figures: dict[str, float] = {}
    header = ""
    for line in text.splitlines():
        tokens = list(re.finditer(r"\S+", line))
        first = len(tokens)
        while first > 0 and NUMBER.fullmatch(tokens[first - 1].group()):
            first -= 1
        label = line[: tokens[first].start()].strip() if first < len(tokens) else ""
        if len(tokens) - first < 2 or not re.search(r"[A-Za-z]", label):
            header = line
            continue
        numbers = [token.group() for token in tokens[first:]]
        # The header's last names, one per number ("-" keeps its place, not its width).
        names = re.split(r"\s{2,}", header.strip())[-len(numbers) :]
        if len(names) < len(numbers):
            names = [f"column {i + 1}" for i in range(len(numbers))]
        for name, number in zip(names, numbers, strict=True):
            if number != "-":
                figures[f"printed: {label} | {name}"] = float(number.rstrip("x").replace(",", ""))
    return figures


def _text(data: bytes | str | None) -> str:
    """A run's captured output as text (a timeout gives bytes, or None)."""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def run_once(tree: Tree, args: argparse.Namespace, round_no: int, scratch: Path) -> None:
    """One pytest run of the selection on one tree; its figures go to tree.runs."""
    stem = scratch / f"{tree.name}-{round_no}"
    bench_json = stem.with_suffix(".json")
    cmd = [args.python, "-m", "pytest", *args.selection, "-q", "-s", "-p", "no:cacheprovider"]
    cmd += ["--benchmark-json", str(bench_json)]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            cmd,
            env=environment(tree),
            cwd=tree.bench_root,
            capture_output=True,
            timeout=args.timeout,
            check=False,
        )
        output, code = _text(done.stdout) + _text(done.stderr), str(done.returncode)
    except subprocess.TimeoutExpired as expired:
        output = _text(expired.stdout) + _text(expired.stderr)
        code = f"timeout after {args.timeout:.0f} s"
    stem.with_suffix(".log").write_text(output)
    figures = printed_figures(output)
    if bench_json.is_file():
        figures.update(benchmark_figures(json.loads(bench_json.read_text())))
    seconds = time.perf_counter() - started
    print(
        f"  round {round_no + 1} {tree.name}: {seconds:.0f} s, exit {code}, {len(figures)} figures",
        file=sys.stderr,
    )
    if code != "0":
        tail = "\n".join(output.splitlines()[-15:])
        tree.failures.append(f"round {round_no + 1}: exit {code}\n{tail}")
    if figures:
        tree.runs.append(figures)


def spread(values: list[float]) -> float | None:
    """(max - min) / median of a figure's rounds, None with fewer than two or a zero median."""
    middle = statistics.median(values)
    return (max(values) - min(values)) / abs(middle) if len(values) > 1 and middle else None


def compare(before: Tree, after: Tree) -> tuple[list[dict[str, Any]], int]:
    """Per figure found in both trees' runs: medians, ratio and spreads; and the constants."""
    names = sorted({n for run in before.runs for n in run} & {n for run in after.runs for n in run})
    rows, constant = [], 0
    for name in names:
        old = [run[name] for run in before.runs if name in run]
        new = [run[name] for run in after.runs if name in run]
        if len(set(old + new)) == 1:
            constant += 1
            continue
        old_median, new_median = statistics.median(old), statistics.median(new)
        rows.append(
            {
                "figure": name,
                "before": old_median,
                "after": new_median,
                "ratio": new_median / old_median if old_median else None,
                "spread_before": spread(old),
                "spread_after": spread(new),
                "rounds": (len(old), len(new)),
            }
        )
    return rows, constant


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def render(rows: list[dict[str, Any]], constant: int) -> list[str]:
    """The table: one line per figure, and whether its change exceeds the noise."""
    width = min(90, max((len(r["figure"]) for r in rows), default=10))
    lines = [
        f"{'figure':<{width}} {'before':>12} {'after':>12} {'after/before':>12}"
        f" {'spread b':>9} {'spread a':>9}  verdict"
    ]
    for r in rows:
        noise = max(
            (s for s in (r["spread_before"], r["spread_after"]) if s is not None), default=None
        )
        if noise is None:
            verdict = "spread unknown (one round)"
        elif r["ratio"] is None:
            verdict = ""
        else:
            verdict = "within spread" if abs(r["ratio"] - 1) <= noise else "BEYOND spread"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        lines.append(
            f"{r['figure'][:width]:<{width}} {r['before']:>12.5g} {r['after']:>12.5g}"
            f" {ratio:>12} {_pct(r['spread_before']):>9} {_pct(r['spread_after']):>9}  {verdict}"
        )
    lines.append(
        f"({constant} figures equal in every run left out; spread = (max - min) / median of a"
        " tree's rounds: with few rounds it understates the noise)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; exit 1 if a run failed or produced no figures."""
    args = parse_args(argv)
    trees = {
        side: Tree(
            side,
            getattr(args, side),
            getattr(args, side).resolve().parent if args.own_benchmarks else args.bench_root,
        )
        for side in TREES
    }
    for tree in trees.values():
        check_imports(tree, args.python)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ab-compare-") as tmp:
        scratch = args.keep or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        for round_no in range(args.rounds):
            order = TREES if round_no % 2 == 0 else TREES[::-1]
            for side in order:
                if time.monotonic() - started > args.max_seconds:
                    print(
                        f"--max-seconds {args.max_seconds:.0f} reached: stopping", file=sys.stderr
                    )
                    break
                run_once(trees[side], args, round_no, scratch)
    before, after = trees["before"], trees["after"]
    rows, constant = compare(before, after)
    print(
        f"before: {before.src} ({len(before.runs)} runs), after: {after.src} "
        f"({len(after.runs)} runs); selection: {' '.join(args.selection)}"
    )
    print("\n".join(render(rows, constant)))
    for tree in (before, after):
        for failure in tree.failures:
            print(f"{tree.name} FAILED {failure}")
    if args.json:
        runs = {side: trees[side].runs for side in TREES}
        args.json.write_text(json.dumps({"runs": runs, "compared": rows}, indent=1))
    failed = before.failures or after.failures or not (before.runs and after.runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
