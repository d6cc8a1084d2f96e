"""CLIP embeddings of cached images and report texts, and cosine scores of one split.

Images come from the uint8 grayscale cache (``data/processed/images_224.npy``, shape (N, S, S)),
never from PNGs: rows are gathered in ascending order into a reusable (pinned on CUDA) buffer,
copied to the device and normalised there (:func:`cxrclip.models.factory.normalize_images`).
Results stay on the device until the end (no per-batch synchronisation), so on CUDA the host
gathers/tokenises batch k+1 while the GPU runs batch k; two pinned buffers alternate, each reused
only after its copy finished (CUDA event). A background prefetch thread was measured slower on CPU
(GIL contention with torch dispatch), so there is none. Embeddings are float32 and L2-normalised.

Determinism: same inputs and batch size give bit-identical outputs (deterministic algorithms are
switched on while embedding; the model runs in eval mode). Results for different batch sizes agree
to float tolerance (max abs difference 6e-8 measured on CPU, tiny model). Autocast bf16 on CUDA only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrclip.data.io import atomic_path
from cxrclip.errors import CxrclipError
from cxrclip.evaluation.candidates import build_candidates, scores_dict, sort_pairs
from cxrclip.models.factory import ClipBundle, normalize_images, resolve_device


def embed_dim(model: torch.nn.Module) -> int:
    """Output dimension D of an open_clip model's image/text embeddings."""
    visual = getattr(model, "visual", None)
    dim = getattr(visual, "output_dim", None)
    if dim is None:
        projection = getattr(model, "text_projection", None)
        dim = projection.shape[-1] if isinstance(projection, torch.Tensor) else None
    if dim is None:
        raise CxrclipError(f"cannot tell the embedding size of model {type(model).__name__}")
    return int(dim)


def _as_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


@contextmanager
def _inference(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode, deterministic algorithms, ``inference_mode`` and (CUDA only) bf16 autocast.

    Deterministic mode would also fill every fresh ``torch.empty`` with NaN (measured 4-5% of CPU
    time on ViT-B-32); that fill is switched off since every buffer here is written before use.
    Restores the model's training flag and the global settings afterwards.
    """
    import torch.utils.deterministic as deterministic

    if device.type == "cuda":  # deterministic cuBLAS; only effective before the first cuBLAS call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was_training = model.training
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = deterministic.fill_uninitialized_memory
    model.eval()
    torch.use_deterministic_algorithms(True, warn_only=True)
    deterministic.fill_uninitialized_memory = False
    try:
        with torch.inference_mode(), torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
        ):
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        deterministic.fill_uninitialized_memory = prev_fill
        model.train(was_training)


def _model_on(bundle: ClipBundle, device: torch.device) -> torch.nn.Module:
    """``bundle.model`` moved to ``device`` (in place, only when it lives elsewhere)."""
    param = next(bundle.model.parameters())
    if param.device.type != device.type or (
        device.index is not None and param.device.index != device.index
    ):
        bundle.model.to(device)
    return bundle.model


def _batches(n: int, batch_size: int) -> list[tuple[int, int, int]]:
    """``(batch_number, start, stop)`` for ``n`` items in batches of ``batch_size``."""
    if batch_size < 1:
        raise CxrclipError(f"embed.batch_size must be >= 1, got {batch_size}")
    return [(k, start, min(start + batch_size, n)) for k, start in enumerate(range(0, n, batch_size))]


def _check_cache(cache: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Validate the image cache and row indices; return indices as int64 (n,)."""
    if cache.ndim != 3 or cache.dtype != np.uint8 or cache.shape[1] != cache.shape[2]:
        raise CxrclipError(
            f"image cache must be uint8 with shape (N, S, S); got {cache.dtype} {tuple(cache.shape)}"
        )
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise CxrclipError(f"image indices must be a 1-D integer array; got {idx.dtype} {idx.shape}")
    idx = idx.astype(np.int64, copy=False)
    bad = idx[(idx < 0) | (idx >= cache.shape[0])]
    if bad.size:
        raise CxrclipError(
            f"{bad.size} image index(es) outside the cache's rows [0, {cache.shape[0]}), e.g. "
            f"{bad[:5].tolist()} (-1 marks an image that failed verification; rebuild pairs/cache)"
        )
    return idx


def embed_images(
    bundle: ClipBundle,
    cache: np.ndarray,
    indices: np.ndarray,
    batch_size: int,
    device: str | torch.device,
    progress: bool = True,
) -> np.ndarray:
    """Embed cache rows ``indices`` (int, (n,), any order, repeats allowed) -> float32 (n, D), L2-normalised.

    ``cache``: uint8 (N, S, S) grayscale, typically ``np.load(path, mmap_mode="r")``. Rows are read
    once each, in ascending order; row ``i`` of the result belongs to ``indices[i]``.
    """
    idx = _check_cache(cache, indices)
    dev = _as_device(device)
    model = _model_on(bundle, dev)
    dim = embed_dim(model)
    rows, inverse = np.unique(idx, return_inverse=True)  # ascending, contiguous reads
    if rows.size == 0:
        return np.zeros((0, dim), dtype=np.float32)
    side = cache.shape[1]
    batches = _batches(rows.size, batch_size)
    width = min(batch_size, rows.size)
    on_cuda = dev.type == "cuda"
    # Two host buffers alternate; on CUDA they are pinned and one is refilled only after the
    # asynchronous copy that last read it has finished (an unrecorded event syncs as a no-op).
    buffers = [torch.empty((width, side, side), dtype=torch.uint8, pin_memory=on_cuda) for _ in range(2)]
    copied = [torch.cuda.Event() for _ in range(2)] if on_cuda else []
    size = bundle.image_size
    normalised = torch.empty((width, 3, size, size), dtype=torch.float32, device=dev)  # reused

    out = torch.empty((rows.size, dim), dtype=torch.float32, device=dev)
    with _inference(model, dev), tqdm(
        total=rows.size, unit="img", desc="embed images", disable=not progress
    ) as bar:
        for k, start, stop in batches:
            slot = k % 2
            if on_cuda:
                copied[slot].synchronize()
            host = buffers[slot][: stop - start]
            np.take(cache, rows[start:stop], axis=0, out=host.numpy())
            pixels = host.to(dev, non_blocking=True)
            if on_cuda:
                copied[slot].record()
            images = normalize_images(
                pixels, bundle.mean, bundle.std, size, out=normalised[: stop - start]
            )
            features = model.encode_image(images)
            out[start:stop] = torch.nn.functional.normalize(features.float(), dim=-1)
            bar.update(stop - start)
    return out.cpu().numpy()[inverse]


def embed_texts(
    bundle: ClipBundle,
    texts: list[str],
    batch_size: int,
    device: str | torch.device,
    progress: bool = True,
) -> np.ndarray:
    """Embed ``texts`` (m strings) -> float32 (m, D), L2-normalised.

    The model's tokenizer truncates each text to ``bundle.context_length`` tokens (EOT kept last).
    """
    texts = list(texts)
    not_str = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if not_str:
        raise CxrclipError(f"texts must be strings; item(s) {not_str[:5]} are not")
    dev = _as_device(device)
    model = _model_on(bundle, dev)
    dim = embed_dim(model)
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    batches = _batches(len(texts), batch_size)

    out = torch.empty((len(texts), dim), dtype=torch.float32, device=dev)
    with _inference(model, dev), tqdm(
        total=len(texts), unit="text", desc="embed texts", disable=not progress
    ) as bar:
        for _, start, stop in batches:
            tokens = bundle.tokenizer(texts[start:stop])
            features = model.encode_text(tokens.to(dev, non_blocking=True))
            out[start:stop] = torch.nn.functional.normalize(features.float(), dim=-1)
            bar.update(stop - start)
    return out.cpu().numpy()


def score_clip(
    bundle: ClipBundle,
    pairs_split: pd.DataFrame,
    cache: np.ndarray,
    batch_size: int,
    device: str | torch.device,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Cosine scores of every pair's image against every candidate text of one split.

    ``pairs_split``: the evaluated split's rows of ``pairs.parquet`` (needs ``pair_id``,
    ``cache_index``, ``text``). Returns ``(scores, embeddings)``: ``scores`` follows the
    ``scores.npz`` contract (``scores`` float32 (n_queries, n_candidates), ``pair_ids``,
    ``candidate_texts``, ``pair_text_idx``) plus ``info`` (JSON str: model, tokenizer and
    preprocessing facts); ``embeddings`` holds ``image`` (n_queries, D), ``text`` (n_candidates, D)
    float32, ``pair_ids`` int64 and the same ``info``.
    """
    missing = {"pair_id", "cache_index", "text"} - set(pairs_split.columns)
    if missing:
        raise CxrclipError(f"pairs table lacks column(s) {sorted(missing)}")
    if pairs_split.empty:
        raise CxrclipError("no pairs to score: the evaluated split is empty")
    ordered = sort_pairs(pairs_split)
    candidates = build_candidates(ordered)
    dev = _as_device(device)
    image = embed_images(
        bundle, cache, ordered["cache_index"].to_numpy(), batch_size, dev, progress=progress
    )
    text = embed_texts(bundle, candidates.texts, batch_size, dev, progress=progress)
    info = json.dumps(
        {
            **bundle.info,
            "embed_batch_size": int(batch_size),
            "embed_device": dev.type,
            "embed_precision": "bf16-autocast" if dev.type == "cuda" else "fp32",
            "cache_size": int(cache.shape[1]),
        },
        sort_keys=True,
        default=str,
    )
    scores = scores_dict(image @ text.T, candidates)
    scores["info"] = np.asarray(info)
    embeddings = {
        "image": image,
        "text": text,
        "pair_ids": scores["pair_ids"].copy(),
        "info": np.asarray(info),
    }
    return scores, embeddings


def save_npz(path: str | Path, arrays: dict[str, Any]) -> None:
    """Write ``arrays`` to ``path`` as an uncompressed ``.npz`` atomically (no pickled objects)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{key: np.asarray(value) for key, value in arrays.items()})
