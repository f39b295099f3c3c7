"""pacs_engine.inputs: folders, files, zip/tar members read in place; every bad input named."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import pickle
import random
import shutil
import struct
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from pacs_engine.ingest import inputs
from pacs_engine.ingest.inputs import InputError, InputRef, iter_inputs, read_input
from pacs_engine.sources import iter_files, sample_data_dir
from tests.conftest import corpus_files, require_corpus

SAMPLES = ["CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "JPEG2000.dcm", "image_dfl.dcm"]
# Member names a hospital's archives really hold: spaces, non-ASCII, `::`, nesting.
CUT = ("03_cut.tgz", "04_cut.tar")
ODD_NAMES = ["with space/CT small.dcm", "Ωmega/ünïcode é.dcm", "a::b/c::d.dcm", "x.zip::y.dcm"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sample(name: str) -> Path:
    return sample_data_dir() / name


def corpus_sample(count: int) -> list[Path]:
    """The first `count` small corpus files outside malformed/, in manifest order."""
    require_corpus()
    files = [p for p in corpus_files() if "malformed" not in p.parts and p.stat().st_size < 600_000]
    assert len(files) >= count
    return files[:count]


def make_zip(path: Path, members: dict[str, Path], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, source in members.items():
            archive.write(source, name)
    return path


def make_tar(path: Path, members: dict[str, Path], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, source in members.items():
            archive.add(source, name)
    return path


def walk(*sources: str | Path) -> tuple[list[InputRef], list[tuple[str, str]]]:
    errors: list[tuple[str, str]] = []
    refs = list(iter_inputs([str(s) for s in sources], lambda key, why: errors.append((key, why))))
    return refs, errors


# --- a mixed migration --------------------------------------------------------


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder holding every kind of input, and the sha256 each key must read as."""
    root = tmp_path / "migration"
    (root / "plain" / "deeper").mkdir(parents=True)
    (root / "archives").mkdir()
    expected: dict[str, str] = {}
    corpus = corpus_sample(6)
    shutil.copy(sample("CT_small.dcm"), root / "plain" / "b.dcm")
    shutil.copy(corpus[0], root / "plain" / "deeper" / "a.dcm")
    expected[str(root / "plain" / "b.dcm")] = sha(sample("CT_small.dcm").read_bytes())
    expected[str(root / "plain" / "deeper" / "a.dcm")] = sha(corpus[0].read_bytes())

    members = {f"s/{i:02d}_{p.name}": p for i, p in enumerate([*map(sample, SAMPLES), *corpus])}
    members.update(zip(ODD_NAMES, map(sample, SAMPLES), strict=False))
    for name, kind in [
        ("stored.zip", "zip-stored"),
        ("deflated.ZIP", "zip-deflated"),
        ("plain.tar", "tar"),
        ("gz.tar.gz", "tgz"),
        ("short.TGZ", "tgz"),
    ]:
        path = root / "archives" / name
        if kind == "zip-stored":
            make_zip(path, members, zipfile.ZIP_STORED)
        elif kind == "zip-deflated":
            make_zip(path, members)
        else:
            make_tar(path, members, "w:gz" if kind == "tgz" else "w")
        for member, source in members.items():
            expected[f"{path}::{member}"] = sha(source.read_bytes())
    return root, expected


def test_mixed_sources_read_back_byte_for_byte(
    mixed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, expected = mixed
    single = tmp_path / "single.dcm"
    shutil.copy(sample("MR_small.dcm"), single)
    expected[str(single)] = sha(single.read_bytes())

    refs, errors = walk(root, single)

    assert errors == []
    assert refs[-1].key == str(single)  # sources in the order given
    assert {ref.key: sha(read_input(ref)) for ref in refs} == expected
    assert len(refs) == len(expected)  # no key twice


def test_order_is_stable_sorted_in_folders_and_archive_order_inside(
    mixed: tuple[Path, dict[str, str]],
) -> None:
    root, _ = mixed
    first, _ = walk(root)
    second, _ = walk(root)
    assert first == second

    folder_paths = [ref.container for ref in first if ref.member is None]
    assert folder_paths == [str(root / "plain" / "b.dcm"), str(root / "plain" / "deeper" / "a.dcm")]
    containers = list(dict.fromkeys(ref.container for ref in first if ref.member))
    assert containers == [
        str(root / "archives" / n)
        for n in ["deflated.ZIP", "gz.tar.gz", "plain.tar", "short.TGZ", "stored.zip"]
    ]
    with zipfile.ZipFile(root / "archives" / "stored.zip") as archive:
        in_zip = [ref.member for ref in first if ref.container.endswith("stored.zip")]
        assert in_zip == archive.namelist()
    with tarfile.open(root / "archives" / "gz.tar.gz") as archive:
        in_tar = [ref.member for ref in first if ref.container.endswith("gz.tar.gz")]
        assert in_tar == archive.getnames()


def test_iter_files_still_lists_archives_as_files(mixed: tuple[Path, dict[str, str]]) -> None:
    root, _ = mixed
    files = list(iter_files([root], lambda key, why: None))
    assert str(root / "archives" / "plain.tar") in files
    assert all("::" not in f for f in files)


# --- keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("container", "member"),
    [
        ("/data/a.dcm", None),
        ("/data/odd::folder/a.dcm", None),
        ("/data/archive.zip", "with space/CT small.dcm"),
        ("/data/Ωmega é.TAR.GZ", "Ωmega/ünïcode é.dcm"),
        ("/data/x::y/b.tgz", "a::b/c::d.dcm"),
        ("/data/b.tar", "inner.zip::z.dcm"),
        ("relative.zip", "m"),
    ],
)
def test_key_round_trips(container: str, member: str | None) -> None:
    ref = InputRef(container, member)
    assert ref.key == (container if member is None else f"{container}::{member}")
    assert InputRef.from_key(ref.key) == ref


@pytest.mark.parametrize(
    ("container", "member"),
    [("/data/a.dcm", "m"), ("/data/a.zip::x/b.zip", "m"), ("/data/a.tar::x", None)],
)
def test_a_ref_whose_key_would_be_ambiguous_is_refused(container: str, member: str | None) -> None:
    with pytest.raises(ValueError, match="cannot be named unambiguously"):
        InputRef(container, member)


def test_odd_names_on_disk_round_trip_and_read(tmp_path: Path) -> None:
    folder = tmp_path / "odd::dir é"
    folder.mkdir()
    archive = make_zip(
        folder / "ünï code.zip", dict(zip(ODD_NAMES, map(sample, SAMPLES), strict=False))
    )
    ambiguous = tmp_path / "clash.zip::dir"
    ambiguous.mkdir()
    shutil.copy(sample("CT_small.dcm"), ambiguous / "a.dcm")

    refs, errors = walk(folder, ambiguous)

    assert [ref.member for ref in refs] == ODD_NAMES
    for ref, name in zip(refs, SAMPLES, strict=False):
        again = InputRef.from_key(ref.key)
        assert again == ref and again.container == str(archive)
        assert read_input(again) == sample(name).read_bytes()
    assert [key for key, _ in errors] == [str(ambiguous / "a.dcm")]
    assert "cannot be named unambiguously" in errors[0][1]


# --- bad inputs: each named, none stops the walk ------------------------------


def _patch_zip_member(path: Path, name: str, *, method: int | None = None, flags: int = 0) -> None:
    """Set a member's compression method or flag bits in its local and central headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    local = info.header_offset
    central = _central_header(data, name)
    for at in (local + 6, central + 8):
        (old,) = struct.unpack_from("<H", data, at)
        struct.pack_into("<H", data, at, old | flags)
        if method is not None:
            struct.pack_into("<H", data, at + 2, method)
    path.write_bytes(bytes(data))


def _central_header(data: bytearray, name: str) -> int:
    at = data.find(b"PK\x01\x02")
    while at != -1:
        (length,) = struct.unpack_from("<H", data, at + 28)
        if data[at + 46 : at + 46 + length] == name.encode():
            return at
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(name)


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder of good inputs between every kind of damaged one; expected errors by key."""
    root = tmp_path / "bad"
    root.mkdir()
    files = {f"m{i}.dcm": sample(name) for i, name in enumerate(SAMPLES)}
    shutil.copy(sample("CT_small.dcm"), root / "00_good.dcm")
    want: dict[str, str] = {}

    (root / "01_text.zip").write_text("this is not a zip")
    want[str(root / "01_text.zip")] = "bad zip archive: File is not a zip file"

    (root / "02_text.tar.gz").write_bytes(b"plain text, not gzip")
    want[str(root / "02_text.tar.gz")] = "bad tar.gz archive: not a gzip file"

    whole = make_tar(tmp_path / "whole.tgz", files, "w:gz").read_bytes()
    (root / "03_cut.tgz").write_bytes(whole[: len(whole) // 2])
    want[str(root / "03_cut.tgz")] = "bad tar.gz archive: unexpected end of data"

    whole = make_tar(tmp_path / "whole.tar", files).read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as archive:
        second, second_data = archive.getmembers()[1].offset, archive.getmembers()[1].offset_data
    (root / "04_cut.tar").write_bytes(whole[: second_data + 1000])
    want[str(root / "04_cut.tar")] = "bad tar archive: unexpected end of data"
    (root / "04_cut_between.tar").write_bytes(whole[:second])
    want[str(root / "04_cut_between.tar")] = (
        f"bad tar archive: no end-of-archive marker at byte {second}: the archive may be cut short"
    )

    bad_header = bytearray(whole)
    bad_header[second : second + 512] = b"\xff" * 512
    (root / "05_bad_header.tar").write_bytes(bytes(bad_header))
    want[str(root / "05_bad_header.tar")] = (
        f"bad tar archive: unreadable header at byte {second}: the members after it are skipped"
    )

    data = bytearray(make_zip(tmp_path / "whole.zip", files).read_bytes())
    central = _central_header(data, "m0.dcm")
    data[central : central + 4] = b"XXXX"
    (root / "06_bad_directory.zip").write_bytes(bytes(data))
    want[str(root / "06_bad_directory.zip")] = (
        "bad zip archive: Bad magic number for central directory"
    )

    method = make_zip(root / "07_methods.zip", files)
    _patch_zip_member(method, "m1.dcm", method=9)
    want[f"{method}::m1.dcm"] = "compression method 9 (Deflate64) is not supported"
    _patch_zip_member(method, "m2.dcm", flags=0x1)
    want[f"{method}::m2.dcm"] = "encrypted member: cannot be read without the password"

    (root / "08_missing_later").mkdir()
    want[str(root / "nonexistent")] = "no such file or folder"
    shutil.copy(sample("MR_small.dcm"), root / "09_good.dcm")
    return root, want


def test_every_damaged_input_is_named_and_the_walk_goes_on(
    damaged: tuple[Path, dict[str, str]],
) -> None:
    root, want = damaged
    refs, errors = walk(root / "nonexistent", root)

    assert dict(errors) == want
    keys = [ref.key for ref in refs]
    assert keys[0] == str(root / "00_good.dcm") and keys[-1] == str(root / "09_good.dcm")
    # Members before the damage and the good members of a zip stay listed and readable;
    # only the member a cut runs through is not.
    originals = {f"m{i}.dcm": sample(name).read_bytes() for i, name in enumerate(SAMPLES)}
    originals |= {"00_good.dcm": sample("CT_small.dcm").read_bytes()}
    originals |= {"09_good.dcm": sample("MR_small.dcm").read_bytes()}
    unreadable = []
    for ref in refs:
        try:
            assert read_input(ref) == originals[ref.member or Path(ref.container).name]
        except InputError as error:
            assert error.key == ref.key and error.reason.startswith("truncated: ")
            unreadable.append(ref.key)
    cut_members = [[r.key for r in refs if r.container.endswith(n)][-1] for n in CUT]
    assert unreadable == cut_members
    good_zip_members = [r.member for r in refs if r.container.endswith("07_methods.zip")]
    assert good_zip_members == ["m0.dcm", "m3.dcm", "m4.dcm"]
    first_before_bad_header = [r.member for r in refs if r.container.endswith("05_bad_header.tar")]
    assert first_before_bad_header == ["m0.dcm"]


def test_read_input_names_the_member_and_the_reason(
    damaged: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, _ = damaged
    method = root / "07_methods.zip"
    cases = {
        f"{method}::m1.dcm": "compression method 9 (Deflate64) is not supported",
        f"{method}::m2.dcm": "encrypted member: cannot be read without the password",
        f"{method}::nope.dcm": "no such member in the archive",
        f"{root}/01_text.zip::m0.dcm": "bad zip archive: File is not a zip file",
        f"{root}/gone.tar::m0.dcm": "cannot open archive: No such file or directory",
        f"{root}/04_cut.tar::m1.dcm": "truncated: 1000 of 9830 bytes in the archive",
        f"{root}/04_cut.tar::m4.dcm": "bad tar archive: unexpected end of data",
        f"{root}/04_cut_between.tar::m4.dcm": (
            "bad tar archive: no end-of-archive marker at byte 40960: the archive may be cut short"
        ),
        str(root / "gone.dcm"): "cannot read: No such file or directory",
        str(root / "08_missing_later"): "cannot read: Is a directory",
    }
    for key, reason in cases.items():
        with pytest.raises(InputError) as caught:
            read_input(InputRef.from_key(key))
        assert str(caught.value) == f"{key}: {reason}"
        assert (caught.value.key, caught.value.reason) == (key, reason)
        assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)


@pytest.mark.parametrize(
    ("method", "reason"),
    [
        (zipfile.ZIP_STORED, "Bad CRC-32"),
        # lzma raises LZMAError (no OSError): it stopped the run, and every resume of it.
        (zipfile.ZIP_LZMA, "Corrupt input data"),
    ],
)
def test_a_zip_member_with_damaged_data_is_an_input_error(
    tmp_path: Path, method: int, reason: str
) -> None:
    path = make_zip(tmp_path / "bad.zip", {"a.dcm": sample("CT_small.dcm")}, method)
    data = bytearray(path.read_bytes())
    data[30 + len("a.dcm") + 100] ^= 0xFF  # a byte inside the member's data
    path.write_bytes(bytes(data))
    refs, errors = walk(path)
    assert errors == []
    with pytest.raises(InputError, match=rf"bad\.zip::a\.dcm: damaged member: {reason}"):
        read_input(refs[0])


def test_a_zip_with_a_member_name_that_is_not_its_utf8_is_named(tmp_path: Path) -> None:
    # Flagged UTF-8, bytes that are not: zipfile raises UnicodeDecodeError as it opens.
    path = make_zip(tmp_path / "names.zip", {"é.dcm": sample("CT_small.dcm")})
    path.write_bytes(path.read_bytes().replace("é".encode(), b"\xff\xfe"))
    refs, errors = walk(path)
    assert refs == [] and [key for key, _ in errors] == [str(path)]
    assert "utf-8" in errors[0][1]


def test_a_truncated_tgz_member_is_an_input_error(tmp_path: Path) -> None:
    files = {f"m{i}.dcm": sample(name) for i, name in enumerate(SAMPLES)}
    whole = make_tar(tmp_path / "w.tgz", files, "w:gz").read_bytes()
    cut = tmp_path / "cut.tgz"
    cut.write_bytes(whole[: len(whole) * 3 // 4])
    refs, errors = walk(cut)
    assert [key for key, _ in errors] == [str(cut)]
    listed = {ref.member for ref in refs}
    for ref in refs[:-1]:
        assert read_input(ref) == files[ref.member].read_bytes()
    # Listed before the cut was met, but its data runs past it.
    with pytest.raises(InputError, match=rf"cut\.tgz::{refs[-1].member}: "):
        read_input(refs[-1])
    assert listed < set(files)


def test_folders_that_vanish_or_cannot_be_listed_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for folder in ("a", "b", "c", "d"):
        (tmp_path / folder).mkdir()
        shutil.copy(sample("CT_small.dcm"), tmp_path / folder / "x.dcm")
    make_zip(tmp_path / "a" / "y.zip", {"m.dcm": sample("MR_small.dcm")})
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        if path == str(tmp_path / "c"):
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    errors: list[tuple[str, str]] = []
    walker = iter_inputs([tmp_path], lambda key, why: errors.append((key, why)))
    assert next(walker).key == str(tmp_path / "a" / "x.dcm")
    os.remove(tmp_path / "a" / "y.zip")  # listed, then gone before it is opened
    shutil.rmtree(tmp_path / "b")
    rest = [ref.key for ref in walker]

    assert rest == [str(tmp_path / "d" / "x.dcm")]
    assert errors == [
        (str(tmp_path / "a" / "y.zip"), "cannot read archive: No such file or directory"),
        (str(tmp_path / "b"), "cannot list folder: No such file or directory"),
        (str(tmp_path / "c"), "cannot list folder: Permission denied"),
    ]


def test_tar_links_and_devices_are_named_and_every_copy_of_a_name_is_an_input(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kinds.tar"
    payload = sample("CT_small.dcm").read_bytes()
    with tarfile.open(path, "w") as archive:
        for name, kind in [
            ("dir", tarfile.DIRTYPE),
            ("link", tarfile.SYMTYPE),
            ("hard", tarfile.LNKTYPE),
            ("dev", tarfile.CHRTYPE),
            ("fifo", tarfile.FIFOTYPE),
        ]:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "a.dcm" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            archive.addfile(info)
        for data in (payload, b"a later copy"):
            info = tarfile.TarInfo("a.dcm")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    refs, errors = walk(path)
    assert [ref.member for ref in refs] == ["a.dcm", "a.dcm#2"]
    assert errors == [
        (f"{path}::link", "not a regular file: symbolic link member"),
        (f"{path}::hard", "not a regular file: hard link member"),
        (f"{path}::dev", "not a regular file: character device member"),
        (f"{path}::fifo", "not a regular file: fifo member"),
    ]
    assert [read_input(ref) for ref in refs] == [payload, b"a later copy"]
    with pytest.raises(InputError, match="symbolic link member"):
        read_input(InputRef(str(path), "link"))


def test_zip_directories_are_skipped_and_symlinks_named(tmp_path: Path) -> None:
    path = tmp_path / "kinds.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("folder/", b"")
        link = zipfile.ZipInfo("link.dcm")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, b"a.dcm")
        archive.writestr("a.dcm", b"DICM data")
    refs, errors = walk(path)
    reason = "not a regular file: symbolic link member"
    assert (errors, [r.member for r in refs]) == ([(f"{path}::link.dcm", reason)], ["a.dcm"])


# --- reading: shuffled, cached, after fork -------------------------------------


@pytest.fixture(scope="module")
def big_tgz(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """A tar.gz of ~120 members, spread over several gzip seek points."""
    sources = [*map(sample, SAMPLES), *corpus_sample(20)]
    members = {f"{i:03d}/{p.name}": p for i, p in enumerate(sources * 5)}
    path = tmp_path_factory.mktemp("tgz") / "big.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as archive:
        for name, source in members.items():
            archive.add(source, name)
    assert path.stat().st_size > 3 * (1 << 20)  # more than one seek point
    return path, {name: p.read_bytes() for name, p in members.items()}


def test_shuffled_reads_of_a_tgz_give_the_right_bytes(
    big_tgz: tuple[Path, dict[str, bytes]],
) -> None:
    path, members = big_tgz
    refs, errors = walk(path)
    assert errors == [] and len(refs) == len(members)
    random.Random(7).shuffle(refs)
    for ref in refs:
        assert sha(read_input(ref)) == sha(members[ref.member])


def test_one_zip_is_opened_once_for_many_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_zip(tmp_path / "many.zip", {f"{i}.dcm": sample("CT_small.dcm") for i in range(50)})
    refs, _ = walk(path)
    opened: list[str] = []

    class CountingZipFile(zipfile.ZipFile):
        def __init__(self, file: str, *args: object, **kwargs: object) -> None:
            opened.append(file)
            super().__init__(file, *args, **kwargs)

    monkeypatch.setattr(inputs.zipfile, "ZipFile", CountingZipFile)
    for ref in reversed(refs):
        read_input(ref)
    assert [getattr(file, "name", file) for file in opened] == [str(path)]


def test_the_cache_is_bounded_and_sees_a_replaced_archive(tmp_path: Path) -> None:
    paths = [
        make_zip(tmp_path / f"{i}.zip", {"a.dcm": sample(SAMPLES[i % len(SAMPLES)])})
        for i in range(inputs.OPEN_ARCHIVES + 3)
    ]
    for path in paths:
        read_input(InputRef(str(path), "a.dcm"))
    assert len(inputs._OPEN) == inputs.OPEN_ARCHIVES
    last = InputRef(str(paths[-1]), "a.dcm")
    make_zip(paths[-1], {"a.dcm": sample("rtdose.dcm")})
    assert read_input(last) == sample("rtdose.dcm").read_bytes()


def test_reads_work_in_a_forked_child_and_the_parent_after_it(
    big_tgz: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    path, _ = big_tgz
    zpath = make_zip(tmp_path / "z.zip", {n: sample(SAMPLES[0]) for n in ["a", "b", "c"]})
    plain = make_tar(tmp_path / "p.tar", {n: sample(SAMPLES[1]) for n in ["a", "b"]})
    refs = [*walk(path)[0], *walk(zpath)[0], *walk(plain)[0]]
    want = [sha(read_input(ref)) for ref in refs]  # the parent's handles are now open
    read_input(refs[len(refs) // 2])  # and mid-stream

    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read everything backwards, report the hashes
        try:
            got = [sha(read_input(ref)) for ref in reversed(refs)]
            os.write(writer, "\n".join(reversed(got)).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child = pipe.read().split("\n")
    os.waitpid(pid, 0)
    assert child == want
    shuffled = list(zip(refs, want, strict=True))
    random.Random(3).shuffle(shuffled)
    assert all(sha(read_input(ref)) == digest for ref, digest in shuffled)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_reads_work_in_a_pool_of_two(big_tgz: tuple[Path, dict[str, bytes]], method: str) -> None:
    path, members = big_tgz
    refs, _ = walk(path)
    read_input(refs[0])
    shuffled = refs[:]
    random.Random(11).shuffle(shuffled)
    with multiprocessing.get_context(method).Pool(2) as pool:
        got = pool.map(read_input, shuffled, chunksize=8)
    assert [sha(data) for data in got] == [sha(members[ref.member]) for ref in shuffled]


# --- memory -------------------------------------------------------------------


def test_walking_a_tar_of_many_members_streams(tmp_path: Path) -> None:
    path = tmp_path / "many.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for i in range(20_000):
            info = tarfile.TarInfo(f"{i:05d}.dcm")
            info.size = 4
            archive.addfile(info, io.BytesIO(b"DICM"))
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_inputs([path], lambda key, why: None))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    # Keeping every TarInfo would take ~20 MB; the names seen (for duplicates) ~2 MB.
    assert peak < 6_000_000


def test_a_pacs_engine_archive_is_a_source_of_its_instances(tmp_path: Path) -> None:
    """Its instances, by SOP Instance UID, keyed `ARCHIVE::SOP`; the folder is not walked
    for files; an instance read is its original file; a vanished archive is an InputError."""
    from pacs_engine import Archive

    files = [sample_data_dir() / n for n in ("CT_small.dcm", "MR_small.dcm")]
    with Archive.create(tmp_path / "record") as record:
        record.ingest(files, workers=0)
    problems: list[tuple[str, str]] = []
    refs = list(iter_inputs([tmp_path / "record"], lambda key, reason: problems.append(key)))
    assert problems == []
    uids = sorted(pydicom_uid(f) for f in files)
    assert [r.member for r in refs] == uids
    for ref in refs:
        assert InputRef.from_key(ref.key) == ref
        data = read_input(ref)
        original = next(f for f in files if pydicom_uid(f) == ref.member)
        assert data == original.read_bytes()
    shutil.rmtree(tmp_path / "record")
    with pytest.raises(InputError, match="cannot open archive"):
        read_input(refs[0])


def pydicom_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_an_archive_folder_met_in_a_walk_is_read_as_an_archive(tmp_path: Path) -> None:
    """Its instances are inputs (not its shards and packs); an excluded archive is skipped;
    a folder holding another tool's archive.json is walked as files."""
    from pacs_engine import Archive

    ct, mr = sample_data_dir() / "CT_small.dcm", sample_data_dir() / "MR_small.dcm"
    tree = tmp_path / "tree"
    (tree / "nested").mkdir(parents=True)
    shutil.copy(mr, tree / "a.dcm")
    with Archive.create(tree / "nested" / "record") as record:
        record.ingest([ct], workers=0)
    foreign = tree / "z_other"
    foreign.mkdir()
    (foreign / "archive.json").write_text('{"format": "another tool"}')
    shutil.copy(ct, foreign / "ct.dcm")

    problems: list[str] = []
    keys = [r.key for r in iter_inputs([tree], lambda key, reason: problems.append(key))]
    assert problems == []
    record_key = f"{tree / 'nested' / 'record'}::{pydicom_uid(ct)}"
    assert keys == [
        str(tree / "a.dcm"),
        record_key,
        str(foreign / "archive.json"),
        str(foreign / "ct.dcm"),
    ]
    assert read_input(InputRef.from_key(record_key)) == ct.read_bytes()
    # The target, named through a symlink, is still the folder the walk meets.
    (tmp_path / "link").symlink_to(tree / "nested" / "record")
    skipped = [
        r.key
        for r in iter_inputs([tree], lambda key, reason: problems.append(key), [tmp_path / "link"])
    ]
    assert skipped == [k for k in keys if k != record_key] and problems == []
    assert not inputs.is_pacs_archive(str(foreign))
    assert inputs.is_pacs_archive(str(tree / "nested" / "record"))


def test_a_damaged_archive_marker_is_reported_not_walked(tmp_path: Path) -> None:
    """An archive whose archive.json no longer parses is named as an archive that cannot be
    opened: its shards, index and quarantine are never walked as input files. A marker that
    is a fifo is not opened (that would block): the folder is walked."""
    from pacs_engine import Archive

    tree = tmp_path / "tree"
    tree.mkdir()
    with Archive.create(tree / "record") as record:
        record.ingest([sample_data_dir() / "CT_small.dcm"], workers=0)
    marker = tree / "record" / "archive.json"
    marker.write_bytes(marker.read_bytes()[:20])
    problems: list[tuple[str, str]] = []
    keys = [r.key for r in iter_inputs([tree], lambda *problem: problems.append(problem))]
    assert keys == []
    assert [(key, reason.split(":")[0]) for key, reason in problems] == [
        (str(tree / "record"), "cannot open archive")
    ]

    plain = tmp_path / "plain"
    plain.mkdir()
    os.mkfifo(plain / "archive.json")
    shutil.copy(sample_data_dir() / "CT_small.dcm", plain / "ct.dcm")
    assert not inputs.is_pacs_archive(str(plain))
    assert [r.key for r in iter_inputs([plain], lambda *problem: problems.append(problem))] == [
        str(plain / "ct.dcm")
    ]  # the fifo itself is not a regular file: the walk leaves it out


def test_the_old_module_keeps_the_names_docs_showed_there() -> None:
    """`pacs_engine.inputs` (before ingest/inputs.py): the same objects, not copies."""
    import pacs_engine.inputs as old

    assert {"InputRef", "InputError", "iter_inputs", "read_input"} <= set(old.__all__)
    for name in old.__all__:
        assert getattr(old, name) is getattr(inputs, name), name


# --- reading ahead --------------------------------------------------------------------


def test_readahead_hints_each_later_input_once_and_never_the_one_being_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hinted: list[str] = []
    monkeypatch.setattr(inputs, "prefetch", lambda ref, policy: hinted.append(ref.key))
    keys = [f"/in/{n}.dcm" for n in range(7)]
    ahead = inputs.Readahead(keys)
    seen = []
    for n, key in enumerate(keys):
        ahead.step()
        seen.append(list(hinted))
        assert key not in hinted[len(seen[n - 1]) if n else 0 :]  # not hinted as it is read
    depth = inputs.READAHEAD_FILES
    assert seen[0] == keys[1 : 1 + depth]  # the first read starts the next ones
    for n in range(1, len(keys)):  # then one more each read, until the list's end
        assert seen[n] == keys[1 : min(len(keys), n + 1 + depth)]
    assert hinted == keys[1:]  # each once, in order


def test_prefetch_asks_the_kernel_to_read_regular_files_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int, int]] = []

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert os.fstat(fd).st_size > offset  # the descriptor is open, on the file
        calls.append((offset, length, advice))

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    monkeypatch.setattr(inputs, "READAHEAD_BYTES", 1000)
    monkeypatch.setattr(inputs, "READAHEAD_STEP", 400)
    small, big = tmp_path / "small.dcm", tmp_path / "big.dcm"
    small.write_bytes(b"x" * 300)
    big.write_bytes(b"x" * 5000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opened without blocking, left alone
    link = tmp_path / "link.dcm"
    link.symlink_to(small)
    zipped = make_zip(tmp_path / "a.zip", {"m.dcm": small})
    fds = len(os.listdir("/proc/self/fd"))
    for path in (small, big, fifo, link, tmp_path / "missing.dcm", tmp_path):
        inputs.prefetch(InputRef(str(path)))
    inputs.prefetch(InputRef(str(zipped), "m.dcm"))  # a member: left to the archive's reads
    # In steps (the kernel reads at most its readahead window a call), up to the cap.
    steps = [(offset, 400, os.POSIX_FADV_WILLNEED) for offset in (0, 400, 800)]
    assert calls == [(0, 400, os.POSIX_FADV_WILLNEED), *steps]
    calls.clear()
    inputs.prefetch(InputRef(str(link)), inputs.InputPolicy(follow_links=True))
    inputs.prefetch(InputRef(str(big)), inputs.InputPolicy(max_bytes=4999))  # over the limit
    assert calls == [(0, 400, os.POSIX_FADV_WILLNEED)]

    def fails(*args: object) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", fails)
    inputs.prefetch(InputRef(str(small)))  # only a hint: the read reports what is wrong
    assert len(os.listdir("/proc/self/fd")) == fds  # every descriptor closed
