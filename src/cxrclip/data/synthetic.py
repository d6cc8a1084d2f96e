"""Open-i-format synthetic chest X-ray data: report XML + PNG archives + a manifest of expectations.

:func:`generate_openi` writes into ``out_dir``:

- ``NLMCXR_reports.tgz``: ``ecgen-radiology/<N>.xml`` in the NLM Open-i structure (root ``eCitation``,
  ``uId``/``pmcId``/``IUXRId``, ``MedlineCitation/Article/Abstract/AbstractText[@Label]``, ``MeSH``
  ``major``/``automatic`` terms, ``parentImage`` with ``figureId``, ``caption`` and ``panel/url``);
- ``NLMCXR_png.tgz``: top-level ``<parentImage id>.png`` members, 8-bit grayscale (mode ``L``);
- ``manifest.json``: what was generated and the exact expected outcome of parsing/verification.

Texts come from templates written for this project (several phrasings per finding; about half the
reports normal). Every image is a deterministic function of its report's findings plus a per-image
seed (mild shifts, contrast and noise). What each finding looks like (coordinates are fractions of
the image width x and height y; the patient's right is on the image's left on frontal views):

========================  =====================================================================
finding (label)           frontal / lateral appearance
========================  =====================================================================
normal                    two dark lung fields, bright mediastinum, heart ~0.26 W wide (frontal);
                          one dark lung field, heart anterior (left), spine posterior (lateral)
``cardiomegaly``          heart silhouette ~0.38 W (mild) / ~0.46 W (moderate) wide
``pleural_effusion``      bright fluid filling the lower lung field on that side, meniscus rising
                          laterally (frontal); posterior costophrenic angle filled (lateral)
``granuloma``             small (r ~0.014 H) very bright dot in the named lobe/zone
``nodule``                round bright blob (r ~0.03 H) in the named lobe/zone
``opacity``               large fuzzy bright patch (r ~0.07 H) in the named zone
``atelectasis``           thin bright horizontal band at the named lung base
``medical_device``        bright pacemaker box in the left upper chest with a lead to the heart
``catheter``              thin bright line from the right neck down to the upper mediastinum
``emphysema``             taller, darker lungs and a narrow heart
========================  =====================================================================

Output is byte-identical for identical arguments (``workers`` does not matter): tar members have
fixed order, mtime 0, uid/gid 0, and gzip headers carry mtime 0 and no file name.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import struct
import tarfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lxml import etree
from PIL import Image
from tqdm import tqdm

from cxrclip.data.io import atomic_path, write_json
from cxrclip.errors import CxrclipError

REPORTS_ARCHIVE = "NLMCXR_reports.tgz"
IMAGES_ARCHIVE = "NLMCXR_png.tgz"
MANIFEST = "manifest.json"
REPORT_DIR = "ecgen-radiology"
FULL_SCALE_REPORTS = 3955
FULL_SCALE_IMAGE_SIZE = 2048
#: Longer side (px) at which images are drawn; larger outputs are upscaled (bilinear) from it.
RENDER_MAX_SIDE = 512
#: zlib level of the PNGs: 4 is ~2x faster than 6 and within a few % of its size on these images.
PNG_COMPRESS_LEVEL = 4
#: Std of the per-pixel noise (fraction of full scale) added at the drawing resolution.
FINE_NOISE_SIGMA = 0.003
#: Width / height of each view (height = ``image_size``).
VIEW_ASPECT = {"frontal": 0.85, "lateral": 0.9}
#: Distinct reports that carry one fault each when ``faults=True``.
N_FAULT_REPORTS = 12
MIN_REPORTS_WITH_FAULTS = N_FAULT_REPORTS

LABELS = (
    "cardiomegaly", "pleural_effusion", "granuloma", "nodule", "opacity",
    "atelectasis", "medical_device", "catheter", "emphysema",
)
SIDES = ("right", "left")
ZONES = ("upper", "middle", "base")


# --------------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One abnormality: ``label`` (one of :data:`LABELS`), patient ``side``, lung ``zone``, ``severity``."""

    label: str
    side: str | None = None
    zone: str | None = None
    severity: str | None = None

    @property
    def mesh(self) -> str:
        """The MeSH major term written to the XML, e.g. ``Opacity/lung/base/left``."""
        if self.label == "cardiomegaly":
            return f"Cardiomegaly/{self.severity}"
        if self.label == "pleural_effusion":
            return f"Pleural Effusion/{self.side}"
        if self.label == "granuloma":
            return f"Calcified Granuloma/lung/{_mesh_zone(self)}/{self.side}"
        if self.label == "nodule":
            return f"Nodule/lung/{_mesh_zone(self)}/{self.side}"
        if self.label == "opacity":
            return f"Opacity/lung/{_mesh_zone(self)}/{self.side}"
        if self.label == "atelectasis":
            return f"Pulmonary Atelectasis/base/{self.side}"
        return {"medical_device": "Implanted Medical Device", "catheter": "Catheters, Indwelling",
                "emphysema": "Emphysema"}[self.label]

    @property
    def automatic(self) -> str:
        """The MeSH ``automatic`` term (lower-case heading without qualifiers)."""
        return self.mesh.split("/")[0].lower()


def _mesh_zone(f: Finding) -> str:
    if f.zone == "upper":
        return "upper lobe"
    if f.zone == "middle":
        return "middle lobe" if f.side == "right" else "lingula"
    return "base"


def _text_zone(f: Finding, rng: np.random.Generator) -> str:
    if f.zone == "upper":
        return _pick(rng, ["upper lobe", "upper lung zone", "apex"])
    if f.zone == "middle":
        return _pick(rng, ["midlung", "middle lobe" if f.side == "right" else "lingula"])
    return _pick(rng, ["lung base", "base", "lower lung zone"])


_FINDING_WEIGHTS = {
    "cardiomegaly": 0.20, "pleural_effusion": 0.12, "granuloma": 0.15, "nodule": 0.10,
    "opacity": 0.12, "atelectasis": 0.10, "medical_device": 0.06, "catheter": 0.05,
    "emphysema": 0.10,
}


def sample_findings(rng: np.random.Generator) -> tuple[Finding, ...]:
    """Draw 1-3 distinct abnormal findings (no label twice), sorted by label."""
    n = int(rng.choice([1, 2, 3], p=[0.55, 0.30, 0.15]))
    labels = list(_FINDING_WEIGHTS)
    weights = np.array([_FINDING_WEIGHTS[k] for k in labels])
    chosen = rng.choice(len(labels), size=n, replace=False, p=weights / weights.sum())
    out = []
    for idx in sorted(chosen):
        label = labels[idx]
        side = _pick(rng, list(SIDES))
        if label == "cardiomegaly":
            out.append(Finding(label, severity=_pick(rng, ["mild", "moderate"])))
        elif label == "pleural_effusion":
            out.append(Finding(label, side=side))
        elif label in ("granuloma", "nodule"):
            out.append(Finding(label, side=side, zone=_pick(rng, list(ZONES))))
        elif label == "opacity":
            out.append(Finding(label, side=side, zone=_pick(rng, ["upper", "base", "base"])))
        elif label == "atelectasis":
            out.append(Finding(label, side=side, zone="base"))
        else:
            out.append(Finding(label))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Report text (templates written for cxrclip; "XXXX" imitates Open-i's de-identification)
# --------------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


_HEART_OK = ["The heart is normal in size.", "Heart size is within normal limits.",
             "Normal cardiac silhouette.", "The cardiomediastinal silhouette is unremarkable."]
_LUNGS_OK = ["The lungs are clear.", "Lungs are clear bilaterally.", "No focal airspace disease.",
             "No focal consolidation is seen."]
_PLEURA_OK = ["No pleural effusion or pneumothorax.", "There is no effusion or pneumothorax.",
              "No XXXX of pleural effusion.", "Costophrenic angles are sharp."]
_BONES_OK = ["Osseous structures are intact.", "No acute bony abnormality.",
             "Visualized bones are unremarkable."]
_NORMAL_IMPRESSION = ["No acute cardiopulmonary disease.", "Normal chest.",
                      "No acute cardiopulmonary abnormality.", "No active disease.",
                      "Normal chest x-XXXX.", "Negative chest XXXX-ray.", "Clear lungs, no acute findings.",
                      "No radiographic evidence of acute disease."]
_INDICATIONS = ["Chest pain", "SOB", "Shortness of breath.", "Positive TB test", "Cough",
                "Cough and fever.", "Preoperative evaluation.", "XXXX-year-old male with chest pain.",
                "XXXX-year-old female, dyspnea.", "Hypertension", "Fall, rule out fracture.",
                "Routine screening."]
_RELATED_INDICATIONS = {
    "cardiomegaly": ["Heart failure follow-up.", "Edema of the legs"],
    "pleural_effusion": ["Dyspnea, decreased breath sounds.", "Effusion follow-up"],
    "granuloma": ["History of histoplasmosis", "Positive TB test"],
    "nodule": ["Nodule follow-up.", "Smoker, weight loss"],
    "opacity": ["Fever and productive cough.", "Pneumonia"],
    "atelectasis": ["Post-operative, low oxygen saturation.", "Cough"],
    "medical_device": ["Pacemaker check.", "Syncope, pacemaker"],
    "catheter": ["Line placement.", "Central line check"],
    "emphysema": ["COPD", "Smoker with dyspnea"],
}
_COMPARISONS = ["None.", "None.", "None.", "None", "No prior studies.", "Prior study available.",
                "None available.", "Prior XXXX", "XXXX, XXXX", "Chest radiograph XXXX."]
_CAPTIONS_MULTI = ["PA and lateral chest radiographs", "Chest x-XXXX, frontal and lateral views",
                   "Two-view chest radiograph", "Chest, PA and lateral"]
_CAPTIONS_SINGLE = ["Frontal chest radiograph", "Portable AP chest", "Single view of the chest"]


def _side(f: Finding, cap: bool = False) -> str:
    s = f.side or ""
    return s.capitalize() if cap else s


def _finding_sentence(f: Finding, rng: np.random.Generator) -> str:
    """One FINDINGS sentence describing ``f`` (several phrasings)."""
    s, z = _side(f), _text_zone(f, rng) if f.zone else ""
    if f.label == "cardiomegaly":
        if f.severity == "mild":
            return _pick(rng, ["The heart is mildly enlarged.", "Mild cardiomegaly is present.",
                               "Cardiac silhouette is mildly enlarged."])
        return _pick(rng, ["The heart is moderately enlarged.", "Moderate cardiomegaly.",
                           "Enlarged cardiac silhouette, moderate in degree."])
    if f.label == "pleural_effusion":
        return _pick(rng, [f"Small {s} pleural effusion blunting the costophrenic angle.",
                           f"There is a {s} pleural effusion.",
                           f"Blunting of the {s} costophrenic angle consistent with effusion."])
    if f.label == "granuloma":
        return _pick(rng, [f"Calcified granuloma in the {s} {z}.",
                           f"A small calcified nodule in the {s} {z}, likely granuloma.",
                           f"Punctate calcified granuloma, {s} {z}."])
    if f.label == "nodule":
        return _pick(rng, [f"Nodule in the {s} {z}.", f"There is a {s} {z} pulmonary nodule.",
                           f"Rounded density in the {s} {z} compatible with a nodule."])
    if f.label == "opacity":
        return _pick(rng, [f"Patchy opacity in the {s} {z}.", f"Airspace opacity at the {s} {z}.",
                           f"Hazy {s} {z} opacity."])
    if f.label == "atelectasis":
        return _pick(rng, [f"Linear atelectasis at the {s} base.",
                           f"Subsegmental atelectasis in the {s} lung base.",
                           f"Plate-like {s} basilar atelectasis."])
    if f.label == "medical_device":
        return _pick(rng, ["Left chest wall pacemaker with lead in the right ventricle.",
                           "Pacemaker generator projects over the left chest.",
                           "Cardiac device in the left upper chest with intact leads."])
    if f.label == "catheter":
        return _pick(rng, ["Right internal jugular catheter with tip in the SVC.",
                           "Central venous catheter from the right neck, tip in the upper SVC.",
                           "Indwelling right-sided central line."])
    return _pick(rng, ["Hyperinflated lungs with flattened diaphragms.",
                       "Hyperlucent, hyperexpanded lungs consistent with emphysema.",
                       "Emphysematous changes with increased lung volumes."])


def _impression_phrase(f: Finding, rng: np.random.Generator) -> str:
    """One IMPRESSION sentence summarising ``f``."""
    s, S, z = _side(f), _side(f, cap=True), _text_zone(f, rng) if f.zone else ""
    options = {
        "cardiomegaly": [f"{(f.severity or '').capitalize()} cardiomegaly.",
                         f"{(f.severity or '').capitalize()}ly enlarged heart."],
        "pleural_effusion": [f"{S} pleural effusion.", f"Small {s} effusion."],
        "granuloma": [f"Calcified {s} {z} granuloma.", f"Old granulomatous disease, {s} {z}."],
        "nodule": [f"{S} {z} nodule, CT recommended.", f"Pulmonary nodule in the {s} {z}."],
        "opacity": [f"{S} {z} opacity, possibly pneumonia.", f"{S} {z} airspace disease."],
        "atelectasis": [f"{S} basilar atelectasis.", f"Mild {s} base atelectasis."],
        "medical_device": ["Pacemaker in place.", "Implanted cardiac device."],
        "catheter": ["Central line in place.", "Right IJ catheter, no pneumothorax."],
        "emphysema": ["Emphysema.", "Hyperinflation consistent with COPD."],
    }[f.label]
    return _pick(rng, options)


def report_sections(findings: Sequence[Finding], rng: np.random.Generator) -> dict[str, str]:
    """COMPARISON/INDICATION/FINDINGS/IMPRESSION texts (raw, may hold ``XXXX``) for ``findings``.

    Normal reports (``findings`` empty) get normal negatives; abnormal ones describe each finding
    (side, zone, severity) and add negatives for untouched structures. About 10 % of reports have
    an empty FINDINGS, about 2 % an empty IMPRESSION (never both).
    """
    labels = {f.label for f in findings}
    sentences = [_finding_sentence(f, rng) for f in findings]
    if "cardiomegaly" not in labels:
        sentences.append(_pick(rng, _HEART_OK))
    if not labels & {"granuloma", "nodule", "opacity", "atelectasis", "emphysema"}:
        sentences.append(_pick(rng, _LUNGS_OK))
    if "pleural_effusion" not in labels:
        sentences.append(_pick(rng, _PLEURA_OK))
    if rng.random() < 0.4:
        sentences.append(_pick(rng, _BONES_OK))
    if findings:
        impression = " ".join(_impression_phrase(f, rng) for f in findings)
    else:
        impression = _pick(rng, _NORMAL_IMPRESSION)
    if findings and rng.random() < 0.4:
        indication = _pick(rng, _RELATED_INDICATIONS[findings[0].label])
    else:
        indication = _pick(rng, _INDICATIONS) if rng.random() > 0.05 else ""
    comparison = _pick(rng, _COMPARISONS) if rng.random() > 0.2 else ""
    findings_text = " ".join(sentences)
    roll = rng.random()
    if roll < 0.10:
        findings_text = ""
    elif roll < 0.12:
        impression = ""
    return {"comparison": comparison, "indication": indication, "findings": findings_text,
            "impression": impression}


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def image_shape(view: str, image_size: int) -> tuple[int, int]:
    """(height, width) in px of a ``view`` image whose longer side is ``image_size``."""
    return image_size, max(1, round(image_size * VIEW_ASPECT[view]))


class _Canvas:
    """Float32 drawing surface (H, W) in [0, 1] with jittered normalised coordinates.

    ``x`` (1, W) and ``y`` (H, 1) are fractions of the width/height after a small per-image
    shift and scale; ``aspect`` = W / H makes blobs round in pixels.
    """

    def __init__(self, h: int, w: int, rng: np.random.Generator) -> None:
        shift_x, shift_y = (float(v) for v in rng.uniform(-0.015, 0.015, size=2))
        scale = float(rng.uniform(0.97, 1.03))
        self.x = (((np.arange(w, dtype=np.float32) + 0.5) / w - 0.5 - shift_x) / scale + 0.5)[None, :]
        self.y = (((np.arange(h, dtype=np.float32) + 0.5) / h - 0.5 - shift_y) / scale + 0.5)[:, None]
        self.aspect = np.float32(w / h)
        self.img = np.full((h, w), 0.06, dtype=np.float32)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, soft: float) -> np.ndarray:
        """Mask (H, W) in [0, 1]: 1 inside the ellipse, fading over ``soft`` (radius fraction)."""
        d = np.sqrt(((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2)
        return np.clip((1.0 - d) / soft, 0.0, 1.0)

    def blob(self, cx: float, cy: float, r: float, soft: float = 0.35) -> np.ndarray:
        """Round (in pixels) disk mask of radius ``r`` (fraction of H) with a soft rim."""
        return self.ellipse(cx, cy, r / self.aspect, r, soft)

    def polyline(self, points: Sequence[tuple[float, float]], width: float) -> np.ndarray:
        """Mask of a line through ``points`` (x, y fractions), ``width`` a fraction of H."""
        px = self.x * self.aspect
        dist = None
        for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
            x0, x1 = x0 * self.aspect, x1 * self.aspect
            vx, vy = x1 - x0, y1 - y0
            t = np.clip(((px - x0) * vx + (self.y - y0) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
            d = np.hypot(px - x0 - t * vx, self.y - y0 - t * vy)
            dist = d if dist is None else np.minimum(dist, d)
        assert dist is not None
        return np.clip(1.0 - (dist - width / 2) / (width / 2), 0.0, 1.0)

    def paint(self, value: float, mask: np.ndarray) -> None:
        """Blend towards ``value`` where ``mask`` is 1 (in place)."""
        self.img += (value - self.img) * mask

    def add(self, amount: float, mask: np.ndarray) -> None:
        self.img += amount * mask


def _zone_y(zone: str | None) -> float:
    return {"upper": 0.29, "middle": 0.44, "base": 0.60}.get(zone or "middle", 0.44)


def _draw_frontal(c: _Canvas, findings: Sequence[Finding], rng: np.random.Generator,
                  spot_rng: np.random.Generator) -> None:
    labels = {f.label: f for f in findings}
    emph = "emphysema" in labels
    c.paint(0.50, c.ellipse(0.5, 0.60, 0.47, 0.64, 0.06))  # torso soft tissue
    c.paint(0.50, c.ellipse(0.5, 0.0, 0.13, 0.14, 0.2))  # neck
    lung_value, lung_ry = (0.08, 0.33) if emph else (0.18, 0.30)
    lung_cy = 0.46 if emph else 0.44
    jitter = float(rng.uniform(0.97, 1.03))
    lungs = {}
    for side, cx in (("right", 0.30), ("left", 0.70)):
        lungs[side] = c.ellipse(cx, lung_cy, 0.16 * jitter, lung_ry * jitter, 0.12)
        c.paint(lung_value, lungs[side])
    lung_any = np.maximum(lungs["right"], lungs["left"])
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (c.y * 9.0 + 3.0 * (c.x - 0.5) ** 2))
    c.add(0.05, ribs * lung_any)
    c.paint(0.72, c.ellipse(0.5, 0.33, 0.075, 0.32, 0.3))  # mediastinum
    c.add(0.06, c.ellipse(0.5, 0.5, 0.025, 0.6, 0.5))  # spine
    for sign in (-1, 1):  # clavicles
        c.add(0.16, c.polyline([(0.5 + sign * 0.05, 0.17), (0.5 + sign * 0.30, 0.12)], 0.022))
    heart_rx = {"mild": 0.19, "moderate": 0.23}.get(
        labels["cardiomegaly"].severity if "cardiomegaly" in labels else "", 0.13)
    if emph and "cardiomegaly" not in labels:
        heart_rx = 0.11
    heart_rx += float(rng.uniform(-0.006, 0.006))
    heart_ry = 0.12 + (heart_rx - 0.13) * 0.5
    c.paint(0.78, c.ellipse(0.535 + (heart_rx - 0.13) * 0.4, 0.63, heart_rx, heart_ry, 0.2))
    for f in findings:
        cx = 0.30 if f.side == "right" else 0.70
        ox, oy = (float(v) for v in spot_rng.uniform(-0.025, 0.025, size=2))
        if f.label == "pleural_effusion":
            lateral = np.clip(np.abs(c.x - 0.5) / 0.35, 0.0, 1.0)
            level = 0.60 - 0.10 * lateral
            fluid = np.clip((c.y - level) / 0.015, 0.0, 1.0)
            c.paint(0.70, fluid * lungs[f.side or "right"])
        elif f.label == "granuloma":
            c.paint(0.97, c.blob(cx + ox, _zone_y(f.zone) + oy, 0.014, 0.3))
        elif f.label == "nodule":
            c.add(0.34, c.blob(cx + ox, _zone_y(f.zone) + oy, 0.03, 0.45))
        elif f.label == "opacity":
            y0 = _zone_y(f.zone) + oy
            ox += (cx - 0.5) * 0.15  # keep basal patches lateral to the heart
            c.add(0.30, c.blob(cx + ox, y0, 0.07, 0.8))
            c.add(0.16, c.blob(cx + ox + 0.04, y0 + 0.02, 0.045, 0.8))
        elif f.label == "atelectasis":
            tilt = 0.12 if f.side == "right" else -0.12
            band = np.clip((1.0 - np.abs((c.y - 0.62 - oy * 0.3) - tilt * (c.x - cx)) / 0.014), 0, 1)
            c.add(0.40, band * c.ellipse(cx, 0.62, 0.09, 0.05, 0.3))
        elif f.label == "medical_device":
            box = np.clip((0.05 - np.abs(c.x - 0.74)) / 0.006, 0, 1) * \
                np.clip((0.032 - np.abs(c.y - 0.17)) / 0.006, 0, 1)
            c.paint(0.98, box)
            c.paint(0.95, c.polyline([(0.72, 0.19), (0.62, 0.30), (0.56, 0.50), (0.58, 0.66)], 0.008))
        elif f.label == "catheter":
            c.paint(0.93, c.polyline([(0.36, 0.0), (0.40, 0.14), (0.46, 0.28), (0.47, 0.42)], 0.008))


def _draw_lateral(c: _Canvas, findings: Sequence[Finding], rng: np.random.Generator,
                  spot_rng: np.random.Generator) -> None:
    labels = {f.label: f for f in findings}
    emph = "emphysema" in labels
    c.paint(0.50, c.ellipse(0.5, 0.60, 0.46, 0.64, 0.06))  # torso
    c.paint(0.50, c.ellipse(0.55, 0.0, 0.16, 0.14, 0.2))  # neck
    jitter = float(rng.uniform(0.97, 1.03))
    lung = c.ellipse(0.49 if emph else 0.52, 0.46 if emph else 0.44,
                     (0.33 if emph else 0.30) * jitter, (0.34 if emph else 0.31) * jitter, 0.12)
    c.paint(0.08 if emph else 0.22, lung)
    c.add(0.04, (0.5 + 0.5 * np.cos(2 * np.pi * (c.y * 8.0 - 1.5 * c.x))) * lung)
    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * c.y * 14.0) ** 2
    c.paint(0.74, c.ellipse(0.82, 0.55, 0.06, 0.55, 0.15) * vertebrae)  # spine (posterior)
    c.paint(0.70, c.polyline([(0.19, 0.16), (0.16, 0.62)], 0.02))  # sternum (anterior)
    heart_rx = {"mild": 0.21, "moderate": 0.25}.get(
        labels["cardiomegaly"].severity if "cardiomegaly" in labels else "", 0.15)
    if emph and "cardiomegaly" not in labels:
        heart_rx = 0.12
    heart_rx += float(rng.uniform(-0.006, 0.006))
    heart_ry = 0.14 + (heart_rx - 0.15) * 0.5
    c.paint(0.74, c.ellipse(0.36 + (heart_rx - 0.15) * 0.5, 0.62, heart_rx, heart_ry, 0.2))
    for f in findings:
        ox, oy = (float(v) for v in spot_rng.uniform(-0.02, 0.02, size=2))
        x_zone = {"upper": 0.52, "middle": 0.55, "base": 0.62}.get(f.zone or "middle", 0.55)
        if f.label == "pleural_effusion":
            post = np.clip((c.x - 0.55) / 0.03, 0, 1)
            level = 0.64 - 0.10 * np.clip((c.x - 0.55) / 0.25, 0, 1)
            c.paint(0.68, np.clip((c.y - level) / 0.015, 0, 1) * post * lung)
        elif f.label == "granuloma":
            c.paint(0.97, c.blob(x_zone + ox, _zone_y(f.zone) + oy, 0.014, 0.3))
        elif f.label == "nodule":
            c.add(0.32, c.blob(x_zone + ox, _zone_y(f.zone) + oy, 0.03, 0.45))
        elif f.label == "opacity":
            c.add(0.26, c.blob(x_zone + ox, _zone_y(f.zone) + oy, 0.07, 0.8))
        elif f.label == "atelectasis":
            band = np.clip(1.0 - np.abs(c.y - 0.63 - oy * 0.3 - 0.1 * (c.x - 0.6)) / 0.014, 0, 1)
            c.add(0.38, band * c.ellipse(0.6, 0.63, 0.12, 0.05, 0.3))
        elif f.label == "medical_device":
            box = np.clip((0.045 - np.abs(c.x - 0.24)) / 0.006, 0, 1) * \
                np.clip((0.02 - np.abs(c.y - 0.19)) / 0.005, 0, 1)
            c.paint(0.98, box)
            c.paint(0.95, c.polyline([(0.26, 0.2), (0.34, 0.40), (0.30, 0.64)], 0.008))
        elif f.label == "catheter":
            c.paint(0.93, c.polyline([(0.47, 0.0), (0.44, 0.22), (0.40, 0.40)], 0.008))


def render_image(findings: Sequence[Finding], view: str, image_size: int,
                 seed: int | Sequence[int]) -> np.ndarray:
    """Draw one chest-X-ray-like image: uint8 array (H, W), H = ``image_size``, W per :data:`VIEW_ASPECT`.

    Deterministic in (``findings``, ``view``, ``image_size``, ``seed``); ``seed`` only moves things
    slightly (shift/scale <= 3 %, sizes, contrast, smooth noise), never what the findings show;
    the same ``seed`` with and without a finding gives images that differ only where it is drawn.
    Drawn at most :data:`RENDER_MAX_SIDE` px tall, then upscaled bilinearly.
    """
    if view not in VIEW_ASPECT:
        raise CxrclipError(f"unknown view {view!r}; expected one of {sorted(VIEW_ASPECT)}")
    # two streams: findings draw their small offsets from their own, so an image with a finding
    # differs from the normal image of the same seed only where the finding is drawn
    rng, spot_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    out_h, out_w = image_shape(view, image_size)
    h = min(out_h, RENDER_MAX_SIDE)
    w = max(1, round(h * VIEW_ASPECT[view]))
    c = _Canvas(h, w, rng)
    (_draw_frontal if view == "frontal" else _draw_lateral)(c, findings, rng, spot_rng)
    coarse = rng.normal(0.0, 0.025, size=(6, 5)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BILINEAR))
    contrast, brightness = float(rng.uniform(0.93, 1.07)), float(rng.uniform(-0.03, 0.03))
    img = (c.img + smooth) * contrast + brightness
    img += rng.normal(0.0, FINE_NOISE_SIGMA, size=img.shape).astype(np.float32)
    pixels = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    pil = Image.fromarray(pixels, mode="L")
    if (h, w) != (out_h, out_w):
        pil = pil.resize((out_w, out_h), Image.BILINEAR)
    return np.asarray(pil)


def encode_png(pixels: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """uint8 (H, W) -> PNG bytes (mode ``L``, no metadata)."""
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _render_png_task(task: tuple[tuple[Finding, ...], str, int, tuple[int, ...]]) -> bytes:
    findings, view, size, seed = task
    return encode_png(render_image(findings, view, size, seed))


def decompression_bomb_png(side: int = 16384) -> bytes:
    """A valid all-black 1-bit PNG of ``side`` x ``side`` px (~33 kB; 268 Mpx for the default)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)
    idat = zlib.compress(row * side, 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


NOT_AN_IMAGE_BYTES = b"<!DOCTYPE html>\n<html><body><h1>404 Not Found</h1></body></html>\n"


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------
@dataclass
class SyntheticReport:
    """A generated report before serialisation. ``views[i]`` is the view of ``image_ids[i]``."""

    number: int
    findings: tuple[Finding, ...]
    sections: dict[str, str]
    image_ids: list[str]
    views: list[str]
    caption: str
    xml_mode: str = "plain"  # plain | malformed | xxe | billion_laughs

    @property
    def report_id(self) -> str:
        return f"CXR{self.number}"

    @property
    def source_file(self) -> str:
        return f"{REPORT_DIR}/{self.number}.xml"

    @property
    def mesh_major(self) -> list[str]:
        return [f.mesh for f in self.findings] or ["normal"]

    @property
    def mesh_automatic(self) -> list[str]:
        return list(dict.fromkeys(f.automatic for f in self.findings))

    @property
    def labels(self) -> list[str]:
        return sorted({f.label for f in self.findings})


def _image_ids(number: int, views: list[str], rng: np.random.Generator) -> list[str]:
    series = int(rng.integers(1, 10000))
    suffixes = rng.permutation([1001, 2001, 3001, 4001])[: len(views)]
    return [f"CXR{number}_1_IM-{series:04d}-{int(s):04d}" for s in suffixes]


def make_report(number: int, seed: int) -> SyntheticReport:
    """Report ``number`` for ``seed``: independent of how many reports are generated."""
    rng = np.random.default_rng([seed, number])
    findings = () if rng.random() < 0.5 else sample_findings(rng)
    sections = report_sections(findings, rng)
    n_images = int(rng.choice([1, 2, 3], p=[0.13, 0.85, 0.02]))
    views = ["frontal", "lateral", _pick(rng, ["frontal", "lateral"])][:n_images]
    if n_images == 2 and rng.random() < 0.25:
        views = views[::-1]
    caption = _pick(rng, _CAPTIONS_MULTI if n_images > 1 else _CAPTIONS_SINGLE)
    return SyntheticReport(number, findings, sections, _image_ids(number, views, rng), views, caption)


def image_seed(seed: int, number: int, index: int) -> tuple[int, int, int, int]:
    """Per-image seed: report ``number``'s ``index``-th image."""
    return (seed, number, index, 1)


_PLACEHOLDER = "\ue000ENTITY\ue000"
_XXE_DOCTYPE = '<!DOCTYPE eCitation [<!ENTITY xxe SYSTEM "file:///etc/hostname">]>'
_LAUGHS_DOCTYPE = (
    "<!DOCTYPE eCitation [\n"
    '  <!ENTITY lol "lol">\n'
    '  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n'
    '  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">\n'
    '  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">\n'
    "]>"
)


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    el = etree.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def report_xml(rep: SyntheticReport) -> bytes:
    """Serialise ``rep`` as an Open-i ``eCitation`` document (UTF-8, with XML declaration).

    ``xml_mode`` ``malformed`` drops the first ``</AbstractText>``; ``xxe`` / ``billion_laughs``
    add a DOCTYPE and put ``&xxe;`` / ``&lol3;`` where FINDINGS holds the entity placeholder.
    """
    root = etree.Element("eCitation")
    _sub(root, "meta", type="rr")
    _sub(root, "uId", id=rep.report_id)
    _sub(root, "pmcId", id=str(rep.number))
    _sub(root, "docSource", "CXR")
    _sub(root, "IUXRId", id=str(rep.number))
    _sub(root, "licenseType", "open-access")
    _sub(root, "licenseURL", "http://creativecommons.org/licenses/by-nc-nd/4.0/")
    _sub(root, "ccLicense", "byncnd")
    _sub(root, "articleURL")
    _sub(root, "articleDate", "2013-08-01")
    _sub(root, "articleType", "XR")
    _sub(root, "publisher", "Indiana University")
    _sub(root, "title", "Indiana University Chest X-ray Collection")
    _sub(root, "note", "Synthetic record generated by cxrclip; not patient data.")
    _sub(root, "specialty", "pulmonary diseases")
    _sub(root, "subset", "CXR")
    medline = _sub(root, "MedlineCitation", Owner="Indiana University", Status="supplied by publisher")
    article = _sub(medline, "Article", PubModel="Electronic")
    date = _sub(_sub(_sub(article, "Journal"), "JournalIssue"), "PubDate")
    for tag, value in (("Year", "2013"), ("Month", "08"), ("Day", "01")):
        _sub(date, tag, value)
    _sub(article, "ArticleTitle", "Indiana University Chest X-ray Collection")
    abstract = _sub(article, "Abstract")
    for label in ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"):
        text = rep.sections[label.lower()]
        _sub(abstract, "AbstractText", text or None, Label=label)
    _sub(article, "Affiliation", "Indiana University")
    author = _sub(_sub(article, "AuthorList", CompleteYN="Y"), "Author", ValidYN="Y")
    _sub(author, "LastName", "Synthetic")
    _sub(author, "ForeName", "Reader")
    _sub(author, "Initials", "SR")
    _sub(article, "Language", "eng")
    _sub(_sub(article, "PublicationTypeList"), "PublicationType", "Radiology Report")
    adate = _sub(article, "ArticleDate")
    for tag, value in (("Year", "2013"), ("Month", "08"), ("Day", "01")):
        _sub(adate, tag, value)
    _sub(_sub(medline, "MedlineJournalInfo"), "NlmUniqueID")
    mesh = _sub(root, "MeSH")
    for term in rep.mesh_major:
        _sub(mesh, "major", term)
    for term in rep.mesh_automatic:
        _sub(mesh, "automatic", term)
    for k, image_id in enumerate(rep.image_ids, start=1):
        parent = _sub(root, "parentImage", id=image_id)
        _sub(parent, "figureId", f"F{k}")
        _sub(parent, "caption", rep.caption)
        panel = _sub(parent, "panel", type="single")
        _sub(panel, "url", f"/hadoop/storage/radiology/extract/{image_id}.jpg")
    data = etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True)
    if rep.xml_mode == "malformed":
        data = data.replace(b"</AbstractText>", b"", 1)
    elif rep.xml_mode in ("xxe", "billion_laughs"):
        doctype, ref = (_XXE_DOCTYPE, b"&xxe;") if rep.xml_mode == "xxe" else (_LAUGHS_DOCTYPE, b"&lol3;")
        decl, rest = data.split(b"\n", 1)
        data = decl + b"\n" + doctype.encode() + b"\n" + rest.replace(_PLACEHOLDER.encode(), ref)
    return data


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------
FAULT_SLOTS = (
    "truncated_png", "not_an_image", "decompression_bomb", "missing_image_with_other_valid",
    "only_image_missing", "malformed_xml", "no_findings_or_impression", "no_images",
    "xxe_entity", "billion_laughs", "odd_whitespace_unicode", "xxxx_redactions",
)
ODD_CHARACTERS = ["\t", "\u00a0", "  ", "\n", "\u00e9", "\u2013"]


def _ensure_views(rep: SyntheticReport, views: list[str], seed: int) -> None:
    rng = np.random.default_rng([seed, rep.number, 99])
    rep.views = views
    rep.image_ids = _image_ids(rep.number, views, rng)


def _apply_report_faults(reports: list[SyntheticReport], seed: int) -> dict[str, SyntheticReport]:
    """Assign one fault slot to each of :data:`N_FAULT_REPORTS` distinct reports; edit them in place."""
    rng = np.random.default_rng([seed, 0xFA])
    picks = rng.permutation(len(reports))[:N_FAULT_REPORTS]
    slot = {name: reports[int(i)] for name, i in zip(FAULT_SLOTS, picks, strict=True)}
    for name in ("truncated_png", "not_an_image", "decompression_bomb", "missing_image_with_other_valid"):
        if len(slot[name].views) < 2:
            _ensure_views(slot[name], ["frontal", "lateral"], seed)
            slot[name].caption = _CAPTIONS_MULTI[0]
    _ensure_views(slot["only_image_missing"], ["frontal"], seed)
    slot["only_image_missing"].caption = _CAPTIONS_SINGLE[0]
    slot["malformed_xml"].xml_mode = "malformed"
    slot["no_findings_or_impression"].sections.update(findings="", impression="")
    slot["no_images"].image_ids, slot["no_images"].views = [], []
    for name, mode in (("xxe_entity", "xxe"), ("billion_laughs", "billion_laughs")):
        rep = slot[name]
        rep.xml_mode = mode
        base = rep.sections["findings"] or "The lungs are clear."
        rep.sections["findings"] = f"{base} {_PLACEHOLDER} End of findings."
        if not rep.sections["impression"]:
            rep.sections["impression"] = "See findings."
    odd = slot["odd_whitespace_unicode"].sections
    words = (odd["findings"] or "The lungs are clear.").split(" ")
    separators = [" ", "\t", " ", "\u00a0", "  ", "\n"]
    odd["findings"] = words[0] + "".join(
        separators[i % len(separators)] + w for i, w in enumerate(words[1:])
    ) + " \u2013 Prior\u00a0r\u00e9sum\u00e9  reviewed.\nNo\tchange."
    odd["indication"] = "Chest pain \u2013 \u00e9valuation\u00a0 requested.\t"
    red = slot["xxxx_redactions"].sections
    red["impression"] = (red["impression"] + " Compared with prior x-XXXX; XXXX-ray otherwise stable.").strip()
    red["comparison"] = "XXXX, XXXX"
    return slot


def _manifest_sections(rep: SyntheticReport) -> dict[str, str]:
    ref = {"xxe": "&xxe;", "billion_laughs": "&lol3;"}.get(rep.xml_mode, "")
    return {k: v.replace(_PLACEHOLDER, ref) for k, v in rep.sections.items()}


# --------------------------------------------------------------------------------------------
# Deterministic archives
# --------------------------------------------------------------------------------------------
@dataclass
class _Entry:
    """A tar member to write: regular file (``data``), directory, or symlink (``link``)."""

    name: str
    data: bytes = b""
    kind: str = "file"  # file | dir | symlink
    link: str = ""


def _tarinfo(entry: _Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if entry.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif entry.kind == "symlink":
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.link
    else:
        info.mode, info.size = 0o644, len(entry.data)
    return info


def write_tgz(path: Path, entries: Iterator[_Entry], compresslevel: int = 6) -> dict[str, Any]:
    """Write ``entries`` in order to a reproducible ``.tgz`` (atomically); return sha256/bytes/members."""
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                  compresslevel=compresslevel, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for entry in entries:
                info = _tarinfo(entry)
                tar.addfile(info, io.BytesIO(entry.data) if entry.kind == "file" else None)
                n += 1
        digest = hashlib.sha256()
        with open(tmp, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        size = tmp.stat().st_size
    return {"sha256": digest.hexdigest(), "bytes": size, "members": n}


def _unsafe_entries(kind: str) -> list[_Entry]:
    """Members that must be refused: absolute path, ``..`` component, symlink (``kind`` xml|png)."""
    if kind == "xml":
        return [_Entry("/tmp/evil.xml", b"<eCitation/>\n"),
                _Entry("../evil.xml", b"<eCitation/>\n"),
                _Entry(f"{REPORT_DIR}/evil_link.xml", kind="symlink", link="/etc/passwd")]
    return [_Entry("/tmp/evil.png", NOT_AN_IMAGE_BYTES),
            _Entry("../evil_parent.png", NOT_AN_IMAGE_BYTES),
            _Entry("evil_link.png", kind="symlink", link="/etc/passwd")]


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
@dataclass
class _ImagePlan:
    image_id: str
    report_id: str | None
    view: str
    findings: tuple[Finding, ...]
    seed: tuple[int, ...]
    fault: str | None = None  # None | truncated | not_an_image | decompression_bomb | missing
    extra: dict[str, Any] = field(default_factory=dict)


def _resolve_workers(workers: int) -> int:
    if workers < 0:
        raise CxrclipError(f"workers must be >= 0 (0 = all cores), got {workers}")
    return workers or os.cpu_count() or 1


def _pngs(plans: list[_ImagePlan], image_size: int, workers: int, progress: bool) -> Iterator[bytes]:
    """PNG bytes of every plan (in order), rendered in ``workers`` processes."""
    tasks = [(p.findings, p.view, image_size, p.seed) for p in plans]
    bar = tqdm(total=len(tasks), desc="synth images", unit="img", disable=not progress)
    try:
        if workers <= 1 or len(tasks) < 8:
            for task in tasks:
                yield _render_png_task(task)
                bar.update()
        else:
            with multiprocessing.get_context().Pool(workers) as pool:
                for data in pool.imap(_render_png_task, tasks, chunksize=4):
                    yield data
                    bar.update()
    finally:
        bar.close()


def generate_openi(out_dir: Path, n_reports: int = 60, image_size: int = 256, faults: bool = False,
                   seed: int = 0, workers: int = 1, progress: bool = True) -> dict:
    """Write ``NLMCXR_reports.tgz``, ``NLMCXR_png.tgz`` and ``manifest.json`` into ``out_dir``.

    ``n_reports``: XML report files (``ecgen-radiology/1.xml`` .. ``<n>.xml``; >= 12 with faults);
    ``image_size``: longer (vertical) side of every PNG in px (frontal width 0.85x, lateral 0.9x);
    ``faults``: inject every documented fault (see the manifest's ``faults``); ``workers``:
    rendering processes (0 = all cores; output does not depend on it). Returns the manifest
    (plus ``elapsed_s``, which is not written to the file). Full scale (Open-i size) is
    ``n_reports=3955, image_size=2048``.

    Expectations follow the contract in ``docs/architecture.md``: a report excluded by parsing
    (malformed, no FINDINGS/IMPRESSION) leaves its PNGs in the archive, and no kept report names
    them, so they are expected as ``orphan_image`` with ``report_id`` null; the malformed report's
    exclusion has ``report_id`` null (its id cannot be read).
    """
    if n_reports < 1:
        raise CxrclipError(f"n_reports must be >= 1, got {n_reports}")
    if faults and n_reports < MIN_REPORTS_WITH_FAULTS:
        raise CxrclipError(f"faults=True needs n_reports >= {MIN_REPORTS_WITH_FAULTS} "
                           f"(one report per fault), got {n_reports}")
    if image_size < 32:
        raise CxrclipError(f"image_size must be >= 32 px, got {image_size}")
    workers = _resolve_workers(workers)
    out_dir = Path(out_dir)
    started = time.perf_counter()

    reports = [make_report(n, seed) for n in range(1, n_reports + 1)]
    slot = _apply_report_faults(reports, seed) if faults else {}
    fault_of = {id(rep): name for name, rep in slot.items()}

    # ---- image plans (archive order: report order, then the orphan) -------------------------
    plans: list[_ImagePlan] = []
    for rep in reports:
        for k, (image_id, view) in enumerate(zip(rep.image_ids, rep.views, strict=True)):
            plans.append(_ImagePlan(image_id, rep.report_id, view, rep.findings,
                                    image_seed(seed, rep.number, k)))
    by_id = {p.image_id: p for p in plans}
    if faults:
        second = {name: slot[name].image_ids[1] for name in
                  ("truncated_png", "not_an_image", "decompression_bomb", "missing_image_with_other_valid")}
        by_id[second["truncated_png"]].fault = "truncated"
        by_id[second["not_an_image"]].fault = "not_an_image"
        by_id[second["decompression_bomb"]].fault = "decompression_bomb"
        by_id[second["missing_image_with_other_valid"]].fault = "missing"
        by_id[slot["only_image_missing"].image_ids[0]].fault = "missing"
        orphan_number = n_reports + 1
        plans.append(_ImagePlan(f"CXR{orphan_number}_1_IM-9999-1001", None, "frontal", (),
                                image_seed(seed, orphan_number, 0), fault="orphan"))

    # ---- expectations ---------------------------------------------------------------------
    excluded_reason = {
        id(slot["malformed_xml"]): "malformed_xml",
        id(slot["no_findings_or_impression"]): "no_findings_or_impression",
        id(slot["no_images"]): "no_images",
    } if faults else {}
    kept = [r for r in reports if id(r) not in excluded_reason]
    kept_ids = {r.report_id for r in kept}
    report_exclusions = [
        {"report_id": None if excluded_reason[id(r)] == "malformed_xml" else r.report_id,
         "source_file": r.source_file, "reason": excluded_reason[id(r)]}
        for r in reports if id(r) in excluded_reason
    ]
    image_exclusions: list[dict[str, Any]] = []
    image_ids_ok: list[str] = []
    for p in plans:
        owner = p.report_id if p.report_id in kept_ids else None
        path = None if p.fault == "missing" else f"{p.image_id}.png"
        if p.fault in ("truncated", "not_an_image", "decompression_bomb"):
            reason = p.fault
        elif p.fault == "missing":
            reason = "missing_image"
        elif owner is None:
            reason = "orphan_image"  # the orphan, and images of excluded reports
        else:
            image_ids_ok.append(p.image_id)
            continue
        image_exclusions.append({"image_id": p.image_id, "report_id": owner, "path": path,
                                 "reason": reason})
    if faults:
        unsafe_xml, unsafe_png = _unsafe_entries("xml"), _unsafe_entries("png")
        report_exclusions += [{"report_id": None, "source_file": e.name, "reason": "unsafe_member"}
                              for e in unsafe_xml]
        image_exclusions += [{"image_id": Path(e.name).stem, "report_id": None, "path": e.name,
                              "reason": "unsafe_member"} for e in unsafe_png]
    else:
        unsafe_xml, unsafe_png = [], []

    # ---- reports archive --------------------------------------------------------------------
    def report_entries() -> Iterator[_Entry]:
        yield _Entry(f"{REPORT_DIR}/", kind="dir")
        half = len(reports) // 2
        for i, rep in enumerate(reports):
            if i == half:
                yield from unsafe_xml
            yield _Entry(rep.source_file, report_xml(rep))

    out_dir.mkdir(parents=True, exist_ok=True)
    reports_info = write_tgz(out_dir / REPORTS_ARCHIVE, report_entries(), compresslevel=9)

    # ---- images archive ---------------------------------------------------------------------
    to_render = [p for p in plans if p.fault not in ("missing", "not_an_image", "decompression_bomb")]
    n_written = 0

    def image_entries() -> Iterator[_Entry]:
        nonlocal n_written
        rendered = _pngs(to_render, image_size, workers, progress)
        half = len(plans) // 2
        for i, p in enumerate(plans):
            if i == half:
                yield from unsafe_png
            if p.fault == "missing":
                continue
            if p.fault == "not_an_image":
                data = NOT_AN_IMAGE_BYTES
            elif p.fault == "decompression_bomb":
                data = decompression_bomb_png()
            else:
                data = next(rendered)
                if p.fault == "truncated":
                    p.extra["full_bytes"] = len(data)
                    data = data[: len(data) // 2]
            n_written += 1
            yield _Entry(f"{p.image_id}.png", data)
        assert next(rendered, None) is None

    images_info = write_tgz(out_dir / IMAGES_ARCHIVE, image_entries(), compresslevel=1)

    # ---- manifest ---------------------------------------------------------------------------
    fault_details: dict[str, Any] = {}
    if faults:
        def img_fault(name: str, reason: str) -> dict[str, Any]:
            rep = slot[name]
            return {"report_id": rep.report_id, "image_id": rep.image_ids[1], "reason": reason,
                    "other_valid_image_id": rep.image_ids[0]}

        trunc = img_fault("truncated_png", "truncated")
        trunc["full_bytes"] = by_id[trunc["image_id"]].extra["full_bytes"]
        trunc["written_bytes"] = trunc["full_bytes"] // 2
        fault_details = {
            "truncated_png": trunc,
            "not_an_image": img_fault("not_an_image", "not_an_image"),
            "decompression_bomb": {**img_fault("decompression_bomb", "decompression_bomb"),
                                   "width": 16384, "height": 16384, "pixels": 16384 * 16384},
            "missing_image": img_fault("missing_image_with_other_valid", "missing_image"),
            "report_without_valid_image": {
                "report_id": slot["only_image_missing"].report_id,
                "image_id": slot["only_image_missing"].image_ids[0], "reason": "missing_image",
                "expect": "kept by parse_reports; its only image is missing, so it has no valid image"},
            "orphan_image": {"image_id": plans[-1].image_id, "reason": "orphan_image"},
            "malformed_xml": {"source_file": slot["malformed_xml"].source_file,
                              "report_id": None, "intended_report_id": slot["malformed_xml"].report_id,
                              "reason": "malformed_xml", "detail": "first </AbstractText> removed"},
            "no_findings_or_impression": {"report_id": slot["no_findings_or_impression"].report_id,
                                          "source_file": slot["no_findings_or_impression"].source_file,
                                          "reason": "no_findings_or_impression"},
            "no_images": {"report_id": slot["no_images"].report_id,
                          "source_file": slot["no_images"].source_file, "reason": "no_images"},
            "xxe_entity": {"report_id": slot["xxe_entity"].report_id, "entity": "xxe",
                           "system_id": "file:///etc/hostname", "section": "findings",
                           "expect": "kept; entity not resolved (no file content in any text)"},
            "billion_laughs": {"report_id": slot["billion_laughs"].report_id, "entity": "lol3",
                               "expanded_length": 3000, "section": "findings",
                               "expect": "kept; entities not expanded (no 'lollol' in any text)"},
            "odd_whitespace_unicode": {"report_id": slot["odd_whitespace_unicode"].report_id,
                                       "sections": ["findings", "indication"],
                                       "characters": ODD_CHARACTERS},
            "xxxx_redactions": {
                "report_id": slot["xxxx_redactions"].report_id,
                "expect": "cleaned text has no 'XXXX' (also inside words: x-XXXX, XXXX-ray)",
                "report_ids_with_xxxx": sorted(
                    (r.report_id for r in kept if any("XXXX" in v for v in r.sections.values())),
                    key=lambda s: int(s[3:])),
            },
            "unsafe_members": {
                "reports": [{"name": e.name, "kind": e.kind} for e in unsafe_xml],
                "images": [{"name": e.name, "kind": e.kind} for e in unsafe_png],
                "reason": "unsafe_member",
            },
        }
    images_meta: dict[str, Any] = {}
    for p in plans:
        h, w = image_shape(p.view, image_size)
        images_meta[p.image_id] = {
            "report_id": p.report_id, "view": p.view,
            "width": 16384 if p.fault == "decompression_bomb" else (0 if p.fault in ("missing", "not_an_image") else w),
            "height": 16384 if p.fault == "decompression_bomb" else (0 if p.fault in ("missing", "not_an_image") else h),
            "in_archive": p.fault != "missing", "fault": p.fault,
        }
    manifest: dict[str, Any] = {
        "generator": "cxrclip.data.synthetic",
        "params": {"n_reports": n_reports, "image_size": image_size, "faults": faults, "seed": seed},
        "n_reports": n_reports,
        "n_images": n_written,
        "reports": {
            r.report_id: {
                "source_file": r.source_file, "findings_labels": r.labels,
                "findings": [{"label": f.label, "side": f.side, "zone": f.zone,
                              "severity": f.severity, "mesh": f.mesh} for f in r.findings],
                "is_normal": r.mesh_major == ["normal"], "image_ids": list(r.image_ids),
                "views": list(r.views), "mesh_major": r.mesh_major,
                "mesh_automatic": r.mesh_automatic, "sections": _manifest_sections(r),
                "kept": r.report_id in kept_ids, "fault": fault_of.get(id(r)),
            } for r in reports
        },
        "images": images_meta,
        "expected": {
            "report_ids_kept": [r.report_id for r in kept],
            "report_exclusions": report_exclusions,
            "image_ids_ok": image_ids_ok,
            "image_exclusions": image_exclusions,
        },
        "faults": fault_details,
        "archives": {REPORTS_ARCHIVE: reports_info, IMAGES_ARCHIVE: images_info},
    }
    write_json(manifest, out_dir / MANIFEST)
    manifest["elapsed_s"] = round(time.perf_counter() - started, 3)  # not written: keeps the file reproducible
    return manifest


def load_manifest(out_dir: Path) -> dict[str, Any]:
    """Read ``manifest.json`` written by :func:`generate_openi`."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        raise CxrclipError(f"{path} not found (run `cxrclip synth` first)")
    return json.loads(path.read_text())


__all__ = [
    "Finding", "SyntheticReport", "decompression_bomb_png", "encode_png", "generate_openi",
    "image_seed", "image_shape", "load_manifest", "make_report", "render_image", "report_sections",
    "report_xml", "sample_findings", "write_tgz",
]
