"""Finding labels from MeSH major terms, for label-level retrieval metrics.

Each Open-i MeSH major entry reads ``Term/qualifier/qualifier`` (e.g. ``Lung/hyperdistention/mild``).
The *term* is the part before the first ``/``, compared case-insensitively with surrounding spaces
collapsed. Mapping (group: terms):

- ``normal``: normal
- ``cardiomegaly``: cardiomegaly
- ``effusion``: pleural effusion, pericardial effusion
- ``opacity``: opacity, consolidation, infiltrate, pneumonia, airspace disease
- ``nodule_mass``: nodule, mass, granuloma, calcified granuloma, granulomatous disease
- ``atelectasis``: pulmonary atelectasis, atelectasis
- ``emphysema``: emphysema, pulmonary emphysema, bullous emphysema,
  pulmonary disease, chronic obstructive (COPD); also term ``lung`` with qualifier
  ``hyperdistention`` or ``hyperinflation`` (the only place Open-i records hyperinflation)
- ``device``: implanted medical device, medical device, catheters, indwelling, tube, inserted,
  pacemaker, artificial, surgical instruments (sternotomy wires, clips), sutures, stents
- ``degenerative``: osteophyte, spondylosis, scoliosis; terms ``spine``, ``thoracic vertebrae``,
  ``lumbar vertebrae``, ``cervical vertebrae`` when qualified ``degenerative``
- ``other``: every other term (including ``no indexing``)

A query matches a candidate when their label sets intersect.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

LABEL_GROUPS: tuple[str, ...] = (
    "normal",
    "cardiomegaly",
    "effusion",
    "opacity",
    "nodule_mass",
    "atelectasis",
    "emphysema",
    "device",
    "degenerative",
    "other",
)

_TERM_GROUP: dict[str, str] = {
    "normal": "normal",
    "cardiomegaly": "cardiomegaly",
    "pleural effusion": "effusion",
    "pericardial effusion": "effusion",
    "opacity": "opacity",
    "consolidation": "opacity",
    "infiltrate": "opacity",
    "pneumonia": "opacity",
    "airspace disease": "opacity",
    "nodule": "nodule_mass",
    "mass": "nodule_mass",
    "granuloma": "nodule_mass",
    "calcified granuloma": "nodule_mass",
    "granulomatous disease": "nodule_mass",
    "pulmonary atelectasis": "atelectasis",
    "atelectasis": "atelectasis",
    "emphysema": "emphysema",
    "pulmonary emphysema": "emphysema",
    "bullous emphysema": "emphysema",
    "pulmonary disease, chronic obstructive": "emphysema",
    "implanted medical device": "device",
    "medical device": "device",
    "catheters, indwelling": "device",
    "tube, inserted": "device",
    "pacemaker, artificial": "device",
    "surgical instruments": "device",
    "sutures": "device",
    "stents": "device",
    "osteophyte": "degenerative",
    "spondylosis": "degenerative",
    "scoliosis": "degenerative",
}
#: (term, qualifier) rules checked before the plain term table.
_QUALIFIED_GROUP: dict[tuple[str, str], str] = {
    ("lung", "hyperdistention"): "emphysema",
    ("lung", "hyperinflation"): "emphysema",
    ("spine", "degenerative"): "degenerative",
    ("thoracic vertebrae", "degenerative"): "degenerative",
    ("lumbar vertebrae", "degenerative"): "degenerative",
    ("cervical vertebrae", "degenerative"): "degenerative",
}


def _clean(part: str) -> str:
    return " ".join(part.lower().split())


def term_to_group(entry: str) -> str:
    """Label group of one MeSH major entry ``Term/qualifier/...`` (``other`` when unmapped)."""
    parts = [_clean(p) for p in str(entry).split("/")]
    term, qualifiers = parts[0], parts[1:]
    for qualifier in qualifiers:
        group = _QUALIFIED_GROUP.get((term, qualifier))
        if group:
            return group
    return _TERM_GROUP.get(term, "other")


def mesh_to_labels(mesh_major: Iterable[str]) -> frozenset[str]:
    """Label set of a report from its MeSH major entries; empty entries are ignored (empty list -> {})."""
    return frozenset(term_to_group(e) for e in mesh_major if str(e).strip())


def label_matrix(label_sets: Sequence[frozenset[str]]) -> np.ndarray:
    """Multi-hot bool matrix (n_items, len(LABEL_GROUPS)) of ``label_sets``."""
    column = {g: i for i, g in enumerate(LABEL_GROUPS)}
    out = np.zeros((len(label_sets), len(LABEL_GROUPS)), dtype=bool)
    for row, labels in enumerate(label_sets):
        for label in labels:
            out[row, column[label]] = True
    return out


def label_match(
    query_labels: Sequence[frozenset[str]], candidate_labels: Sequence[frozenset[str]]
) -> np.ndarray:
    """Bool (n_queries, n_candidates): True where the two label sets intersect."""
    q = label_matrix(query_labels).astype(np.int32)
    c = label_matrix(candidate_labels).astype(np.int32)
    return (q @ c.T) > 0
