"""Parse NLM Open-i radiology report XML (``NLMCXR_reports.tgz``) into the reports table.

One XML file per report (``ecgen-radiology/<n>.xml``), read straight from the archive (or a folder)
with a hardened lxml parser: no DTD loading, no entity substitution (external entities stay
unresolved and are dropped from the text), no network, libxml2's default size/amplification limits.

Output schemas (see ``docs/architecture.md``): :data:`REPORT_COLUMNS`, :data:`EXCLUSION_COLUMNS`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from lxml import etree
from tqdm import tqdm

from cxrclip.data.archive import Member, Rejected, iter_source
from cxrclip.data.text import SECTIONS, check_section_order, clean_text, count_tokens, report_text
from cxrclip.errors import CxrclipError

log = logging.getLogger(__name__)

REPORT_COLUMNS = [
    "report_id", "source_file", "comparison", "indication", "findings", "impression",
    "mesh_major", "mesh_automatic", "image_ids", "is_normal", "text", "n_tokens", "truncated",
]  # fmt: skip
LIST_COLUMNS = ("mesh_major", "mesh_automatic", "image_ids")
EXCLUSION_COLUMNS = ["report_id", "source_file", "reason", "detail"]

MALFORMED_XML = "malformed_xml"
NO_TEXT = "no_findings_or_impression"
NO_IMAGES = "no_images"
DUPLICATE_ID = "duplicate_id"
UNSAFE_MEMBER = "unsafe_member"

_NUMBER = re.compile(r"\d+")


def secure_parser() -> etree.XMLParser:
    """An lxml parser that resolves no entity, loads no DTD and never touches the network."""
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True
    )


@dataclass
class ParsedReport:
    """The raw content of one report, before cleaning. Sections are "" when absent."""

    report_id: str
    source_file: str
    sections: dict[str, str]
    mesh_major: list[str] = field(default_factory=list)
    mesh_automatic: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Exclusion:
    """A report (or archive member) left out, with a snake_case ``reason`` and a human ``detail``."""

    report_id: str | None
    source_file: str
    reason: str
    detail: str


class MalformedReport(ValueError):
    """The XML parsed but lacks what every Open-i report has (e.g. ``uId``)."""


def element_text(element: etree._Element) -> str:
    """Text content of ``element`` and its child elements; unresolved entity references, comments
    and processing instructions contribute nothing (their tails do)."""
    parts = [element.text or ""]
    for child in element:
        if isinstance(child.tag, str):
            parts.append(element_text(child))
        parts.append(child.tail or "")
    return "".join(parts)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def parse_report_xml(data: bytes, source_file: str, parser: etree.XMLParser | None = None) -> ParsedReport:
    """Parse one Open-i report.

    Reads ``uId@id``, every ``AbstractText@Label`` (labels matched case-insensitively; repeated labels
    joined with a space), ``MeSH/major`` and ``MeSH/automatic`` terms, and ``parentImage@id``.
    Raises :class:`lxml.etree.XMLSyntaxError` for broken XML and :class:`MalformedReport` when
    the document is not an Open-i report.
    """
    root = etree.fromstring(data, parser or secure_parser())
    if root is None or not isinstance(root.tag, str):
        raise MalformedReport("empty document")
    if root.tag != "eCitation":
        raise MalformedReport(f"root element is <{root.tag}>, expected <eCitation>")
    uid = root.find("uId")
    report_id = (uid.get("id") or "").strip() if uid is not None else ""
    if not report_id:
        raise MalformedReport("no <uId id=...>")
    found: dict[str, list[str]] = {name: [] for name in SECTIONS}
    for node in root.iterfind(".//AbstractText"):
        label = (node.get("Label") or "").strip().lower()
        if label in found:
            text = element_text(node).strip()
            if text:
                found[label].append(text)
    mesh = root.find("MeSH")
    major = [element_text(m).strip() for m in mesh.iterfind("major")] if mesh is not None else []
    auto = [element_text(m).strip() for m in mesh.iterfind("automatic")] if mesh is not None else []
    images = [(img.get("id") or "").strip() for img in root.iterfind("parentImage")]
    return ParsedReport(
        report_id=report_id,
        source_file=source_file,
        sections={name: " ".join(texts) for name, texts in found.items()},
        mesh_major=_unique(major),
        mesh_automatic=_unique(auto),
        image_ids=_unique(images),
    )


def report_number(report_id: str) -> int:
    """The numeric part of a report id (``CXR123`` -> 123); -1 when there is none."""
    match = _NUMBER.search(report_id)
    return int(match.group()) if match else -1


def is_normal(mesh_major: list[str]) -> bool:
    """True when the MeSH major list is exactly ``["normal"]`` (case-insensitive)."""
    return len(mesh_major) == 1 and mesh_major[0].strip().lower() == "normal"


def select_reports(
    parsed: Iterable[ParsedReport], exclusions: list[Exclusion], text_cfg: Mapping[str, Any]
) -> list[ParsedReport]:
    """Keep usable reports, sorted by report number; append the others to ``exclusions``.

    Checks, first failing one wins: ``duplicate_id`` (the first by report number, then source
    file, is kept), ``no_findings_or_impression`` (FINDINGS and IMPRESSION both empty once cleaned
    with ``text_cfg``, e.g. absent or only ``XXXX``), ``no_images``.
    """
    ordered = sorted(parsed, key=lambda r: (report_number(r.report_id), r.report_id, r.source_file))
    kept: list[ParsedReport] = []
    first_file: dict[str, str] = {}
    for rep in ordered:
        if rep.report_id in first_file:
            exclusions.append(Exclusion(rep.report_id, rep.source_file, DUPLICATE_ID,
                                        f"report id already read from {first_file[rep.report_id]}"))
            continue
        first_file[rep.report_id] = rep.source_file
        raw = [rep.sections.get("findings", ""), rep.sections.get("impression", "")]
        if not any(clean_text(section, text_cfg) for section in raw):
            detail = "neither FINDINGS nor IMPRESSION has text"
            if any(raw):
                detail += " once redactions are removed"
            exclusions.append(Exclusion(rep.report_id, rep.source_file, NO_TEXT, detail))
        elif not rep.image_ids:
            exclusions.append(Exclusion(rep.report_id, rep.source_file, NO_IMAGES,
                                        "report lists no parentImage"))
        else:
            kept.append(rep)
    return kept


def reports_frame(reports: list[ParsedReport], text_cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Build the reports table (:data:`REPORT_COLUMNS`) with cleaned ``text`` and token counts."""
    check_section_order(text_cfg.get("section_order", ("impression", "findings")))
    if not reports:
        return empty_reports()
    texts = [report_text(r.sections, text_cfg) for r in reports]
    n_tokens, truncated = count_tokens(texts, int(text_cfg.get("context_length", 77)))
    return pd.DataFrame(
        {
            "report_id": [r.report_id for r in reports],
            "source_file": [r.source_file for r in reports],
            **{name: [r.sections.get(name, "") for r in reports] for name in SECTIONS},
            "mesh_major": [list(r.mesh_major) for r in reports],
            "mesh_automatic": [list(r.mesh_automatic) for r in reports],
            "image_ids": [list(r.image_ids) for r in reports],
            "is_normal": [is_normal(r.mesh_major) for r in reports],
            "text": texts,
            "n_tokens": n_tokens,
            "truncated": truncated,
        },
        columns=REPORT_COLUMNS,
    )


def empty_reports() -> pd.DataFrame:
    """A reports table with no rows; string, bool and int64 columns keep their types in Parquet.

    The list columns stay ``object`` (Parquet ``null`` type when empty): an Arrow list dtype would
    be typed, but pandas 3 cannot read its own metadata for it back.
    """
    strings = pd.Series([], dtype="str")
    lists = pd.Series([], dtype=object)
    cols: dict[str, pd.Series] = {}
    for name in REPORT_COLUMNS:
        if name in LIST_COLUMNS:
            cols[name] = lists.copy()
        elif name in ("is_normal", "truncated"):
            cols[name] = pd.Series([], dtype=bool)
        elif name == "n_tokens":
            cols[name] = pd.Series([], dtype="int64")
        else:
            cols[name] = strings.copy()
    return pd.DataFrame(cols, columns=REPORT_COLUMNS)


def exclusions_frame(exclusions: list[Exclusion]) -> pd.DataFrame:
    """The exclusions table (:data:`EXCLUSION_COLUMNS`); ``report_id`` is missing when unknown."""
    return pd.DataFrame(
        {
            "report_id": pd.Series([e.report_id for e in exclusions], dtype="str"),
            "source_file": pd.Series([e.source_file for e in exclusions], dtype="str"),
            "reason": pd.Series([e.reason for e in exclusions], dtype="str"),
            "detail": pd.Series([e.detail for e in exclusions], dtype="str"),
        },
        columns=EXCLUSION_COLUMNS,
    )


def parse_openi_members(
    members: Iterable[Member | Rejected], text_cfg: Mapping[str, Any], progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse Open-i report members (from :mod:`cxrclip.data.archive`) -> (reports, exclusions)."""
    check_section_order(text_cfg.get("section_order", ("impression", "findings")))
    parser = secure_parser()
    parsed: list[ParsedReport] = []
    exclusions: list[Exclusion] = []
    for member in tqdm(members, desc="parse reports", unit=" files", disable=not progress):
        if isinstance(member, Rejected):
            exclusions.append(Exclusion(None, member.name, UNSAFE_MEMBER, member.detail))
            continue
        try:
            parsed.append(parse_report_xml(member.data, member.name, parser))
        except (etree.XMLSyntaxError, MalformedReport) as exc:
            detail = str(exc) or type(exc).__name__
            exclusions.append(Exclusion(None, member.name, MALFORMED_XML, detail))
    kept = select_reports(parsed, exclusions, text_cfg)
    return reports_frame(kept, text_cfg), exclusions_frame(exclusions)


def parse_openi_archive(
    archive: str | Path, text_cfg: Mapping[str, Any], progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse every ``*.xml`` report of an Open-i ``.tgz`` (or folder) -> (reports, exclusions).

    Raises :class:`cxrclip.errors.CxrclipError` when ``archive`` is missing or not a tar archive.
    """
    if not Path(archive).exists():
        raise CxrclipError(f"report archive not found: {archive} (run `cxrclip download` first)")
    return parse_openi_members(iter_source(archive, suffixes=(".xml",)), text_cfg, progress)


def log_counts(reports: pd.DataFrame, exclusions: pd.DataFrame) -> dict[str, int]:
    """Log and return kept/excluded counts (``{"kept": n, "excluded/<reason>": n, ...}``)."""
    counts = {"kept": len(reports)}
    for reason, n in exclusions["reason"].value_counts().sort_index().items():
        counts[f"excluded/{reason}"] = int(n)
    log.info("reports kept: %d; excluded: %d %s", len(reports), len(exclusions),
             {k.split("/", 1)[1]: v for k, v in counts.items() if k != "kept"})
    return counts
