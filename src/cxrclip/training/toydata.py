"""Generated image–report pairs in the pipeline's artifact formats, for trainer tests and benchmarks.

:func:`make_toy_dataset` writes ``pairs.parquet``, ``reports.parquet`` (the columns training and
validation read) and a uint8 (N, S, S) image cache. Each report has one finding class; its images
carry that class's pattern (the class is learnable from pixels) and its text one of the class's
phrasings. Not Open-i data and not a substitute for the synthetic Open-i archives of the offline demo.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrclip.data.io import atomic_path, write_parquet

#: class -> (MeSH major terms, report phrasings)
TOY_CLASSES: dict[str, tuple[list[str], list[str]]] = {
    "normal": (["normal"], ["No acute cardiopulmonary abnormality.", "Heart size normal. Lungs are clear."]),
    "cardiomegaly": (["Cardiomegaly/mild"], ["Cardiomegaly.", "The heart is enlarged. No effusion."]),
    "effusion": (["Pleural Effusion/right"], ["Right pleural effusion.", "Blunting of the right costophrenic angle."]),
    "opacity": (["Opacity/lung/left"], ["Left lower lobe opacity.", "Airspace opacity in the left lung base."]),
    "nodule": (["Nodule/lung/right/upper lobe"], ["Right upper lobe nodule.", "A small nodule in the right upper lung."]),
}


@dataclass(frozen=True)
class ToyPaths:
    """Where :func:`make_toy_dataset` wrote its files."""

    pairs: Path
    reports: Path
    cache: Path


def _chest(rng: np.random.Generator, size: int) -> np.ndarray:
    """A chest-like gray background: float (size, size) in [0, 255]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    lungs = np.exp(-(((xx - 0.3) / 0.14) ** 2 + ((yy - 0.5) / 0.3) ** 2)) + np.exp(
        -(((xx - 0.7) / 0.14) ** 2 + ((yy - 0.5) / 0.3) ** 2)
    )
    body = 150 - 70 * lungs + rng.normal(0, 12, (size, size))
    return body


def _blob(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))


def _draw(cls: str, rng: np.random.Generator, size: int) -> np.ndarray:
    img = _chest(rng, size)
    jitter = rng.normal(0, 0.02, 2)
    if cls == "cardiomegaly":
        img += 90 * _blob(size, 0.5 + jitter[0], 0.62 + jitter[1], 0.16)
    elif cls == "effusion":
        img[int(size * (0.72 + jitter[1])) :, : size // 2] += 80
    elif cls == "opacity":
        img += 80 * _blob(size, 0.72 + jitter[0], 0.62 + jitter[1], 0.08)
    elif cls == "nodule":
        img += 120 * _blob(size, 0.3 + jitter[0], 0.32 + jitter[1], 0.035)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_toy_dataset(
    out_dir: str | Path, n_reports: int = 60, image_size: int = 64, seed: int = 0, fractions=(0.7, 0.15, 0.15)
) -> ToyPaths:
    """Write a toy dataset of ``n_reports`` reports (1–2 images each, ``image_size`` px) to ``out_dir``.

    Splits are grouped by report in ``fractions`` (train, val, test) order.
    """
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    classes = list(TOY_CLASSES)
    reports, pairs, images = [], [], []
    n_train = int(round(fractions[0] * n_reports))
    n_val = int(round(fractions[1] * n_reports))
    for r in range(n_reports):
        cls = classes[r % len(classes)]
        mesh, phrasings = TOY_CLASSES[cls]
        text = phrasings[int(rng.integers(len(phrasings)))]
        report_id = f"CXR{r + 1}"
        split = "train" if r < n_train else "val" if r < n_train + n_val else "test"
        n_img = 1 + int(rng.integers(2))
        image_ids = [f"{report_id}_IM-{r:04d}-{k}" for k in range(n_img)]
        reports.append(
            {"report_id": report_id, "mesh_major": mesh, "image_ids": image_ids, "is_normal": cls == "normal",
             "text": text}
        )
        for k, image_id in enumerate(image_ids):
            pairs.append(
                {"pair_id": len(pairs), "image_id": image_id, "report_id": report_id, "cache_index": len(images),
                 "view": "frontal" if k == 0 else "lateral", "split": split, "is_normal": cls == "normal",
                 "text": text}
            )
            images.append(_draw(cls, rng, image_size))
    paths = ToyPaths(out / "pairs.parquet", out / "reports.parquet", out / "images.npy")
    write_parquet(pd.DataFrame(pairs), paths.pairs)
    write_parquet(pd.DataFrame(reports), paths.reports)
    with atomic_path(paths.cache) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.stack(images))
    return paths


#: A very small open_clip config for fast trainer tests (32 px images, 16-token texts, ~0.9 M params).
MICRO_MODEL = "cxrclip-micro-test"
MICRO_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


def register_micro_model() -> str:
    """Register :data:`MICRO_MODEL` with open_clip (idempotent); return its name."""
    import json
    import tempfile

    import open_clip

    if MICRO_MODEL not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="cxrclip-micro-"))
        (folder / f"{MICRO_MODEL}.json").write_text(json.dumps(MICRO_CONFIG))
        open_clip.add_model_config(folder)
    return MICRO_MODEL
