"""The archive on disk: names no input can collide with, permissions, a damaged index and its
rebuild, tidy on a full disk, two creators at once, one-line errors from the CLI."""

from __future__ import annotations

import builtins
import errno
import grp
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pydicom
import pytest
from pydicom import config

from pacs_engine import Archive, ArchiveError, open_archive
from pacs_engine.archive.blobs import dump_rows
from pacs_engine.archive.rebuild import rebuild_index
from pacs_engine.index import DamagedIndexError, Index
from pacs_engine.ingest.tidy import tidy_archive
from pacs_engine.storage import series_folder
from pacs_engine.synth import write_studies

CLI = [sys.executable, "-m", "pacs_engine.cli"]
PAGE = 4096


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """Tests run under the usual umask (022), and leave the process's umask as it was."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_studies(out, 1, 2, 6, rows=32, columns=32, seed=3)
    return out


@pytest.fixture(scope="module")
def built(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An archive of the sources, ingested by two worker processes."""
    path = tmp_path_factory.mktemp("built") / "a"
    old = os.umask(0o022)
    try:
        with Archive.create(path) as archive:
            report = archive.ingest([sources], workers=2)
        assert report.archived == len(list(sources.rglob("*.dcm"))) > 0
    finally:
        os.umask(old)
    return path


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )


def rows_of(path: Path) -> dict[str, dict[str, Any]]:
    with open_archive(path) as archive:
        return {row["SOPInstanceUID"]: row for row in archive.index}


# --- 5: names inside the archive -------------------------------------------------------

HOSTILE_SERIES = [
    "zarr.json",
    "..",
    ".",
    "a/b",
    ".tmp",
    "index",
    "headers",
    "pixels",
    "quarantine",
    "reports",
    "archive.json",
    "c",
    "1." * 100 + "1",  # 201 bytes: longer than a UID the index keys
    "9" * 65,  # DICOM's form, but longer than a DICOM UID
    "Sérié-ünïcode",
]


def test_hostile_series_uids_are_archived_or_quarantined_and_a_resume_works(
    sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = sorted(sources.rglob("*.dcm"))[0]
    folder = tmp_path / "in"
    folder.mkdir()
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.IGNORE)
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.IGNORE)
    for number, series in enumerate(HOSTILE_SERIES):
        ds = pydicom.dcmread(template)
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = f"1.2.3.{number}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"{number}.dcm", enforce_file_format=True)
    archive_path = tmp_path / "a"
    first = run_cli("ingest", folder, "--archive", archive_path, "--workers", "0", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["inputs"] == len(HOSTILE_SERIES)
    assert report["archived"] + report["quarantined"] == len(HOSTILE_SERIES)
    rows = rows_of(archive_path)
    with open_archive(archive_path) as archive:
        for number, series in enumerate(HOSTILE_SERIES):
            sop = f"1.2.3.{number}"
            if sop not in rows:
                continue
            assert rows[sop]["SeriesInstanceUID"] == series
            array = rows[sop]["pixels"]["array"]
            assert array.startswith(f"{series_folder(series)}/")
            assert series_folder(series).startswith("uid-")  # none of these is a DICOM UID
            assert rows[sop]["header"]["pack"].startswith(f"headers/{series_folder(series)}/")
            assert archive.export_bytes(sop) == (folder / f"{number}.dcm").read_bytes()
        quarantined = {r["path"] for r in archive.quarantine.records()}
    for number in range(len(HOSTILE_SERIES)):
        assert (f"1.2.3.{number}" in rows) != any(p.endswith(f"{number}.dcm") for p in quarantined)
    # The archive's own files are intact: the pixels group and the description.
    assert json.loads((archive_path / "pixels" / "zarr.json").read_bytes())["node_type"] == "group"
    assert json.loads((archive_path / "archive.json").read_bytes())["format"]
    again = run_cli("ingest", folder, "--archive", archive_path, "--workers", "0", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["archived"] == 0
    assert run_cli("verify", archive_path, "--workers", "0").returncode == 0


def test_a_dicom_form_series_uid_keeps_its_folder_name_and_others_get_a_digest() -> None:
    assert series_folder("1.2.840.113619.2.55") == "1.2.840.113619.2.55"
    names = {series_folder(s) for s in HOSTILE_SERIES}
    assert len(names) == len(HOSTILE_SERIES)  # distinct values, distinct folders
    for name in names:
        assert name.startswith("uid-") and len(name) == 36


def test_an_archive_with_series_folders_named_by_uid_is_still_read_and_tidied(
    built: Path, tmp_path: Path
) -> None:
    """Archives written before named every series folder by its UID; rows store the paths."""
    old = tmp_path / "old"
    shutil.copytree(built, old)
    rows = rows_of(old)
    series = next(iter(rows.values()))["SeriesInstanceUID"]
    legacy = "legacy-series"  # not of DICOM's form: the new code would digest it
    for top in ("pixels", "headers"):
        (old / top / series_folder(series)).rename(old / top / legacy)
    moved = []
    for row in rows.values():
        if row["SeriesInstanceUID"] == series:
            row = {**row, "SeriesInstanceUID": legacy}
            row["pixels"] = {
                **row["pixels"],
                "array": row["pixels"]["array"].replace(series, legacy),
            }
            row["header"] = {**row["header"], "pack": row["header"]["pack"].replace(series, legacy)}
            moved.append(row)
    index = Index.open(old / "index", readonly=False)
    index.commit(moved)
    index.close()
    with open_archive(old, readonly=False) as archive:
        tidied = tidy_archive(archive)
        assert tidied.files == 0
        assert archive.pixels.arrays(legacy) == sorted({r["pixels"]["array"] for r in moved})
        for row in moved:
            assert len(archive.frames(row["SOPInstanceUID"])) == row["pixels"]["frames"]
        assert archive.verify().ok


# --- 6: permissions ----------------------------------------------------------------------


def modes(path: Path) -> dict[str, int]:
    """The permission bits (setgid included) of everything under path."""
    out = {".": stat.S_IMODE(path.stat().st_mode)}
    for item in path.rglob("*"):
        out[str(item.relative_to(path))] = stat.S_IMODE(item.lstat().st_mode)
    return out


def assert_private(path: Path, folder: int = 0o700, file: int = 0o600) -> None:
    wrong = {
        name: oct(mode)
        for name, mode in modes(path).items()
        if mode != (folder if (path / name).is_dir() else file)
    }
    assert not wrong, wrong


def test_an_archive_stays_private_through_ingest_resume_tidy_and_more_ingests(
    built: Path, sources: Path, tmp_path: Path
) -> None:
    assert_private(built)
    assert built.stat().st_mode & 0o777 == 0o700
    assert {p.name for p in built.rglob("*.pack")} and {p.name for p in built.rglob("*.rows")}
    archive_path = tmp_path / "a"
    shutil.copytree(built, archive_path)
    again = run_cli("ingest", sources, "--archive", archive_path, "--workers", "2", "--json")
    assert again.returncode == 0, again.stderr
    assert_private(archive_path)
    more = tmp_path / "more"
    write_studies(more, 1, 1, 3, rows=32, columns=32, seed=11)
    (more / "junk.dcm").write_bytes(b"not DICOM at all")
    report = run_cli("ingest", more, "--archive", archive_path, "--workers", "2", "--json")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["quarantined"] == 1
    assert any((archive_path / "quarantine").iterdir())
    assert run_cli("tidy", archive_path).returncode == 0
    assert_private(archive_path)


def test_a_group_archive_is_group_readable_and_stays_so(sources: Path, tmp_path: Path) -> None:
    group = next(g for g in grp.getgrall() if g.gr_gid != os.getgid())
    archive_path = tmp_path / "a"
    first = run_cli(
        "ingest", sources, "--archive", archive_path, "--group", group.gr_name, "--workers", "2"
    )
    assert first.returncode == 0, first.stderr
    assert run_cli("ingest", sources, "--archive", archive_path, "--workers", "0").returncode == 0
    assert_private(archive_path, folder=0o2750, file=0o640)
    regroup = run_cli("ingest", sources, "--archive", archive_path, "--group", "root")
    assert regroup.returncode == 2 and "--group applies only when it is created" in regroup.stderr
    groups = {item.stat().st_gid for item in [archive_path, *archive_path.rglob("*")]}
    assert groups == {group.gr_gid}


def test_an_unknown_group_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="no such group"):
        Archive.create(tmp_path / "a", group="no-such-group-here")
    assert not (tmp_path / "a").exists()


# --- 10: a damaged index ----------------------------------------------------------------


def stored_row(archive_path: Path, sop: str) -> bytes:
    """The bytes the rows database stores for `sop`, as LMDB has them on disk."""
    env = lmdb.open(str(archive_path / "index"), readonly=True, lock=False, max_dbs=16)
    try:
        with env.begin() as txn:
            return bytes(txn.get(sop.encode(), db=env.open_db(b"rows", txn=txn, create=False)))
    finally:
        env.close()


def damage(archive_path: Path, how: str, rows: dict[str, dict]) -> None:
    """Cut the index file in half, or zero the page holding a row, or flip bytes of that row."""
    data_file = archive_path / "index" / "data.mdb"
    data = bytearray(data_file.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:
        sop = sorted(rows)[len(rows) // 2]
        value = stored_row(archive_path, sop)
        node = sop.encode() + value  # a leaf node: its key, then its value
        # Every copy: LMDB's freed pages keep earlier ones; one of them is the live row.
        found, at = [], data.find(node)
        while at != -1:
            found.append(at + len(sop))
            at = data.find(node, at + 1)
        assert found
        for at in found:
            if how == "zeroed page":
                page = at // PAGE
                data[page * PAGE : (page + 1) * PAGE] = bytes(PAGE)
            else:  # flipped bytes in the middle of the row's stored value
                for offset in range(len(value) // 3, 2 * len(value) // 3, 5):
                    data[at + offset] ^= 0x5A
    data_file.write_bytes(bytes(data))


READER = """
import sys
from pacs_engine import open_archive
from pacs_engine.index import DamagedIndexError
try:
    with open_archive(sys.argv[1]) as archive:
        archive.info()
        [archive.index.get(sop) for sop in sys.argv[2:]]
        archive.query(PatientID="*")
except DamagedIndexError as error:
    print("DAMAGED", error)
    sys.exit(7)
"""


@pytest.mark.parametrize("how", ["truncated", "zeroed page", "flipped bytes"])
def test_a_damaged_index_is_named_by_verify_and_rebuilt_exactly(
    built: Path, tmp_path: Path, how: str
) -> None:
    archive_path = tmp_path / "a"
    shutil.copytree(built, archive_path)
    original = rows_of(archive_path)
    damage(archive_path, how, original)
    checked = run_cli("verify", archive_path, "--workers", "0")
    assert checked.returncode == 1, (checked.stdout, checked.stderr)
    assert "DAMAGED INDEX" in checked.stdout and "data.mdb" in checked.stdout
    assert "rebuild-index" in checked.stdout and "Traceback" not in checked.stderr
    if how != "zeroed page":  # LMDB aborts on a zeroed tree page a reader reaches (docs)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        reader = subprocess.run(
            [sys.executable, "-c", READER, str(archive_path), *original],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert reader.returncode == 7, (reader.stdout, reader.stderr)
        assert "index" in reader.stdout
        info = run_cli("info", archive_path)
        assert info.returncode == 2 and "Traceback" not in info.stderr
        assert len(info.stderr.strip().splitlines()) == 1 and "index" in info.stderr
    rebuilt = run_cli("rebuild-index", archive_path)
    assert rebuilt.returncode == 0, (rebuilt.stdout, rebuilt.stderr)
    assert f"{len(original):,} instances restored" in rebuilt.stdout
    assert rows_of(archive_path) == original
    assert run_cli("verify", archive_path, "--workers", "0").returncode == 0
    assert list(archive_path.glob("index.damaged-*"))  # the old one is kept


def test_a_truncated_index_is_refused_before_it_is_mapped(built: Path, tmp_path: Path) -> None:
    archive_path = tmp_path / "a"
    shutil.copytree(built, archive_path)
    damage(archive_path, "truncated", {})
    with pytest.raises(DamagedIndexError, match=r"data\.mdb: cut short"):
        open_archive(archive_path)


def test_rebuild_leaves_out_rows_of_a_part_that_was_never_committed(
    built: Path, tmp_path: Path
) -> None:
    archive_path = tmp_path / "a"
    shutil.copytree(built, archive_path)
    original = rows_of(archive_path)
    row = next(r for r in original.values() if r.get("pixels"))
    array = archive_path / "pixels" / row["pixels"]["array"] / "zarr.json"
    meta = json.loads(array.read_bytes())
    meta["shape"][0] = row["pixels"]["first_frame"]  # as if killed before the commit
    array.write_bytes(json.dumps(meta).encode())
    result = rebuild_index(archive_path)
    assert result.uncommitted >= 1 and row["SOPInstanceUID"] not in rows_of(archive_path)


def _stale_rows_file(archive_path: Path, rows: list[dict[str, Any]], name: str) -> None:
    """A rows file and pack of a part that never committed, written before the others."""
    folder = archive_path / Path(rows[0]["header"]["pack"]).parent
    pack = f"{folder.relative_to(archive_path)}/{name}.pack"
    shutil.copyfile(archive_path / rows[0]["header"]["pack"], archive_path / pack)
    rows = [{**row, "header": {**row["header"], "pack": pack}} for row in rows]
    (folder / f"{name}.rows").write_bytes(dump_rows(rows, written_ns=1))


def test_rebuild_leaves_out_every_row_of_a_part_that_was_never_committed(
    built: Path, tmp_path: Path
) -> None:
    """A row beyond its array's committed frames tells for its part's rows without pixels;
    frames another part wrote over and committed tell for the part that had them first."""
    archive_path = tmp_path / "a"
    shutil.copytree(built, archive_path)
    original = rows_of(archive_path)
    row = next(r for r in original.values() if r.get("pixels"))
    count = json.loads(
        (archive_path / "pixels" / row["pixels"]["array"] / "zarr.json").read_bytes()
    )
    beyond = {**row["pixels"], "first_frame": count["shape"][0]}
    uncommitted = [
        {**row, "SOPInstanceUID": f"{row['SOPInstanceUID']}.1", "pixels": beyond},
        {**row, "SOPInstanceUID": f"{row['SOPInstanceUID']}.2", "pixels": None},
    ]
    _stale_rows_file(archive_path, uncommitted, "killed")
    # Its frames were taken by the part committed after it (another instance's, here).
    _stale_rows_file(archive_path, [{**row, "SOPInstanceUID": f"{row['SOPInstanceUID']}.3"}], "old")
    result = rebuild_index(archive_path)
    assert result.uncommitted == 3
    assert rows_of(archive_path) == original


def test_packs_without_rows_files_are_reported_by_rebuild(built: Path, tmp_path: Path) -> None:
    archive_path = tmp_path / "a"
    shutil.copytree(built, archive_path)
    sidecar = sorted(archive_path.rglob("*.rows"))[0]
    sidecar.unlink()
    rebuilt = run_cli("rebuild-index", archive_path)
    assert rebuilt.returncode == 1
    assert f"NOT RESTORED headers/{sidecar.parent.name}/{sidecar.stem}.pack" in rebuilt.stdout


# --- 11: tidy on a full disk ------------------------------------------------------------


def test_tidy_frees_space_on_a_full_disk(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive_path = tmp_path / "a"
    shutil.copytree(built, archive_path)
    original = rows_of(archive_path)
    # What a killed, never resumed run leaves: an array and a pack no row uses.
    some_array = next(r["pixels"]["array"] for r in original.values() if r.get("pixels"))
    orphan = archive_path / "pixels" / series_folder("9.9.9") / "orphan"
    shutil.copytree(archive_path / "pixels" / some_array, orphan)
    pack = sorted(archive_path.rglob("*.pack"))[0]
    orphan_pack = archive_path / "headers" / series_folder("9.9.9") / "orphan.pack"
    orphan_pack.parent.mkdir()
    shutil.copy(pack, orphan_pack)
    shutil.copy(pack.with_suffix(".rows"), orphan_pack.with_suffix(".rows"))
    (archive_path / ".session").write_text("a session of the killed run")
    real_open, real_os_open = builtins.open, os.open

    def full(error_path: Any) -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(error_path))

    def no_space_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        writes = isinstance(file, str | os.PathLike) and any(c in mode for c in "wax+")
        if writes and (not Path(file).exists() or "w" in mode):
            raise full(file)
        return real_open(file, mode, *args, **kwargs)

    def no_space_os_open(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and not Path(file).exists():
            raise full(file)
        return real_os_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_space_open)
    monkeypatch.setattr(os, "open", no_space_os_open)
    with open_archive(archive_path, readonly=False) as archive:
        tidied = tidy_archive(archive)
    monkeypatch.undo()
    assert tidied.files >= 3 and tidied.bytes > 0
    assert not orphan.exists() and not orphan_pack.exists()
    assert not orphan_pack.with_suffix(".rows").exists()
    assert rows_of(archive_path) == original
    with open_archive(archive_path) as archive:
        assert archive.verify().ok


def test_tidy_frees_space_on_a_really_full_filesystem(built: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (the injected ENOSPC test still runs)")
    try:
        archive_path = disk / "a"
        shutil.copytree(built, archive_path)
        array = next(r["pixels"]["array"] for r in rows_of(archive_path).values() if r["pixels"])
        orphan = archive_path / "pixels" / series_folder("9.9.9") / "orphan"
        shutil.copytree(archive_path / "pixels" / array, orphan)
        with open(disk / "filler", "wb") as filler, pytest.raises(OSError) as full:
            for _ in range(8 * 16 + 1):  # 8 MiB in 64 KiB writes, and one more
                filler.write(bytes(1 << 16))
                filler.flush()
        assert full.value.errno == errno.ENOSPC
        tidied = run_cli("tidy", archive_path)
        assert tidied.returncode == 0, tidied.stderr
        assert "removed" in tidied.stdout and not orphan.exists()
        assert run_cli("verify", archive_path, "--workers", "0").returncode == 0
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# --- 12: two creators at once -----------------------------------------------------------


def _create(path: str, start: Any, codec: str, out: Any) -> None:
    start.wait()
    try:
        Archive.create(path, codec=codec).close()
        out.put("created")
    except ArchiveError as error:
        out.put(f"refused: {error}")
    except BaseException as error:  # what the test must never see
        out.put(f"CRASH {type(error).__name__}: {error}")


@pytest.mark.parametrize("same_options", [True, False])
def test_two_processes_creating_one_archive_never_crash(tmp_path: Path, same_options: bool) -> None:
    context = multiprocessing.get_context("fork")
    for attempt in range(20):
        path = tmp_path / f"a{attempt}"
        start, out = context.Barrier(2), context.Queue()
        codecs = ("jpegls", "jpegls") if same_options else ("jpegls", "raw")
        workers = [
            context.Process(target=_create, args=(str(path), start, codec, out)) for codec in codecs
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        results = sorted(out.get(timeout=10) for _ in workers)
        assert not any(r.startswith("CRASH") for r in results), results
        assert "created" in results, results
        for result in results:
            if result.startswith("refused"):
                assert str(path) in result
                assert "another process" in result
        with open_archive(path) as archive:
            assert archive.config["codec"] in codecs
        assert not list(tmp_path.glob(f".a{attempt}.creating*"))


# --- 13: one-line errors ----------------------------------------------------------------


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr


def test_cli_errors_are_one_line_naming_the_file(
    built: Path, sources: Path, tmp_path: Path
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line_error(run_cli("ingest", sources, "--archive", a_file), str(a_file), "not a folder")
    one_line_error(run_cli("info", a_file), str(a_file))
    broken = tmp_path / "broken"
    shutil.copytree(built, broken)
    (broken / "archive.json").write_text("{ not json")
    for command in (["info", broken], ["verify", broken], ["tidy", broken]):
        one_line_error(run_cli(*command), str(broken / "archive.json"))
    one_line_error(run_cli("ingest", sources, "--archive", broken), "archive.json")
    zarr_broken = tmp_path / "zarr_broken"
    shutil.copytree(built, zarr_broken)
    row = next(r for r in rows_of(zarr_broken).values() if r.get("pixels"))
    array_meta = zarr_broken / "pixels" / row["pixels"]["array"] / "zarr.json"
    array_meta.write_text("{ not json")
    one_line_error(run_cli("info", zarr_broken), str(array_meta))


def test_header_blobs_and_rows_files_are_zstandard_frames_numcodecs_reads_both_ways() -> None:
    """Archives written when numcodecs compressed them stay readable, and older code reads ours."""
    from numcodecs import Zstd

    from pacs_engine.archive.blobs import ENCAPSULATED, HeaderBlob, load_rows

    blob = HeaderBlob(
        ENCAPSULATED,
        b"\0" * 128 + b"DICM" + bytes(range(256)) * 40,
        b"\xfe\xff\xdd\xe0",
        offset_table_item=b"\xfe\xff\x00\xe0\x00\x00\x00\x00",
        fragment_lengths=((10, 20), (30,)),
        delimiter=b"\xfe\xff\xdd\xe0\x00\x00\x00\x00",
    )
    ours = blob.to_bytes()
    theirs = Zstd(level=3)
    raw = bytes(theirs.decode(ours))
    assert raw[:4] == b"PEB1" and HeaderBlob.from_bytes(bytes(theirs.encode(raw))) == blob
    rows = [{"SOPInstanceUID": "1.2.3", "n": n} for n in range(500)]
    record = json.loads(bytes(theirs.decode(dump_rows(rows, written_ns=7))))
    digest = record.pop("sha256")  # of the rest, as written (since session 18)
    assert record == {"written_ns": 7, "rows": rows} and len(digest) == 64
    # Older code reads "rows" and "written_ns" and leaves the digest; rows files written
    # before it (no digest) read as they did.
    assert load_rows(bytes(theirs.encode(json.dumps(record).encode()))) == (7, rows)
