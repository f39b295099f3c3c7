"""`pacs-engine ingest`, `verify`, `info` and `export` on real files."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import pydicom_test_files, run_cli

from pacs_engine.cli import main


def test_ingest_verify_info_export(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    files = [
        p
        for p in pydicom_test_files()
        if p.name in ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_small_odd.dcm")
    ]
    for path in files:
        (source / path.name).write_bytes(path.read_bytes())
    (source / "readme.txt").write_text("not DICOM")
    archive = tmp_path / "archive"
    result = run_cli("ingest", str(source), "--archive", str(archive), "--json", "--verify")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["inputs"], report["archived"], report["quarantined"]) == (5, 4, 1)
    assert report["balanced"] is True
    assert report["archived_undecoded"] == 0  # the JPEG 2000 and RLE frames were decoded

    again = json.loads(run_cli("ingest", str(source), "--archive", str(archive), "--json").stdout)
    # Every file unchanged since the finished first run is skipped unread; the quarantined
    # one is tried again.
    assert (again["inputs"], again["unchanged"], again["quarantined"]) == (1, 4, 1)

    verify = run_cli("verify", str(archive))
    assert verify.returncode == 0 and "all match" in verify.stdout

    info = json.loads(run_cli("info", str(archive), "--json").stdout)
    assert info["instances"] == 4 and set(info["by_modality"]) == {"CT", "MR", "NM", "OT"}

    out = tmp_path / "out"
    assert run_cli("export", str(archive), str(out)).returncode == 0
    exported = {hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*.dcm")}
    assert exported == {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_ingest_says_how_many_bitstreams_it_did_not_decode(tmp_path: Path) -> None:
    files = [p for p in pydicom_test_files() if p.name in ("JPEG2000.dcm", "CT_small.dcm")]
    decoded = run_cli("ingest", *map(str, files), "--archive", str(tmp_path / "a"), "--json")
    assert json.loads(decoded.stdout)["archived_undecoded"] == 0
    trusted = ("--archive", str(tmp_path / "b"), "--trust-bitstreams")
    result = run_cli("ingest", *map(str, files), *trusted)
    assert result.returncode == 0, result.stderr
    assert "1 archived instances keep original compressed bitstreams" in result.stdout
    assert "pacs-engine verify" in result.stdout


def test_verify_exits_1_on_damage(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    ct = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    assert run_cli("ingest", str(ct), "--archive", str(archive)).returncode == 0
    (pack,) = (archive / "headers").rglob("*.pack")
    pack.write_bytes(b"\0" * pack.stat().st_size)
    result = run_cli("verify", str(archive))
    assert result.returncode == 1 and "MISMATCH" in result.stdout


def test_the_readme_sample_ingests_and_verifies(tmp_path: Path) -> None:
    """The README's first command: pydicom's bundled files archive, and verify passes
    (files whose frames do not decode were quarantined at ingest, not archived)."""
    samples = run_cli("samples").stdout.strip()
    archive = tmp_path / "archive"
    ingest = run_cli("ingest", samples, "--archive", str(archive), "--json")
    assert ingest.returncode == 0, ingest.stderr
    report = json.loads(ingest.stdout)
    assert report["archived_undecoded"] == 0
    assert any("cannot be decoded" in reason for reason in report["quarantine_reasons"])
    verify = run_cli("verify", str(archive))
    assert verify.returncode == 0, verify.stdout


def test_ingest_refuses_options_it_would_ignore(tmp_path: Path) -> None:
    """--codec/--transcode on an existing archive and --workers with Dask exit 2, archive kept."""
    archive = tmp_path / "archive"
    ct = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    mr = next(p for p in pydicom_test_files() if p.name == "MR_small.dcm")
    created = run_cli("ingest", str(ct), "--archive", str(archive), "--codec", "htj2k")
    assert created.returncode == 0, created.stderr
    before = (archive / "archive.json").read_bytes()
    refused = {
        "--codec": ("--codec", "jpegls"),
        "--transcode": ("--transcode",),
        "--workers": ("--executor", "dask", "--scheduler", "tcp://127.0.0.1:1", "--workers", "2"),
        "--scheduler": ("--scheduler", "tcp://127.0.0.1:1"),
    }
    for named, options in refused.items():
        result = run_cli("ingest", str(mr), "--archive", str(archive), *options)
        assert result.returncode == 2, (options, result.stderr)
        assert named in result.stderr, result.stderr
    assert (archive / "archive.json").read_bytes() == before
    same = run_cli("ingest", str(mr), "--archive", str(archive), "--codec", "htj2k", "--json")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["archived"] == 1


def test_with_dask_not_installed_an_ingest_says_so_in_one_line_and_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--executor dask` where dask.distributed cannot be imported: one line naming what to
    install, exit 3 (as docs/ingest.md says of the cluster's failures), no traceback."""
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    ct = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    archive = tmp_path / "archive"
    dask = ("--executor", "dask", "--scheduler", "tcp://127.0.0.1:1", "--no-progress")
    status = main(["ingest", str(ct), "--archive", str(archive), *dask])
    assert status == 3
    assert capsys.readouterr().err.splitlines() == [
        "pacs-engine ingest: the Dask executor needs dask.distributed: "
        "pip install 'pacs_engine[dask]'"
    ]


def test_with_dask_an_archive_that_cannot_be_opened_is_said_before_the_scheduler_is_reached(
    tmp_path: Path,
) -> None:
    """`--executor dask` with nobody at the scheduler's address: a bad archive path is said
    first, in one line (exit 2), with no word of the scheduler; a good archive is opened,
    then the scheduler is reached and its failure said, and the archive is left unlocked."""
    ct = next(p for p in pydicom_test_files() if p.name == "CT_small.dcm")
    bad = tmp_path / "a-file"
    bad.write_bytes(b"not an archive")
    with socket.socket() as bound:  # a port of 127.0.0.1 bound but not listening: refused
        bound.bind(("127.0.0.1", 0))
        scheduler = f"tcp://127.0.0.1:{bound.getsockname()[1]}"
        dask = ("--executor", "dask", "--scheduler", scheduler, "--no-progress")
        refused = run_cli("ingest", str(ct), "--archive", str(bad), *dask)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.splitlines() == [
            f"pacs-engine ingest: {bad}: exists and is not a folder"
        ]
        assert bad.read_bytes() == b"not an archive"
        key = tmp_path / "key"
        assert run_cli("deid-key", str(key)).returncode == 0
        research = ("--archive", str(tmp_path / "research"), "--deidentify", "--key-file", str(key))
        copy = run_cli("ingest", str(bad), *research, *dask)
        assert copy.returncode == 2, copy.stderr
        assert len(copy.stderr.splitlines()) == 1 and "not a pacs_engine archive" in copy.stderr
        archive = tmp_path / "archive"
        fast = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}
        unreached = run_cli("ingest", str(ct), "--archive", str(archive), *dask, env=fast)
    assert unreached.returncode == 3, unreached.stderr
    assert scheduler in unreached.stderr
    done = run_cli("ingest", str(ct), "--archive", str(archive), "--workers", "0", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["archived"] == 1


def test_open_or_create_checks_options_against_the_existing_archive(tmp_path: Path) -> None:
    """`Archive.open_or_create` (what `ingest` uses): creates with the options, reopens
    with the same or none, and refuses other ones without touching the archive."""
    import pytest

    from pacs_engine.archive import Archive, ArchiveError

    folder = tmp_path / "archive"
    assert not Archive.exists(folder)
    with Archive.open_or_create(folder, codec="htj2k", transcode=True) as archive:
        assert (archive.config["codec"], archive.config["transcode"]) == ("htj2k", True)
        assert not archive.readonly
    assert Archive.exists(folder)
    before = (folder / "archive.json").read_bytes()
    for same in ({}, {"codec": "htj2k"}, {"codec": "htj2k", "transcode": True}):
        with Archive.open_or_create(folder, **same) as archive:
            assert archive.config["codec"] == "htj2k"
    refused = {"codec": {"codec": "jpegls"}, "group": {"group": "0"}}
    for named, options in refused.items():
        with pytest.raises(ArchiveError, match=f"--{named} applies only"):
            Archive.open_or_create(folder, **options)
    plain = tmp_path / "plain"
    with Archive.open_or_create(plain) as archive:
        assert (archive.config["codec"], archive.config["transcode"]) == ("auto", False)
    with pytest.raises(ArchiveError, match="--transcode applies only"):
        Archive.open_or_create(plain, transcode=True)
    assert (folder / "archive.json").read_bytes() == before
    with Archive.open_or_create(folder):  # the writer lock was released by every refusal
        pass
    other = tmp_path / "other"
    other.mkdir()
    (other / "archive.json").mkdir()  # not a file: not an archive, and not empty
    assert not Archive.exists(other)
    with pytest.raises(ArchiveError, match="not empty"):
        Archive.open_or_create(other)


def test_each_command_is_a_module_that_registers_itself() -> None:
    """`pacs_engine.cli`: one module per command, each adding the subparser of its name."""
    import argparse

    from pacs_engine import cli

    names = [m.__name__.rsplit(".", 1)[1].replace("_", "-") for m in cli.command_modules()]
    for module in cli.command_modules():
        parser = argparse.ArgumentParser()
        module.add_subparser(parser.add_subparsers(dest="command"))
        (choice,) = parser._subparsers._group_actions[0].choices  # exactly one command
        assert choice == module.__name__.rsplit(".", 1)[1].replace("_", "-")
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert list(commands) == names and len(set(names)) == len(names)
    assert cli.main(["samples"]) == 0  # the entry point `pacs_engine.cli:main`


def test_the_forkserver_starts_before_the_heavy_imports() -> None:
    """`main` starts the workers' forkserver for local ingest and verify, before zarr is
    imported, so both start up at once; not for in-process or Dask runs, nor for help."""
    code = (
        "import sys, multiprocessing.forkserver as fs\n"
        "import pacs_engine.cli as cli\n"
        "assert 'zarr' not in sys.modules and 'pydicom' not in sys.modules\n"
        "cases = {\n"
        "    ('ingest', 'src', '--archive', 'a'): True,\n"
        "    ('verify', 'a', '--workers', '2'): True,\n"
        "    ('ingest', 'src', '--archive', 'a', '--workers', '0'): False,\n"
        "    ('ingest', 'a', '--archive', 'r', '--deidentify', '--key-file', 'k'): False,\n"
        "    ('ingest', 'src', '--archive', 'a', '--executor', 'dask'): False,\n"
        "    ('ingest', '--help'): False,\n"
        "    ('serve', 'a', '--dimse-port', '104'): True,\n"
        "    ('serve', 'a', '--workers', '0'): False,\n"
        "    ('migrate', '--from', 'OLD@h:104', '--archive', 'a'): True,\n"
        "    ('migrate', '--from', 'OLD@h:104', '--archive', 'a', '--workers', '0'): False,\n"
        "    ('scan', 'src'): False,\n"
        "    ('ingest', 'src', '--workers', 'x'): False,\n"
        "}\n"
        "for argv, expected in cases.items():\n"
        "    assert cli._starts_local_workers(list(argv)) is expected, argv\n"
        "from pacs_engine.executors import start_forkserver\n"
        "start_forkserver()\n"
        "assert fs._forkserver._forkserver_pid is not None\n"
        "assert 'zarr' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # a bad --workers is left to the real parser to report


def test_building_the_parser_imports_neither_zarr_nor_the_input_readers() -> None:
    """Every command builds every parser: `ingest`'s must not import the pixel store (zarr)
    nor the input readers to list --codec's choices; a --codec is still checked."""
    code = (
        "import sys\n"
        "import pacs_engine.cli as cli\n"
        "parser = cli.build_parser()\n"
        "heavy = {'zarr', 'pacs_engine.archive.pixel_store', 'pacs_engine.ingest.inputs'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        "args = parser.parse_args(['ingest', 'src', '--archive', 'a', '--codec', 'htj2k'])\n"
        "assert args.codec == 'htj2k' and args.max_input_bytes is None\n"
        "parser.parse_args(['ingest', 'src', '--archive', 'a', '--codec', 'nope'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr  # argparse refused the unknown codec
    assert "invalid choice: 'nope'" in result.stderr and "'htj2k'" in result.stderr
    help_text = run_cli("ingest", "--help").stdout
    assert "--codec CODEC" in help_text and "one of auto, " in help_text
