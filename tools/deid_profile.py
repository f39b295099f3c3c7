"""Regenerate src/pacs_engine/deid/profile.json, DICOM PS3.15 Annex E Table E.1-1.

The table is data, never typed by hand. Two inputs, no network:

    python tools/deid_profile.py --docbook part15.xml            # the standard's DocBook
    python tools/deid_profile.py --innolitics confidentiality_profile_attributes.json \
        --edition 2024e --source "innolitics/dicom-standard@<commit>"

`--docbook` is the authoritative source (NEMA publishes PS3.15 as DocBook XML:
https://dicom.nema.org/medical/dicom/current/source/docbook/part15/part15.xml); its
edition is read from the document's subtitle. `--innolitics` reads the scrape of the
same table by innolitics/dicom-standard (from the standard's HTML of that edition),
for machines where the XML is not at hand. Both give the same rows and columns.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "src" / "pacs_engine" / "deid" / "profile.json"
TABLE_ID = "table_E.1-1"
XML_ID = "{http://www.w3.org/XML/1998/namespace}id"
DOCBOOK = "{http://docbook.org/ns/docbook}"

#: The option columns of Table E.1-1, in the standard's order: (header, option name).
OPTION_COLUMNS = (
    ("Rtn. Safe Priv. Opt.", "retain-safe-private"),
    ("Rtn. UIDs Opt.", "retain-uids"),
    ("Rtn. Dev. Id. Opt.", "retain-device-identity"),
    ("Rtn. Inst. Id. Opt.", "retain-institution-identity"),
    ("Rtn. Pat. Chars. Opt.", "retain-patient-characteristics"),
    ("Rtn. Long. Full Dates Opt.", "retain-longitudinal-full-dates"),
    ("Rtn. Long. Modif. Dates Opt.", "retain-longitudinal-modified-dates"),
    ("Clean Desc. Opt.", "clean-descriptors"),
    ("Clean Struct. Cont. Opt.", "clean-structured-content"),
    ("Clean Graph. Opt.", "clean-graphics"),
)
#: The columns before the options: name, tag, retired, in standard composite IODs, basic.
LEADING = ("Attribute Name", "Tag", "Retd.", "In Std. Comp. IOD", "Basic Prof.")
#: innolitics' field of each option column.
INNOLITICS_FIELDS = {
    "rtnSafePrivOpt": "retain-safe-private",
    "rtnUIDsOpt": "retain-uids",
    "rtnDevIdOpt": "retain-device-identity",
    "rtnInstIdOpt": "retain-institution-identity",
    "rtnPatCharsOpt": "retain-patient-characteristics",
    "rtnLongFullDatesOpt": "retain-longitudinal-full-dates",
    "rtnLongModifDatesOpt": "retain-longitudinal-modified-dates",
    "cleanDescOpt": "clean-descriptors",
    "cleanStructContOpt": "clean-structured-content",
    "cleanGraphOpt": "clean-graphics",
}
ACTIONS = {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
#: The tag of the row for private attributes, "(gggg,eeee) where gggg is odd".
PRIVATE = "private"
MIN_ROWS = 500  # a parse that found a fraction of the table must fail, not shrink it


def tag_of(text: str) -> str:
    """'(0008,0050)' -> '00080050'; '(50XX,XXXX)' -> '50xxxxxx'; the private row -> 'private'."""
    text = text.strip().lower()
    if "odd" in text:
        return PRIVATE
    match = re.fullmatch(r"\(([0-9a-fx]{4}),([0-9a-fx]{4})\)", text.replace(" ", ""))
    if match is None:
        raise ValueError(f"not a tag: {text!r}")
    return match[1] + match[2]


def _row(name: str, tag: str, basic: str, options: dict[str, str]) -> dict:
    for code in (basic, *options.values()):
        if code not in ACTIONS:
            raise ValueError(f"{tag} {name}: unknown action {code!r}")
    name = re.sub(r"\s+", " ", name).strip()
    return {"tag": tag, "name": name, "basic": basic, "options": dict(sorted(options.items()))}


def _cell_text(cell: ET.Element) -> str:
    return re.sub(r"\s+", " ", "".join(cell.itertext()).replace("\u200b", "")).strip()


def from_docbook(path: Path) -> tuple[str, list[dict]]:
    """(edition, rows) of Table E.1-1 in the standard's DocBook XML."""
    root = ET.parse(path).getroot()
    subtitle = next((e for e in root.iter() if e.tag.endswith("subtitle")), None)
    match = re.search(
        r"PS3\.15 (\d{4}[a-z]?)", _cell_text(subtitle) if subtitle is not None else ""
    )
    if match is None:
        raise ValueError(f"{path}: no 'DICOM PS3.15 <edition>' subtitle")
    table = next((e for e in root.iter() if e.get(XML_ID) == TABLE_ID), None)
    if table is None:
        raise ValueError(f"{path}: no table {TABLE_ID}")
    trs = [e for e in table.iter() if e.tag.endswith("tr")]
    header = [_cell_text(c) for c in trs[0] if c.tag.endswith(("th", "td"))]
    expected = [*LEADING, *(h for h, _ in OPTION_COLUMNS)]
    if [h[: len(e)] for h, e in zip(header, expected, strict=False)] != expected:
        raise ValueError(f"{path}: the columns of {TABLE_ID} are not {expected}: {header}")
    rows = []
    for tr in trs[1:]:
        cells = [_cell_text(c) for c in tr if c.tag.endswith("td")]
        if len(cells) != len(expected):
            raise ValueError(f"{path}: a row of {len(cells)} cells: {cells}")
        options = {
            option: cells[len(LEADING) + i]
            for i, (_, option) in enumerate(OPTION_COLUMNS)
            if cells[len(LEADING) + i]
        }
        rows.append(_row(cells[0], tag_of(cells[1]), cells[4], options))
    return match[1], rows


def from_innolitics(path: Path) -> list[dict]:
    """The rows of innolitics' confidentiality_profile_attributes.json."""
    rows = []
    for entry in json.loads(path.read_text(encoding="utf-8")):
        options = {o: entry[f] for f, o in INNOLITICS_FIELDS.items() if entry.get(f)}
        rows.append(_row(entry["name"], tag_of(entry["tag"]), entry["basicProfile"], options))
    return rows


def profile(edition: str, source: str, rows: list[dict]) -> dict:
    """The document written to profile.json."""
    if len(rows) < MIN_ROWS:
        raise ValueError(f"only {len(rows)} rows: not the whole of {TABLE_ID}")
    tags = [r["tag"] for r in rows]
    if len(set(tags)) != len(tags):
        raise ValueError("a tag is listed twice")
    return {
        "table": f"DICOM PS3.15 {edition} Annex E Table E.1-1, Application Level "
        "Confidentiality Profile Attributes",
        "edition": edition,
        "source": source,
        "generated_by": "tools/deid_profile.py",
        "options": [option for _, option in OPTION_COLUMNS],
        "attributes": sorted(rows, key=lambda r: r["tag"]),
    }


def main(argv: list[str] | None = None) -> int:
    """Write profile.json from the DocBook XML or innolitics' JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--docbook", type=Path, help="PS3.15 as DocBook XML (part15.xml)")
    given.add_argument("--innolitics", type=Path, help="confidentiality_profile_attributes.json")
    parser.add_argument("--edition", help="the PS3.15 edition of the innolitics JSON (e.g. 2024e)")
    parser.add_argument("--source", help="where the input came from (repository@commit, URL)")
    parser.add_argument("--output", type=Path, default=TARGET)
    args = parser.parse_args(argv)
    if args.docbook is not None:
        edition, rows = from_docbook(args.docbook)
        source = args.source or f"NEMA DocBook {args.docbook.name}"
    else:
        if not args.edition or not args.source:
            parser.error("--innolitics needs --edition and --source")
        edition, rows, source = args.edition, from_innolitics(args.innolitics), args.source
    document = profile(edition, source, rows)
    args.output.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    print(f"{args.output}: {len(rows)} attributes, PS3.15 {edition}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
