"""The server's configuration: TOML files and --peer flags, bad ones named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_engine.serve.config import (
    ConfigError,
    Peer,
    ServeConfig,
    check_ae_title,
    load_config,
    parse_peer,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.toml"
    path.write_text(text)
    return path


def test_a_full_file_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[dimse]
ae_title = "ARCHIVE_1"
host = "0.0.0.0"
port = 11112
max_associations = 4
max_pdu = 65536
timeout = 7.5

[dimse.tls]
cert = "server.pem"
key = "server.key"
client_ca = "/etc/ca.pem"

[peers.CT_SCANNER]
rights = ["store"]

[peers.VIEWER]
rights = ["query", "retrieve"]
host = "10.0.0.7"
port = 104
""",
    )
    config = load_config(path)
    assert (config.ae_title, config.host, config.dimse_port) == ("ARCHIVE_1", "0.0.0.0", 11112)
    assert (config.max_associations, config.max_pdu, config.timeout) == (4, 65536, 7.5)
    assert config.tls is not None
    assert config.tls.cert == tmp_path / "server.pem"  # relative to the file's folder
    assert config.tls.client_ca == Path("/etc/ca.pem")
    assert config.peers["CT_SCANNER"] == Peer("CT_SCANNER", frozenset({"store"}))
    assert config.peers["VIEWER"].address == ("10.0.0.7", 104)
    assert config.may("CT_SCANNER", "store") and not config.may("CT_SCANNER", "query")
    assert config.may("VIEWER  ", "retrieve")  # AE titles are padded with spaces on the wire


def test_nothing_is_admitted_by_default(tmp_path: Path) -> None:
    for config in (ServeConfig(), load_config(None), load_config(write(tmp_path, ""))):
        assert config.peers == {}
        assert not any(config.may("ANYONE", right) for right in ("store", "query", "retrieve"))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[dimse\n", "not valid TOML"),
        ("[web]\n", "unknown section(s) web"),
        ("[dimse]\nport = 70000\n", "[dimse]: a port is 1 to 65535, not 70000"),
        ("[dimse]\nport = '104'\n", "[dimse]: port must be an integer, not '104'"),
        ("[dimse]\nmax_pdu = 0\n", "[dimse]: max_pdu must be positive"),
        ("[dimse]\ntimeout = -1\n", "[dimse]: timeout must be a positive number of seconds"),
        ("[dimse]\ntimeout = true\n", "[dimse]: timeout must be a positive number of seconds"),
        (
            "[dimse]\nmax_associations = true\n",
            "[dimse]: max_associations must be an integer, not True",
        ),
        ("[dimse]\nae_title = 'MUCH_TOO_LONG_AE_TITLE'\n", "[dimse]: an AE title has 1 to 16"),
        ("[dimse]\nae_title = 'A\\\\B'\n", "[dimse]: an AE title is printable ASCII"),
        ("[dimse]\nhost = 1\n", "[dimse]: host must be a string, not 1"),
        ("[dimse]\nbogus = 1\n", "[dimse]: unknown key(s) bogus"),
        ("[dimse.tls]\ncert = 'a.pem'\n", "[dimse] [tls]: needs both cert and key"),
        ("[peers.CT]\nrights = ['store', 'delete']\n", "[peers.CT]: unknown right(s) ['delete']"),
        ("[peers.CT]\nrights = 'store'\n", "[peers.CT]: rights is a list"),
        ("[peers.CT]\nhost = 'x'\n", "[peers.CT]: give both host and port"),
        ("[peers.CT]\nrigths = ['store']\n", "[peers.CT]: unknown key(s) rigths"),
        ("peers = 3\n", "[peers]: expected a table"),
    ],
)
def test_a_bad_file_is_named_with_the_reason(tmp_path: Path, text: str, named: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(str(path))
    assert named in str(error.value)


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "peer"),
    [
        ("CT", Peer("CT")),
        ("CT=store", Peer("CT", frozenset({"store"}))),
        (
            "VIEWER@10.0.0.7:104=query,retrieve",
            Peer("VIEWER", frozenset({"query", "retrieve"}), "10.0.0.7", 104),
        ),
        ("V6@::1:4242", Peer("V6", frozenset(), "::1", 4242)),
    ],
)
def test_peers_from_the_command_line(text: str, peer: Peer) -> None:
    assert parse_peer(text) == peer


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("CT=stor", "unknown right(s) ['stor']"),
        ("CT@host=store", "the address is HOST:PORT, not 'host'"),
        ("CT@:104", "the address is HOST:PORT"),
        ("CT@host:0", "a port is 1 to 65535, not 0"),
        ("=store", "an AE title has 1 to 16 characters"),
        ("CTÄ", "an AE title is printable ASCII"),
    ],
)
def test_a_bad_peer_flag_is_named(text: str, named: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_peer(text)
    assert str(error.value).startswith(f"peer {text!r}")
    assert named in str(error.value)


def test_peers_given_twice_merge_rights_and_address(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[peers.VIEWER]\nrights = ["query"]\n'))
    config = config.with_peers(parse_peer("VIEWER@10.0.0.9:11112=retrieve"), parse_peer("CT=store"))
    assert config.peers["VIEWER"] == Peer(
        "VIEWER", frozenset({"query", "retrieve"}), "10.0.0.9", 11112
    )
    assert set(config.peers) == {"VIEWER", "CT"}


def test_ae_titles_are_checked() -> None:
    assert check_ae_title("  CT  ", "x") == "CT"
    with pytest.raises(ConfigError, match=r"^where: "):
        check_ae_title("", "where")
