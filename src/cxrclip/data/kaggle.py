"""Read the Kaggle flattening of IU X-ray ("raddar/chest-xrays-indiana-university") into the reports table.

``indiana_reports.csv`` (uid, MeSH, Problems, image, indication, comparison, findings, impression)
and ``indiana_projections.csv`` (uid, filename, projection) give the same reports table as the Open-i
XML (:data:`cxrclip.data.reports.REPORT_COLUMNS`), with:

- ``report_id`` = ``CXR<uid>``; ``source_file`` = ``indiana_reports.csv:<uid>``;
- ``mesh_major`` = the ``MeSH`` column split on ``;`` (full ``Term/qualifier`` strings),
  ``mesh_automatic`` = [] (the CSV does not keep Open-i's automatic terms);
- ``image_ids`` = ``CXR`` + image file name without ``.dcm.png`` (:func:`kaggle_image_id`), in
  projections-file order.

Image ids: Kaggle names are ``<uid>_IM-xxxx-yyyy.dcm.png`` (402 of 7,466 carry a fourth number,
``<uid>_IM-xxxx-yyyy-zzzz``). ``CXR`` + that stem is usually the Open-i ``parentImage`` id, but
not always: Open-i calls report 1's images ``CXR1_1_IM-0001-4001`` where Kaggle has
``1_IM-0001-4001.dcm.png``. Within the Kaggle layout the ids are consistent (image files and
projections use the same names), so nothing depends on the Open-i spelling unless the two
sources are mixed, which the pipeline never does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cxrclip.data.reports import (
    Exclusion,
    ParsedReport,
    exclusions_frame,
    reports_frame,
    select_reports,
)
from cxrclip.data.text import SECTIONS, check_section_order
from cxrclip.errors import CxrclipError

REPORTS_CSV = "indiana_reports.csv"
PROJECTIONS_CSV = "indiana_projections.csv"
REPORT_CSV_COLUMNS = ("uid", "MeSH", "indication", "comparison", "findings", "impression")
PROJECTION_CSV_COLUMNS = ("uid", "filename", "projection")
#: A CSV row whose uid is not a positive integer (extends the contract's report exclusion reasons).
MALFORMED_ROW = "malformed_row"
_IMAGE_SUFFIXES = (".dcm.png", ".png")


def kaggle_image_id(filename: str) -> str:
    """Image id of a Kaggle image file: ``1_IM-0001-4001.dcm.png`` -> ``CXR1_IM-0001-4001``.

    Only the base name counts (folders are ignored); ``.dcm.png`` or ``.png`` is removed.
    """
    name = Path(str(filename).strip()).name
    for suffix in _IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name if name.startswith("CXR") else f"CXR{name}"


def view_of(projection: str) -> str:
    """``Frontal``/``Lateral`` (any case) -> ``frontal``/``lateral``; anything else -> ``unknown``."""
    view = str(projection).strip().lower()
    return view if view in ("frontal", "lateral") else "unknown"


def _read_csv(path: str | Path, required: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV as strings: empty cells become "", and ``None``/``NA`` stay text (they are report text)."""
    path = Path(path)
    if not path.is_file():
        raise CxrclipError(
            f"{path}: file not found (source.kind: kaggle reads {REPORTS_CSV} and {PROJECTIONS_CSV} "
            "from source.kaggle_dir in params.yaml)"
        )
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise CxrclipError(f"{path}: not a readable CSV file ({exc})") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CxrclipError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    return frame


def _uid(value: str) -> int | None:
    text = str(value).strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def kaggle_views(projections_csv: str | Path) -> pd.DataFrame:
    """``indiana_projections.csv`` -> DataFrame[``image_id``, ``view``, ``report_id``, ``filename``].

    ``view`` is ``frontal``/``lateral`` (``unknown`` for any other projection label); ``report_id`` is
    ``CXR<uid>`` (None when the uid is not a number). One row per CSV row, file order.
    """
    proj = _read_csv(projections_csv, PROJECTION_CSV_COLUMNS)
    uids = [_uid(u) for u in proj["uid"]]
    return pd.DataFrame(
        {
            "image_id": pd.Series([kaggle_image_id(f) for f in proj["filename"]], dtype="str"),
            "view": pd.Series([view_of(p) for p in proj["projection"]], dtype="str"),
            "report_id": pd.Series([f"CXR{u}" if u is not None else None for u in uids], dtype="str"),
            "filename": pd.Series([str(f).strip() for f in proj["filename"]], dtype="str"),
        }
    )


def split_mesh(value: str) -> list[str]:
    """``"Cardiomegaly/borderline;Pulmonary Artery/enlarged"`` -> the two terms, stripped, no empties."""
    return [term.strip() for term in str(value).split(";") if term.strip()]


def parse_kaggle(
    reports_csv: str | Path,
    projections_csv: str | Path,
    text_cfg: Mapping[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Kaggle CSVs -> (reports, exclusions), the same tables as :func:`~cxrclip.data.reports.parse_openi_archive`.

    Exclusion reasons: ``malformed_row`` (uid not a positive integer; ``source_file`` is then
    ``indiana_reports.csv:row<line number>``, header = line 1), ``duplicate_id``,
    ``no_findings_or_impression``, ``no_images`` (no row in the projections file).
    """
    check_section_order(text_cfg.get("section_order", ("impression", "findings")))
    table = _read_csv(reports_csv, REPORT_CSV_COLUMNS)
    views = kaggle_views(projections_csv)
    images_by_report: dict[str, list[str]] = {}
    for report_id, image_id in zip(views["report_id"], views["image_id"], strict=True):
        if isinstance(report_id, str):
            ids = images_by_report.setdefault(report_id, [])
            if image_id not in ids:
                ids.append(image_id)
    source_name = Path(reports_csv).name
    exclusions: list[Exclusion] = []
    parsed: list[ParsedReport] = []
    columns = {name: table[name].tolist() for name in REPORT_CSV_COLUMNS}
    for i, raw_uid in enumerate(columns["uid"]):
        uid = _uid(raw_uid)
        source_file = f"{source_name}:{str(raw_uid).strip()}"
        if uid is None:
            exclusions.append(Exclusion(None, f"{source_name}:row{i + 2}", MALFORMED_ROW,
                                        f"uid {raw_uid!r} is not a positive integer"))
            continue
        report_id = f"CXR{uid}"
        parsed.append(
            ParsedReport(
                report_id=report_id,
                source_file=source_file,
                sections={name: str(columns[name][i]).strip() for name in SECTIONS},
                mesh_major=split_mesh(columns["MeSH"][i]),
                mesh_automatic=[],
                image_ids=list(images_by_report.get(report_id, [])),
            )
        )
    kept = select_reports(parsed, exclusions, text_cfg)
    return reports_frame(kept, text_cfg), exclusions_frame(exclusions)


def parse_kaggle_dir(kaggle_dir: str | Path, text_cfg: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`parse_kaggle` on ``<kaggle_dir>/indiana_reports.csv`` and ``indiana_projections.csv``."""
    root = Path(kaggle_dir)
    if not root.is_dir():
        raise CxrclipError(
            f"source.kaggle_dir {str(root)!r} is not a folder; put {REPORTS_CSV}, {PROJECTIONS_CSV} "
            "and images/ there, or set source.kaggle_dir in params.yaml"
        )
    return parse_kaggle(root / REPORTS_CSV, root / PROJECTIONS_CSV, text_cfg)
