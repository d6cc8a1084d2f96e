"""Training checkpoints that load without unpickling code, written atomically.

``checkpoints/last.pt`` (``torch.save``; read back with ``torch.load(weights_only=True)``) holds only
tensors and plain python values: model and optimizer state dicts, scheduler position, GradScaler
state, RNG states (torch, CUDA, numpy, python), epoch, step, the history so far and the best-epoch
bookkeeping. Weights for inference are exported as safetensors (:func:`save_weights`).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrclip.data.io import atomic_path
from cxrclip.errors import CxrclipError

FORMAT = "cxrclip-train-checkpoint/1"


def capture_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU + every CUDA device), numpy's global and python's ``random``."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored when the devices exist)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain python values only) to ``path`` atomically and fsync'ed.

    A crash mid-write leaves the previous checkpoint intact (temporary sibling + ``os.replace``).
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save({"format": FORMAT, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True`` (no code runs)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CxrclipError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CxrclipError(f"{path} is not a cxrclip training checkpoint ({FORMAT})")
    return state


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as contiguous CPU tensors (no copy of tensors already on the CPU)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a state dict as safetensors, atomically (loadable by ``models.factory.load_finetuned``)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
