"""The audit trail in the standard forms: FHIR R4 AuditEvent (IHE BALP) and DICOM PS3.15 A.5.

Each record of `serve/audit.py` becomes one event. Its action gives the event:

| action | DICOM EventID | action code |
|---|---|---|
| store (C-STORE), stow (STOW-RS), POST | 110104 DICOM Instances Transferred | C |
| c-get, c-move (and refusals get, move) | 110104 DICOM Instances Transferred | R |
| c-find (and refusal find), qido | 110112 Query | E |
| wado, GET or HEAD (DICOMweb) | 110103 DICOM Instances Accessed | R |
| associate, release, abort; no valid credentials | 110114 User Authentication | E |
| echo, anything else | 110100 Application Activity | E |

The peer (calling AE title, or DICOMweb user) and this archive are the two
participants, the peer the requestor; studies and series are the participant
objects (110180 Study Instance UID, 112002 Series Instance UID), and instances are
the FHIR entities (identifier "SOP Instance UID") or, in a DICOM message, details
(SOPInstanceUID) of the study when the record names one study.
Outcomes: success, accepted, ended → 0; refused, rejected, forbidden,
unauthenticated, partial, warning, cancelled → 4 (minor failure); anything else
(failed, failure, aborted) → 8 (serious failure).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree

#: The DICOM Controlled Terminology (PS3.16) in FHIR.
DCM = "http://dicom.nema.org/resources/ontology/DCM"
#: FHIR R4 code systems of AuditEvent.
RESTFUL = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
NETWORK_TYPE_IP = "2"
#: IHE Basic Audit Log Patterns profiles, by FHIR RESTful interaction.
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
BALP_PROFILES = {"create": BALP + "Create", "read": BALP + "Read", "search-type": BALP + "Query"}
#: Who observes and records the events.
SOURCE_ID = "pacs-engine"

#: DICOM event IDs (PS3.15 A.5.3) and type codes (PS3.16 CID 400-ish) used here.
TRANSFERRED = ("110104", "DICOM Instances Transferred")
ACCESSED = ("110103", "DICOM Instances Accessed")
QUERY = ("110112", "Query")
AUTHENTICATION = ("110114", "User Authentication")
ACTIVITY = ("110100", "Application Activity")
LOGIN = ("110122", "Login")
LOGOUT = ("110123", "Logout")
SOURCE_ROLE = ("110153", "Source Role ID")
DESTINATION_ROLE = ("110152", "Destination Role ID")
STUDY_UID = ("110180", "Study Instance UID")
SERIES_UID = ("112002", "Series Instance UID")

_SUCCESS = {"success", "accepted", "ended"}
_MINOR = {
    "refused",
    "rejected",
    "forbidden",
    "unauthenticated",
    "partial",
    "warning",
    "cancelled",
}


@dataclass(frozen=True)
class Event:
    """What a record's action is, in the standards' terms."""

    event_id: tuple[str, str]
    action: str  # EventActionCode: C, R, U, D, E
    subtype: tuple[str, str] | None = None  # a DICOM EventTypeCode
    interaction: str | None = None  # a FHIR RESTful interaction (DICOMweb)
    peer_sends: bool | None = None  # True: the peer is the source; False: the destination


def event_of(record: dict[str, Any]) -> Event:
    """The event a record stands for (see the table of this module)."""
    action = str(record["action"]).lower()
    web = record["protocol"] == "dicomweb"
    if record["outcome"] == "unauthenticated":
        return Event(AUTHENTICATION, "E", LOGIN)
    if action in ("store", "stow") or (web and action.startswith("post")):
        return Event(TRANSFERRED, "C", interaction="create" if web else None, peer_sends=True)
    if action in ("c-get", "c-move", "get", "move"):
        return Event(TRANSFERRED, "R", peer_sends=False)
    if action in ("c-find", "find") or action.startswith("qido"):
        return Event(QUERY, "E", interaction="search-type" if web else None)
    if action.startswith(("wado", "get ", "head ")):
        return Event(ACCESSED, "R", interaction="read" if web else None, peer_sends=False)
    if action == "associate":
        return Event(AUTHENTICATION, "E", LOGIN)
    if action in ("release", "abort"):
        return Event(AUTHENTICATION, "E", LOGOUT)
    return Event(ACTIVITY, "E")


def outcome_code(outcome: str) -> str:
    """The EventOutcomeIndicator (0, 4 or 8) of a record's outcome."""
    word = outcome.split(" ", 1)[0]
    return "0" if word in _SUCCESS else "4" if word in _MINOR else "8"


def uids(value: str | list[str] | None) -> list[str]:
    """A record's UID field as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _host(address: str) -> str:
    """The host of "host:port" (an IPv6 host keeps its colons)."""
    host, _, port = address.rpartition(":")
    return host if host and port.isdigit() else address


def _coding(system: str, code: tuple[str, str]) -> dict[str, str]:
    return {"system": system, "code": code[0], "display": code[1]}


# --- FHIR R4 AuditEvent -----------------------------------------------------------------


def fhir_audit_event(record: dict[str, Any], archive_name: str) -> dict[str, Any]:
    """One record as a FHIR R4 AuditEvent resource (IHE BALP where the event is RESTful)."""
    event = event_of(record)
    resource: dict[str, Any] = {"resourceType": "AuditEvent", "id": record["hash"]}
    if event.interaction in BALP_PROFILES:
        resource["meta"] = {"profile": [BALP_PROFILES[event.interaction]]}
    resource["type"] = _coding(DCM, event.event_id)
    subtypes = []
    if event.subtype is not None:
        subtypes.append(_coding(DCM, event.subtype))
    if event.interaction is not None:
        subtypes.append({"system": RESTFUL, "code": event.interaction})
    if subtypes:
        resource["subtype"] = subtypes
    resource["action"] = event.action
    resource["recorded"] = record["time"]
    resource["outcome"] = outcome_code(record["outcome"])
    description = " ".join(filter(None, (record["outcome"], record.get("detail"))))
    resource["outcomeDesc"] = f"{record['action']}: {description}"
    peer: dict[str, Any] = {
        "who": {"display": record["actor"]},
        "requestor": True,
        "network": {"address": _host(record["address"]), "type": NETWORK_TYPE_IP},
    }
    server: dict[str, Any] = {"who": {"display": archive_name}, "requestor": False}
    if record["protocol"] == "dimse":
        peer["altId"] = record["actor"]  # the AE title
    if event.peer_sends is not None:
        sender, receiver = (peer, server) if event.peer_sends else (server, peer)
        sender["type"] = {"coding": [_coding(DCM, SOURCE_ROLE)]}
        receiver["type"] = {"coding": [_coding(DCM, DESTINATION_ROLE)]}
    resource["agent"] = [peer, server]
    resource["source"] = {
        "site": archive_name,
        "observer": {"display": SOURCE_ID},
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }
    entities = [
        _fhir_entity(uid, kind)
        for field, kind in (("study", STUDY_UID), ("series", SERIES_UID))
        for uid in uids(record.get(field))
    ]
    entities += [_fhir_entity(uid, None) for uid in uids(record.get("instances"))]
    if entities:
        resource["entity"] = entities
    return resource


def _fhir_entity(uid: str, kind: tuple[str, str] | None) -> dict[str, Any]:
    """An entity naming a study or series (coded), or an instance (SOP Instance UID)."""
    identifier_type = {"coding": [_coding(DCM, kind)]} if kind else {"text": "SOP Instance UID"}
    return {
        "what": {"identifier": {"type": identifier_type, "value": uid}},
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "3", "display": "Report"},
    }


def fhir_bundle(events: list[dict[str, Any]]) -> dict[str, Any]:
    """AuditEvent resources as a FHIR collection Bundle."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        # The record's hash names the entry: an AuditEvent has no server URL here.
        "entry": [
            {"fullUrl": f"urn:uuid:{uuid.UUID(e['id'][:32])}", "resource": e} for e in events
        ],
    }


# --- DICOM PS3.15 A.5 audit message -----------------------------------------------------


def dicom_audit_message(record: dict[str, Any], archive_name: str) -> ElementTree.Element:
    """One record as a DICOM audit message (PS3.15 A.5.1 schema, `AuditMessage`)."""
    event = event_of(record)
    message = ElementTree.Element("AuditMessage")
    identification = ElementTree.SubElement(
        message,
        "EventIdentification",
        EventActionCode=event.action,
        EventDateTime=record["time"],
        EventOutcomeIndicator=outcome_code(record["outcome"]),
    )
    _coded(identification, "EventID", event.event_id)
    if event.subtype is not None:
        _coded(identification, "EventTypeCode", event.subtype)
    description = " ".join(
        filter(None, (record["action"], record["outcome"], record.get("detail")))
    )
    ElementTree.SubElement(identification, "EventOutcomeDescription").text = description
    peer = ElementTree.SubElement(
        message,
        "ActiveParticipant",
        UserID=record["actor"],
        UserIsRequestor="true",
        NetworkAccessPointID=_host(record["address"]),
        NetworkAccessPointTypeCode=NETWORK_TYPE_IP,
    )
    if record["protocol"] == "dimse":
        peer.set("AlternativeUserID", f"AETITLES={record['actor']}")
    server = ElementTree.SubElement(
        message, "ActiveParticipant", UserID=archive_name, UserIsRequestor="false"
    )
    if event.peer_sends is not None:
        sender, receiver = (peer, server) if event.peer_sends else (server, peer)
        _coded(sender, "RoleIDCode", SOURCE_ROLE)
        _coded(receiver, "RoleIDCode", DESTINATION_ROLE)
    source = ElementTree.SubElement(message, "AuditSourceIdentification", AuditSourceID=SOURCE_ID)
    ElementTree.SubElement(
        source,
        "AuditSourceTypeCode",
        {"csd-code": "4", "codeSystemName": "RFC-3881", "originalText": "Application Server"},
    )
    studies = uids(record.get("study"))
    for study in studies:
        study_object = _participant_object(message, study, STUDY_UID)
        if len(studies) == 1:  # the series and instances are this study's
            for uid in uids(record.get("instances")):
                ElementTree.SubElement(
                    study_object,
                    "ParticipantObjectDetail",
                    type="SOPInstanceUID",
                    value=base64.b64encode(uid.encode("ascii")).decode("ascii"),
                )
    for series in uids(record.get("series")):
        _participant_object(message, series, SERIES_UID)
    return message


def _participant_object(
    message: ElementTree.Element, uid: str, kind: tuple[str, str]
) -> ElementTree.Element:
    """A ParticipantObjectIdentification naming a study or series (a system object, report)."""
    element = ElementTree.SubElement(
        message,
        "ParticipantObjectIdentification",
        ParticipantObjectID=uid,
        ParticipantObjectTypeCode="2",
        ParticipantObjectTypeCodeRole="3",
    )
    _coded(element, "ParticipantObjectIDTypeCode", kind)
    return element


def _coded(parent: ElementTree.Element, tag: str, code: tuple[str, str]) -> None:
    """A coded value of the schema: csd-code, codeSystemName, originalText."""
    ElementTree.SubElement(
        parent, tag, {"csd-code": code[0], "codeSystemName": "DCM", "originalText": code[1]}
    )
