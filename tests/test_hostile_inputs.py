"""Hostile inputs: repeated member names, huge declared sizes, deep trees, links, fifos.

Every test checks the report's invariant (inputs = archived + duplicates + conflicts +
quarantined) and that each input's bytes are archived or identified in the quarantine.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import pydicom
import pytest

from pacs_engine import Archive, open_archive
from pacs_engine.ingest.inputs import InputError, InputRef, iter_inputs, read_input
from pacs_engine.inventory import take_inventory
from pacs_engine.scanning import scan
from pacs_engine.sources import iter_files, sample_data_dir
from tests.conftest import ROOT, run_cli

DEEP = 1200  # past Python's default recursion limit of 1000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def instance(uid: str, padding: int = 0) -> bytes:
    """CT_small with another SOP Instance UID: a distinct instance of the same series,
    made bigger by a private OB element of `padding` bytes."""
    dataset = pydicom.dcmread(sample_data_dir() / "CT_small.dcm")
    dataset.SOPInstanceUID = uid
    dataset.file_meta.MediaStorageSOPInstanceUID = uid
    if padding:
        dataset.private_block(0x0009, "PACS ENGINE TEST", create=True).add_new(
            0x01, "OB", bytes(padding)
        )
    out = io.BytesIO()
    dataset.save_as(out)
    return out.getvalue()


def ingest(tmp_path: Path, sources: list, **options: object):
    """Ingest in this process; the report (balanced) and the archive, reopened."""
    archive = Archive.create(tmp_path / "archive")
    with archive:
        report = archive.ingest(sources, workers=0, **options)
    assert report.balanced
    assert report.inputs == (
        report.archived + report.duplicates + report.conflicts + report.quarantined
    )
    return report, open_archive(tmp_path / "archive")


def records(archive: Archive) -> dict[str, dict]:
    """Quarantine records by the input they name."""
    return {r["path"]: r for r in archive.quarantine.records()}


def write_members(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A zip, tar or tar.gz (by suffix) holding the members in order, repeats included."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Duplicate name": what the test is about
            for name, data in members:
                archive.writestr(name, data)
        return
    with tarfile.open(path, "w:gz" if path.name.endswith(".tar.gz") else "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


# --- 1. repeated member names ------------------------------------------------------


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz"])
def test_every_copy_of_a_repeated_member_name_is_archived(tmp_path: Path, suffix: str) -> None:
    a, b, c = instance("1.2.3.1"), instance("1.2.3.2"), instance("1.2.3.3")
    path = tmp_path / f"d{suffix}"
    write_members(path, [("x.dcm", a), ("y.dcm", c), ("x.dcm", b)])

    report, archive = ingest(tmp_path, [path])
    with archive:
        assert (report.inputs, report.archived) == (3, 3)
        for uid, data in (("1.2.3.1", a), ("1.2.3.2", b), ("1.2.3.3", c)):
            assert archive.export_bytes(uid) == data
        sources = {archive.index.get(uid)["source_path"] for uid in ("1.2.3.1", "1.2.3.2")}
    assert sources == {f"{path}::x.dcm", f"{path}::x.dcm#2"}


@pytest.mark.parametrize("suffix", [".zip", ".tar"])
def test_copy_keys_never_take_a_real_member_name(tmp_path: Path, suffix: str) -> None:
    # The second `x` cannot be `x#2`: a member is called that.
    members = [("x", b"first x"), ("x", b"second x"), ("x#2", b"real x#2"), ("x", b"third x")]
    path = tmp_path / f"names{suffix}"
    write_members(path, members)
    errors: list = []
    refs = list(iter_inputs([path], lambda *e: errors.append(e)))
    assert errors == []
    keyed = {ref.member: read_input(InputRef.from_key(ref.key)) for ref in refs}
    assert keyed == {
        "x": b"first x",
        "x#2": b"real x#2",
        "x#3": b"second x",
        "x#4": b"third x",
    }


# --- 4. sizes: declared, inflated, non-DICOM --------------------------------------

GIB4 = 4 << 30


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, str]:
    """A 4 MB zip whose member `big.dcm` inflates to 4 GiB of zeros, after a real CT."""
    chunk = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    # A full flush resets the window: every 1 MiB of zeros then deflates to the same bytes.
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH) == block
    count = GIB4 // len(chunk)
    deflated = block * count + deflate.flush()  # then an empty final block
    crc, digest = 0, hashlib.sha256()
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
        digest.update(chunk)
    ct = instance("1.2.3.9")
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ct.dcm", ct)
        info = zipfile.ZipInfo("big.dcm")
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size, info.compress_size, info.CRC = GIB4, len(deflated), crc
        info.header_offset = archive.fp.tell()
        archive.fp.write(info.FileHeader(zip64=True))
        archive.fp.write(deflated)
        archive.filelist.append(info)
        archive.NameToInfo[info.filename] = info
        archive.start_dir = archive.fp.tell()
        archive._didModify = True
    assert path.stat().st_size < 8 << 20
    with zipfile.ZipFile(path) as check:  # a well-formed zip64 member, as zipfile sees it
        assert check.getinfo("big.dcm").file_size == GIB4
        with check.open("big.dcm") as member:
            assert member.read(1 << 16) == bytes(1 << 16)
    return path, ct, digest.hexdigest()


def run_capped(code: str, memory: int, timeout: float) -> subprocess.CompletedProcess:
    """Python code in a fresh interpreter whose memory is capped.

    RLIMIT_DATA (heap and private mappings: every allocation), not RLIMIT_AS: the index's
    LMDB map reserves address space far beyond any memory it uses.
    """
    prelude = f"import resource\nresource.setrlimit(resource.RLIMIT_DATA, ({memory}, {memory}))\n"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_a_zip_member_declaring_4_gib_is_quarantined_under_a_memory_cap(
    tmp_path: Path, bomb: tuple[Path, bytes, str]
) -> None:
    path, ct, big_sha = bomb
    target = tmp_path / "archive"
    code = f"""
        import json
        from pacs_engine import Archive, open_archive
        with Archive.create({str(target)!r}) as archive:
            report = archive.ingest([{str(path)!r}], workers=0)
        print(json.dumps(report.to_dict()))
    """
    done = run_capped(code, 3 << 29, timeout=600)  # 1.5 GiB: a third of the member
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert (report["inputs"], report["archived"], report["quarantined"]) == (2, 1, 1)
    assert report["balanced"]
    with open_archive(target) as archive:
        assert archive.export_bytes("1.2.3.9") == ct
        record = records(archive)[f"{path}::big.dcm"]
        kept = archive.quarantine.root / f"{big_sha}.head"
        assert not (archive.quarantine.root / f"{big_sha}.dcm").exists()
    assert record["reason"] == (f"too large: {GIB4} bytes, more than the limit of {2 << 30} bytes")
    assert (record["sha256"], record["size"], record["kept_bytes"]) == (big_sha, GIB4, 1 << 16)
    assert kept.read_bytes() == bytes(1 << 16)


def test_a_member_inflating_past_its_declared_size_is_stopped(tmp_path: Path) -> None:
    # 64 MiB of zeros deflated, under a header that says 1 MiB: reading stops at 1 MiB.
    chunk = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = b"".join(deflate.compress(chunk) for _ in range(64)) + deflate.flush()
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("liar.dcm")
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size, info.compress_size, info.CRC = 1 << 20, len(deflated), zlib.crc32(chunk)
        info.header_offset = archive.fp.tell()
        archive.fp.write(info.FileHeader())
        archive.fp.write(deflated)
        archive.filelist.append(info)
        archive.NameToInfo[info.filename] = info
        archive.start_dir = archive.fp.tell()
        archive._didModify = True
    tracemalloc.start()
    try:
        data = read_input(InputRef(str(path), "liar.dcm"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data == chunk
    assert peak < 8 << 20


def deflated_bomb(path: Path, pixel_bytes: int) -> int:
    """A Deflated Explicit VR Little Endian file whose data set inflates to `pixel_bytes` of
    zero pixels (and its header); its size on disk."""
    dataset = pydicom.Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = "1.2.3.70", "1.2.3.70.1"
    dataset.SOPInstanceUID = "1.2.3.70.1.1"
    dataset.Modality, dataset.SamplesPerPixel = "OT", 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.Rows, dataset.Columns = 1024, pixel_bytes // 2048
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit, dataset.PixelRepresentation = 15, 0
    body = io.BytesIO()
    writer = pydicom.filebase.DicomFileLike(body)
    writer.is_little_endian, writer.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(writer, dataset)
    head = body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    meta_bytes = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(
        pydicom.filebase.DicomFileLike(meta_bytes), meta, enforce_standard=True
    )
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM" + meta_bytes.getvalue() + deflate.compress(head))
        for _ in range(pixel_bytes >> 20):
            out.write(deflate.compress(bytes(1 << 20)))
        out.write(deflate.flush())
    return path.stat().st_size


def test_a_deflated_data_set_is_inflated_up_to_the_input_limit_only(tmp_path: Path) -> None:
    # 32 MiB of zero pixels in a file of ~33 KB: it was inflated whole, in one call, past
    # the input limit (a 3.6 MB file took 3.8 GB, and every resume died of it).
    (tmp_path / "src").mkdir()
    size = deflated_bomb(tmp_path / "src" / "bomb.dcm", 32 << 20)
    ct = (sample_data_dir() / "CT_small.dcm").read_bytes()
    (tmp_path / "src" / "ct.dcm").write_bytes(ct)
    limit = 8 << 20
    assert size < limit
    report, archive = ingest(tmp_path, [tmp_path / "src"], max_input_bytes=limit)
    with archive:
        record = records(archive)[str(tmp_path / "src" / "bomb.dcm")]
    assert (report.inputs, report.archived, report.quarantined) == (2, 1, 1)
    assert record["reason"].startswith(
        f"the deflated data set inflates to more than {limit} bytes with its file meta"
    )
    # Under a limit that holds it, the same file is archived, its pixels whole.
    report, archive = ingest(tmp_path / "roomy", [tmp_path / "src" / "bomb.dcm"])
    with archive:
        assert report.archived == 1
        assert not archive.frames("1.2.3.70.1.1").any()


def test_inputs_over_the_limit_keep_a_head_and_a_hash(tmp_path: Path) -> None:
    ct = (sample_data_dir() / "CT_small.dcm").read_bytes()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ct.dcm").write_bytes(ct)
    big = instance("1.2.3.4", padding=200_000)
    tar = tmp_path / "src" / "t.tar"
    write_members(tar, [("big.dcm", big)])
    other = instance("1.2.3.5", padding=200_001)  # a file this time
    (tmp_path / "src" / "big.dcm").write_bytes(other)
    limit = 100_000
    report, archive = ingest(tmp_path, [tmp_path / "src"], max_input_bytes=limit)
    with archive:
        kept = records(archive)
        root = archive.quarantine.root
    assert (report.inputs, report.archived, report.quarantined) == (3, 1, 2)
    for key, data in ((f"{tar}::big.dcm", big), (str(tmp_path / "src" / "big.dcm"), other)):
        record = kept[key]
        assert record["reason"] == (
            f"too large: {len(data)} bytes, more than the limit of {limit} bytes"
        )
        assert (record["sha256"], record["size"]) == (sha(data), len(data))
        assert (root / f"{sha(data)}.head").read_bytes() == data[: 1 << 16]
    assert report.input_bytes == len(ct) + len(big) + len(other)  # counted, not lost


def test_not_dicom_keeps_path_size_and_hash_by_default_and_the_whole_on_request(
    tmp_path: Path,
) -> None:
    junk = os.urandom(300_000)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "report.pdf").write_bytes(junk)
    report, archive = ingest(tmp_path, [tmp_path / "src"])
    with archive:
        record = records(archive)[str(tmp_path / "src" / "report.pdf")]
        root = archive.quarantine.root
    assert (report.inputs, report.quarantined) == (1, 1)
    assert record["reason"].startswith("not a DICOM file")
    assert (record["sha256"], record["size"], record["kept_bytes"]) == (sha(junk), 300_000, 0)
    assert not (root / f"{sha(junk)}.head").exists()
    assert not (root / f"{sha(junk)}.dcm").exists()
    assert report.not_dicom == [str(tmp_path / "src" / "report.pdf")]

    again = tmp_path / "again"
    again.mkdir()
    report, archive = ingest(again, [tmp_path / "src"], keep_non_dicom=True)
    with archive:
        assert (archive.quarantine.root / f"{sha(junk)}.dcm").read_bytes() == junk

    # Asked again of the archive that kept only the record: the whole bytes join it.
    with Archive.open_or_create(tmp_path / "archive") as first:
        report = first.ingest([tmp_path / "src"], workers=0, keep_non_dicom=True)
        assert report.balanced and report.quarantined == 1
        record = records(first)[str(tmp_path / "src" / "report.pdf")]
    assert "kept_bytes" not in record and not (root / f"{sha(junk)}.head").exists()
    assert (root / f"{sha(junk)}.dcm").read_bytes() == junk


# --- 5. deep trees -----------------------------------------------------------------


@pytest.fixture
def deep_tree(tmp_path: Path):
    """A DICOM file at the bottom of a folder tree DEEP levels deep."""
    bottom = tmp_path / "src"
    bottom.mkdir()
    for _ in range(DEEP):  # one level at a time: mkdir(parents=True) recurses
        bottom = bottom / "d"
        bottom.mkdir()
    data = instance("1.2.3.5")
    (bottom / "deep.dcm").write_bytes(data)
    yield tmp_path / "src", bottom / "deep.dcm", data
    # Removed bottom up here: rmtree recurses one frame per level.
    (bottom / "deep.dcm").unlink()
    folder = bottom
    while folder != tmp_path:
        folder.rmdir()
        folder = folder.parent


def test_a_tree_deeper_than_the_recursion_limit_is_walked(deep_tree, tmp_path: Path) -> None:
    source, file, data = deep_tree
    assert list(iter_files([source], pytest.fail)) == [str(file)]
    report, archive = ingest(tmp_path, [source])
    with archive:
        assert (report.inputs, report.archived) == (1, 1)
        assert archive.export_bytes("1.2.3.5") == data
    inventory = take_inventory([source], threads=1)
    assert (inventory.files, inventory.instances, inventory.problems) == (1, 1, [])
    scanned = run_cli("scan", str(source), "--json")
    assert scanned.returncode == 0, scanned.stderr[-2000:]
    assert json.loads(scanned.stdout)["instances"] == 1


# --- 6. symbolic links -------------------------------------------------------------


@pytest.fixture
def linked(tmp_path: Path) -> dict[str, Path]:
    """A source with links in and out of it, a cycle and a dangling link."""
    source, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    (source / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (source / "sub" / "a.dcm").write_bytes(instance("1.2.3.6"))
    secret = elsewhere / "secret.txt"
    secret.write_bytes(b"not yours " * 1000)
    secret.chmod(0o600)
    (elsewhere / "out.dcm").write_bytes(instance("1.2.3.7"))
    links = {
        "report.dcm": secret,  # a file out of the source
        "outdir": elsewhere,  # a folder out of the source
        "copy.dcm": source / "sub" / "a.dcm",  # a file inside it
        "loop": source,  # a folder inside it: a cycle
        "dangling.dcm": tmp_path / "missing",
    }
    for name, target in links.items():
        (source / name).symlink_to(target)
    return {"source": source, "secret": secret}


def test_links_are_not_followed_by_default_and_each_is_reported(
    tmp_path: Path, linked: dict[str, Path]
) -> None:
    source = linked["source"]
    report, archive = ingest(tmp_path, [source])
    with archive:
        kept = records(archive)
        stored = [p.read_bytes() for p in archive.quarantine.root.iterdir() if p.is_file()]
        assert archive.index.get("1.2.3.7") is None
    assert (report.inputs, report.archived, report.quarantined) == (6, 1, 5)
    reasons = {Path(path).name: record["reason"] for path, record in kept.items()}
    outside = "symbolic link to outside the source: not followed (follow links to read it)"
    inside = "symbolic link inside the source: not followed (its target is read where it is)"
    assert reasons == {
        "report.dcm": outside,
        "outdir": outside,
        "copy.dcm": inside,
        "loop": inside,
        "dangling.dcm": "dangling symbolic link",
    }
    secret = linked["secret"].read_bytes()
    assert not any(secret[:100] in data for data in stored)

    # The inventory walks the same way and lists the same links.
    inventory = take_inventory([source], threads=1)
    assert inventory.files == 1
    assert {Path(p).name: r for p, r in inventory.problems} == reasons
    scanned = run_cli("scan", str(source), "--json")
    assert {Path(p["path"]).name: p["reason"] for p in json.loads(scanned.stdout)["problems"]} == (
        reasons
    )
    followed = json.loads(run_cli("scan", str(source), "--json", "--follow-links").stdout)
    assert (followed["files"], followed["instances"]) == (5, 3)  # 2 of 5 are the secret


def test_followed_links_are_read_once_and_never_loop(
    tmp_path: Path, linked: dict[str, Path]
) -> None:
    source = linked["source"]
    report, archive = ingest(tmp_path, [source], follow_links=True)
    with archive:
        kept = records(archive)
        assert archive.index.get("1.2.3.7") is not None  # out.dcm, through outdir
    # a.dcm, copy.dcm (a duplicate), outdir/out.dcm, outdir/secret.txt, report.dcm
    # (the same bytes), the loop and the dangling link.
    assert (report.inputs, report.archived, report.duplicates) == (7, 2, 1)
    reasons = {Path(path).name: record["reason"] for path, record in kept.items()}
    assert reasons["loop"] == "folder already walked: a link back to it is not walked again"
    assert reasons["dangling.dcm"] == "dangling symbolic link"
    assert reasons["secret.txt"].startswith("not a DICOM file")


def test_a_file_swapped_for_a_link_after_the_walk_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"secret")
    path = tmp_path / "a.dcm"
    path.symlink_to(tmp_path / "secret")
    with pytest.raises(InputError, match="symbolic link: not followed"):
        read_input(InputRef(str(path)))


# --- 9, 13. fifos, devices ---------------------------------------------------------


def test_fifos_and_devices_are_refused_with_their_kind(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    os.mkfifo(tmp_path / "src" / "pipe.dcm")
    os.mkfifo(tmp_path / "given.dcm")
    (tmp_path / "src" / "a.dcm").write_bytes(instance("1.2.3.8"))
    sources = [tmp_path / "src", tmp_path / "given.dcm", "/dev/zero", tmp_path / "none"]
    report, archive = ingest(tmp_path, sources)
    with archive:
        kept = records(archive)
    assert (report.inputs, report.archived, report.quarantined) == (5, 1, 4)
    assert {path: record["reason"] for path, record in kept.items()} == {
        str(tmp_path / "src" / "pipe.dcm"): "not a regular file or folder: fifo",
        str(tmp_path / "given.dcm"): "not a regular file or folder: fifo",
        "/dev/zero": "not a regular file or folder: character device",
        str(tmp_path / "none"): "no such file or folder",
    }
    scanned = run_cli("scan", str(tmp_path / "src"), "/dev/zero", "--json")
    problems = {p["path"]: p["reason"] for p in json.loads(scanned.stdout)["problems"]}
    assert problems == {
        str(tmp_path / "src" / "pipe.dcm"): "not a regular file or folder: fifo",
        "/dev/zero": "not a regular file or folder: character device",
    }


def test_a_file_replaced_by_a_fifo_after_the_walk_does_not_hang(tmp_path: Path) -> None:
    # The fifo appears after the walk, once before the scan and once before the encode:
    # neither opens it blocking, both say what it is.
    (tmp_path / "src").mkdir()
    for name, uid in (("a.dcm", "1.2.3.10"), ("b.dcm", "1.2.3.11"), ("c.dcm", "1.2.3.12")):
        (tmp_path / "src" / name).write_bytes(instance(uid))
    write_members(tmp_path / "src" / "t.tar", [("m.dcm", instance("1.2.3.13"))])
    code = f"""
        import json, os
        from pacs_engine import Archive, open_archive
        from pacs_engine.ingest import tasks
        scan_task = tasks.scan_task
        src = {str(tmp_path / "src")!r}

        def fifo(name):
            os.remove(os.path.join(src, name))
            os.mkfifo(os.path.join(src, name))

        def swapped(root, keys, *rest):
            fifo("a.dcm")  # listed, not scanned yet
            fifo("t.tar")  # its members listed, not read yet
            result = scan_task(root, keys, *rest)
            fifo("b.dcm")  # scanned, not encoded yet
            return result

        tasks.scan_task = swapped
        with Archive.create({str(tmp_path / "archive")!r}) as archive:
            report = archive.ingest([src], workers=0)
        with open_archive({str(tmp_path / "archive")!r}) as archive:
            reasons = {{r["path"]: r["reason"] for r in archive.quarantine.records()}}
        print(json.dumps([report.to_dict(), reasons]))
    """
    done = run_capped(code, 8 << 30, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report, reasons = json.loads(done.stdout.splitlines()[-1])
    assert (report["inputs"], report["archived"], report["quarantined"]) == (4, 1, 3)
    assert report["balanced"]
    src = tmp_path / "src"
    assert reasons == {
        str(src / "a.dcm"): "not a regular file: fifo",  # met by the scan
        str(src / "b.dcm"): "not a regular file: fifo",  # met by the encode
        f"{src / 't.tar'}::m.dcm": "cannot read archive: not a regular file: fifo",
    }


def test_the_size_limit_and_link_policy_from_the_command_line(
    tmp_path: Path, linked: dict[str, Path]
) -> None:
    source = linked["source"]
    target = tmp_path / "archive"
    options = ["--workers", "0", "--json", "--max-input-bytes", "20K", "--follow-links"]
    done = run_cli("ingest", str(source), "--archive", str(target), *options)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    # Every DICOM file (a.dcm, its link, out.dcm) is over 20 KiB: quarantined, not read.
    assert (report["inputs"], report["archived"], report["balanced"]) == (7, 0, True)
    assert report["quarantine_reasons"]["too large"] == 3
    refused = run_cli("ingest", str(source), "--archive", str(target), "--max-input-bytes", "0")
    assert refused.returncode == 2
    assert "not a positive number of bytes: '0'" in refused.stderr


def test_a_deflated_data_set_is_scanned_to_its_last_byte(tmp_path: Path) -> None:
    # Inflated in bounded steps, its last bytes were left in zlib once the input was all
    # read: "past the end of the data" for this file, which pydicom reads (and quarantined).
    path = tmp_path / "deflated.dcm"
    deflated_bomb(path, 32 << 20)
    header = scan(path)
    dataset = pydicom.dcmread(path)
    assert header.pixel is not None and header.pixel.value_length == len(dataset.PixelData)
    assert header.data_size == header.pixel.value_end  # the data set ends with its pixels
    assert header["SOPInstanceUID"] == dataset.SOPInstanceUID
