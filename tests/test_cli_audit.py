"""`pacs-engine audit`: listing, filters, --verify, and the FHIR and DICOM exports."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest

from pacs_engine.cli import main
from pacs_engine.serve.audit import AuditLog, read_records

#: A trail written by the code before records could carry series and instances.
TRAIL_V1 = Path(__file__).parent / "data" / "audit-trail-v1"
STUDY, OTHER = "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.20"
SERIES, SOP = "1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
#: FHIR R4's id and instant datatypes (their regular expressions in the specification).
FHIR_ID = re.compile(r"[A-Za-z0-9\-\.]{1,64}")
FHIR_INSTANT = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?"
    r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """An archive folder whose trail has DIMSE and DICOMweb records of every kind exported."""
    root = tmp_path / "archive"
    with AuditLog(root, sync_seconds=0.0) as audit:
        dimse = {"protocol": "dimse", "actor": "CT_SCANNER", "address": "10.0.0.5:4711"}
        web = {"protocol": "dicomweb", "actor": "alice", "address": "10.0.0.9:6000"}
        audit.record(**dimse, action="associate", outcome="accepted")
        audit.record(
            **dimse, action="store", outcome="success", study=STUDY, series=SERIES, instances=[SOP]
        )
        audit.record(
            **web,
            action="stow",
            outcome="partial",
            study=[STUDY, OTHER],
            series=[SERIES],
            instances=[SOP],
            detail="stored=1 failed=1",
        )
        audit.record(**web, action="GET /studies", outcome="forbidden", detail="needs role reader")
        audit.record(
            protocol="dimse",
            actor="VIEWER",
            address="10.0.0.7:5000",
            action="c-find",
            outcome="success",
            study=[OTHER],
        )
        audit.record(**dimse, action="release", outcome="ended")
    return root


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_table_lists_every_record_and_the_json_lines_are_the_records(trail, capsys) -> None:
    code, out, _ = run(capsys, trail)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["time", "protocol", "actor"]
    assert [line.split()[4] for line in lines[1:]] == [
        "associate",
        "store",
        "stow",
        "GET",
        "c-find",
        "release",
    ]
    assert f"{STUDY} (+1)" in lines[3]  # a record naming two studies
    code, out, _ = run(capsys, trail, "--json")
    assert [json.loads(line) for line in out.splitlines()] == list(read_records(trail))


def test_filters_select_by_study_user_and_time(trail, capsys) -> None:
    def actions(*filters: str) -> list[str]:
        code, out, _ = run(capsys, trail, "--json", *filters)
        assert code == 0
        return [json.loads(line)["action"] for line in out.splitlines()]

    assert actions("--study", OTHER) == ["stow", "c-find"]
    assert actions("--user", "alice") == ["stow", "GET /studies"]
    assert actions("--user", "alice", "--study", STUDY) == ["stow"]
    assert actions("--since", "2000-01-01") == [r["action"] for r in read_records(trail)]
    assert actions("--since", "2999-01-01") == []
    # The v1 trail's records are 03:18:37.394433, .395456, .395715, .395945, .396158 UTC.
    code, out, _ = run(capsys, TRAIL_V1, "--json", "--since", "2026-12-06T04:18:37.3957+01:00")
    assert code == 0
    assert [json.loads(line)["actor"] for line in out.splitlines()] == [
        "VIEWER",
        "alice",
        "INTRUDER",
    ]


def test_a_bad_since_or_a_folder_without_a_trail_is_refused(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["audit", str(tmp_path), "--since", "yesterday"])
    assert "not an ISO 8601 date" in capsys.readouterr().err
    code, _, err = run(capsys, tmp_path)
    assert code == 2 and "no audit trail" in err


def test_verify_passes_a_whole_trail_and_names_a_tampered_line(trail, capsys) -> None:
    code, out, _ = run(capsys, trail, "--verify")
    assert code == 0 and "6 records, the chain holds" in out
    head = out.split("head ")[1].strip()
    (path,) = (trail / "audit").glob("*.jsonl")
    lines = path.read_text().splitlines()
    assert head == json.loads(lines[-1])["hash"]
    path.write_text("\n".join(lines[:-1]) + "\n")  # the last record cut
    code, _, err = run(capsys, trail, "--verify", "--head", head)
    assert code == 1 and f"no record has the hash {head}" in err
    path.write_text("\n".join(lines) + "\n")
    code, _, _ = run(capsys, trail, "--verify", "--head", head)
    assert code == 0
    entry = json.loads(lines[2])
    entry["instances"] = ["1.2.3"]  # a record's instance changed afterwards
    lines[2] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    code, _, err = run(capsys, trail, "--verify")
    assert code == 1
    assert f"{path}:3: hash does not match the record" in err
    assert "breaks in 1 place(s)" in err


def test_a_line_that_is_no_record_stops_the_listing_with_its_place(trail, capsys) -> None:
    (path,) = (trail / "audit").glob("*.jsonl")
    with open(path, "a") as file:
        file.write("garbage\n")
    code, _, err = run(capsys, trail)
    assert code == 1 and f"{path}:7: not a record" in err
    code, _, err = run(capsys, trail, "--verify")
    assert code == 1 and f"{path}:7: not a record" in err


def test_the_trail_written_before_series_and_instances_still_verifies(capsys) -> None:
    code, out, _ = run(capsys, TRAIL_V1, "--verify")
    assert code == 0 and "5 records, the chain holds" in out


# --- FHIR AuditEvent --------------------------------------------------------------------


def check_audit_event(event: dict) -> None:
    """The FHIR R4 AuditEvent's required elements and their types (AuditEvent.* cardinality)."""
    assert event["resourceType"] == "AuditEvent"
    assert FHIR_ID.fullmatch(event["id"]) and FHIR_INSTANT.fullmatch(event["recorded"])
    assert set(event["type"]) >= {"system", "code"}  # a Coding, 1..1
    assert event["action"] in {"C", "R", "U", "D", "E"}
    assert event["outcome"] in {"0", "4", "8", "12"}
    assert event["recorded"].endswith("+00:00")
    assert event["agent"] and all(isinstance(a["requestor"], bool) for a in event["agent"])
    assert [a["requestor"] for a in event["agent"]].count(True) == 1
    assert event["source"]["observer"]["display"] == "pacs-engine"
    for subtype in event.get("subtype", []):
        assert set(subtype) >= {"system", "code"}
    for entity in event.get("entity", []):
        assert entity["what"]["identifier"]["value"]
        assert entity["type"]["code"] == "2" and entity["role"]["code"] == "3"


def test_the_fhir_export_is_one_audit_event_a_record(trail, tmp_path, capsys) -> None:
    output = tmp_path / "audit.ndjson"
    assert run(capsys, trail, "--export", "fhir", "--output", output)[0] == 0
    events = [json.loads(line) for line in output.read_text().splitlines()]
    records = list(read_records(trail))
    assert [e["id"] for e in events] == [r["hash"] for r in records]
    for event in events:
        check_audit_event(event)
    types = [(e["type"]["code"], e["action"], e["outcome"]) for e in events]
    assert types == [
        ("110114", "E", "0"),  # associate: User Authentication
        ("110104", "C", "0"),  # C-STORE: DICOM Instances Transferred
        ("110104", "C", "4"),  # STOW-RS, some refused
        ("110103", "R", "4"),  # a GET refused for its role
        ("110112", "E", "0"),  # C-FIND: Query
        ("110114", "E", "0"),  # release
    ]
    assert events[0]["subtype"] == [{"system": DCM, "code": "110122", "display": "Login"}]
    assert events[5]["subtype"][0]["code"] == "110123"  # Logout
    stow = events[2]
    assert stow["meta"]["profile"] == [
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.Create"
    ]
    assert {"system": "http://hl7.org/fhir/restful-interaction", "code": "create"} in stow[
        "subtype"
    ]
    named = [
        (e["what"]["identifier"]["value"], e["what"]["identifier"]["type"]) for e in stow["entity"]
    ]
    assert [uid for uid, _ in named] == [STUDY, OTHER, SERIES, SOP]
    assert [t.get("coding", [{}])[0].get("code") for _, t in named] == [
        "110180",
        "110180",
        "112002",
        None,
    ]
    peer, server = stow["agent"]
    assert peer["who"]["display"] == "alice" and peer["network"]["address"] == "10.0.0.9"
    assert peer["type"]["coding"][0]["code"] == "110153"  # the uploader is the source
    assert server["type"]["coding"][0]["code"] == "110152"
    assert events[1]["agent"][0]["altId"] == "CT_SCANNER"


def test_the_fhir_bundle_holds_the_same_events(trail, capsys) -> None:
    code, out, _ = run(capsys, trail, "--export", "fhir-bundle", "--user", "alice")
    bundle = json.loads(out)
    assert code == 0 and (bundle["resourceType"], bundle["type"]) == ("Bundle", "collection")
    resources = [entry["resource"] for entry in bundle["entry"]]
    assert [r["outcomeDesc"].split(":")[0] for r in resources] == ["stow", "GET /studies"]
    assert len({entry["fullUrl"] for entry in bundle["entry"]}) == 2
    for resource in resources:
        check_audit_event(resource)


# --- DICOM PS3.15 A.5 audit messages ----------------------------------------------------


def test_the_dicom_export_parses_back_to_the_records(trail, capsys) -> None:
    code, out, _ = run(capsys, trail, "--export", "dicom")
    messages = [ElementTree.fromstring(line) for line in out.splitlines()]
    assert code == 0 and len(messages) == 6
    for message in messages:
        assert [child.tag for child in message][:4] == [
            "EventIdentification",
            "ActiveParticipant",
            "ActiveParticipant",
            "AuditSourceIdentification",
        ]
    store = messages[1]
    event = store.find("EventIdentification")
    assert event is not None
    assert (event.get("EventActionCode"), event.get("EventOutcomeIndicator")) == ("C", "0")
    event_id = event.find("EventID")
    assert event_id is not None and event_id.get("csd-code") == "110104"
    assert event_id.get("codeSystemName") == "DCM"
    peer = store.findall("ActiveParticipant")[0]
    assert peer.get("UserID") == "CT_SCANNER" and peer.get("UserIsRequestor") == "true"
    assert peer.get("AlternativeUserID") == "AETITLES=CT_SCANNER"
    assert peer.get("NetworkAccessPointID") == "10.0.0.5"
    role = peer.find("RoleIDCode")
    assert role is not None and role.get("csd-code") == "110153"
    objects = store.findall("ParticipantObjectIdentification")
    assert [o.get("ParticipantObjectID") for o in objects] == [STUDY, SERIES]
    codes = [
        type_code.get("csd-code")
        for o in objects
        for type_code in o.iter("ParticipantObjectIDTypeCode")
    ]
    assert codes == ["110180", "112002"]
    details = {
        d.get("type"): base64.b64decode(d.get("value", "")).decode()
        for d in objects[0].findall("ParticipantObjectDetail")
    }
    assert details == {"SOPInstanceUID": SOP}
    find = messages[4].find("EventIdentification/EventID")
    assert find is not None and find.get("csd-code") == "110112"
    login = messages[0].find("EventIdentification/EventTypeCode")
    assert login is not None and login.get("csd-code") == "110122"
