"""Model factory over open_clip: architecture by name, weights by ``pretrained``.

``pretrained`` accepts an open_clip tag (``openai``, ``laion2b_s34b_b79k``, ...), ``none`` (random init),
a local checkpoint path (``.safetensors``, ``.pt``/``.bin`` loaded with ``weights_only=True``), or an
``hf-hub:org/name`` model name (then ``name`` is ignored). Images come from the uint8 grayscale cache and
are normalised on the device (:func:`normalize_images`), replicated to 3 channels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cxrclip.errors import CxrclipError

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_MODEL = "cxrclip-tiny"
_registered = False


def register_model_configs() -> None:
    """Register cxrclip's own model configs (e.g. ``cxrclip-tiny``) with open_clip, once."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


@dataclass
class ClipBundle:
    """An open_clip model with what is needed to feed it.

    ``mean``/``std``: per-channel normalisation (3 floats each); ``image_size``: model input side (px);
    ``context_length``: text tokens; ``tokenizer``: callable list[str] -> LongTensor (n, context_length).
    """

    model: torch.nn.Module
    tokenizer: Any
    name: str
    pretrained: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    context_length: int
    info: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU falls back to CPU with a warning."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %r requested but CUDA is not available: using the CPU", device)
        return torch.device("cpu")
    return torch.device(device)


def _weights_error(name: str, pretrained: str, exc: Exception) -> CxrclipError:
    return CxrclipError(
        f"could not load weights '{pretrained}' for model '{name}': {exc}. "
        "Ways out: (1) download the checkpoint on a machine with internet and set "
        "model.pretrained to its local path in params.yaml, or (2) set model.pretrained: none "
        "to train from random initialisation."
    )


def create_clip(name: str, pretrained: str = "none", device: str | torch.device = "cpu") -> ClipBundle:
    """Build an open_clip model, its tokenizer and preprocessing facts.

    Raises :class:`CxrclipError` naming the weights and the two ways out when they cannot be fetched,
    and when ``name`` is unknown to open_clip.
    """
    import open_clip

    register_model_configs()
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    tag = None if pretrained in ("none", "", None) else pretrained
    model_name = name
    if tag and tag.startswith("hf-hub:"):
        model_name, tag = tag, None
    elif tag and (Path(tag).exists() or "/" in tag or tag.endswith((".pt", ".bin", ".safetensors", ".pth"))):
        if not Path(tag).exists():
            raise _weights_error(name, pretrained, FileNotFoundError(f"no such file: {tag}"))
    if not model_name.startswith("hf-hub:") and model_name not in open_clip.list_models():
        raise CxrclipError(
            f"unknown model.name '{name}'; open_clip knows e.g. ViT-B-32, ViT-B-16, RN50, {TINY_MODEL}"
        )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=tag, device=dev, weights_only=True
        )
    except Exception as exc:  # hub/network failures, corrupt checkpoints (SafetensorError, UnpicklingError)
        if tag is None and not model_name.startswith("hf-hub:"):
            raise
        raise _weights_error(name, pretrained, exc) from exc
    tokenizer = open_clip.get_tokenizer(model_name)
    pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pcfg.get("size", getattr(model.visual, "image_size", 224))
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(float(x) for x in pcfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(x) for x in pcfg.get("std", open_clip.OPENAI_DATASET_STD))
    ctx = int(getattr(tokenizer, "context_length", 77) or 77)
    info = {
        "model": name,
        "pretrained": pretrained,
        "image_size": size,
        "mean": list(mean),
        "std": list(std),
        "context_length": ctx,
        "tokenizer": type(tokenizer).__name__,
        "interpolation": pcfg.get("interpolation", "bicubic"),
        "resize_mode": pcfg.get("resize_mode", "shortest"),
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    del preprocess  # the cache already holds resized pixels; normalisation happens on the device
    return ClipBundle(model, tokenizer, name, pretrained, size, mean, std, ctx, info)  # type: ignore[arg-type]


def normalize_images(
    pixels: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    image_size: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 grayscale (B, H, W) -> float (B, 3, S, S) normalised with ``mean``/``std``.

    Replicates the gray channel to RGB; resizes (bilinear) only when ``image_size`` differs from H.
    Runs on whatever device ``pixels`` is on. Channel ``c`` is ``(p / 255 - mean[c]) / std[c]``,
    computed as one fused ``p * scale[c] + shift[c]`` pass (equal up to float rounding, ~1e-6).
    ``out``: optional float (B, 3, S, S) tensor to write into (reusing it across batches avoids a
    fresh large allocation per batch, which on CPU costs page faults).
    """
    x = pixels.unsqueeze(1).float()
    if image_size is not None and x.shape[-1] != image_size:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)], device=x.device, dtype=x.dtype)
    if out is None:
        return torch.addcmul(shift.view(1, 3, 1, 1), x, scale)
    return torch.addcmul(shift.view(1, 3, 1, 1), x, scale, out=out)


def load_finetuned(bundle: ClipBundle, weights: str | Path) -> ClipBundle:
    """Load a state dict saved by the finetune stage (safetensors, no pickle) into ``bundle.model``."""
    from safetensors.torch import load_file

    path = Path(weights)
    if not path.exists():
        raise CxrclipError(f"fine-tuned weights not found: {path} (run the finetune stage first)")
    try:
        state = load_file(str(path), device=str(next(bundle.model.parameters()).device))
    except Exception as exc:  # SafetensorError (corrupt/truncated file) has no common base class
        raise CxrclipError(f"cannot read fine-tuned weights {path}: {exc}") from exc
    try:
        missing, unexpected = bundle.model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same keys, other shapes (e.g. another architecture size)
        raise CxrclipError(f"{path} does not match model '{bundle.name}': {exc}") from exc
    if missing or unexpected:
        raise CxrclipError(
            f"{path} does not match model '{bundle.name}': missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    bundle.info["weights"] = str(path)
    return bundle
