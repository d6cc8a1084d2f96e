"""The fine-tuning loop: contrastive training with validation, best-epoch selection, checkpoints, resume.

:func:`fit` trains ``bundle.model`` on a :class:`~cxrclip.training.data.PairSet` by the
:class:`~cxrclip.training.recipe.TrainRecipe` and writes, on rank 0, into ``out_dir``:

- ``checkpoints/last.pt`` after every epoch (atomic; ``torch.load(weights_only=True)``-loadable);
- ``checkpoints/best.safetensors`` whenever the selection metric improves;
- at the end ``model.safetensors`` (best weights), ``history.csv`` (one row per epoch),
  ``steps.csv`` (one row per optimizer step) and ``train_metrics.json`` (flat numbers).

With ``recipe.resume == "auto"`` an existing ``checkpoints/last.pt`` of the same recipe and data is
continued; the epoch order and augmentation draws are pure functions of ``(seed, epoch, step)``, so a
run killed mid-epoch and resumed ends with the weights of an uninterrupted run (CPU).
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrclip.config import params_hash
from cxrclip.data.io import atomic_path, write_json
from cxrclip.errors import CxrclipError
from cxrclip.models.factory import ClipBundle, normalize_images
from cxrclip.training import checkpoint as ckpt
from cxrclip.training.data import (
    PairSet,
    augment_images,
    augment_params,
    batch_loader,
    epoch_batches,
    rank_slice,
    steps_per_epoch,
)
from cxrclip.training.distributed import DistContext, all_reduce_mean, barrier, broadcast_object
from cxrclip.training.freeze import phase_of_epoch, set_trainable
from cxrclip.training.loss import make_loss
from cxrclip.training.recipe import TrainRecipe
from cxrclip.training.schedule import lr_at
from cxrclip.training.tracking import NullTracker
from cxrclip.training.validation import ValidationSet, autocast_context, validate

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100.0)  # open_clip clamps the learned log-scale to ln(100)
#: recipe fields that do not change the numbers a run produces (ignored when matching a checkpoint)
RUNTIME_ONLY = ("workers", "pin_memory", "resume", "log_model", "compile", "device")

StepCallback = Callable[[int, int], None]  # (global step done, 1-based; 0-based epoch)


@dataclass
class FitResult:
    """What :func:`fit` produced: per-epoch ``history`` rows, per-step ``steps`` rows, the best epoch
    (1-based) and its metric value, the flat ``metrics`` of ``train_metrics.json`` and ``out_dir``."""

    history: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    best_epoch: int | None
    best_value: float | None
    metrics: dict[str, float]
    out_dir: Path
    stopped_early: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def amp_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 on CUDA for ``auto``/``bf16``, bf16 on CPU only when asked, else None (fp32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            log.warning("this GPU has no bf16 support: training in fp32")
            return None
        return torch.bfloat16
    return None


def build_optimizer(model: torch.nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    """Adam or AdamW over *all* parameters (frozen ones get no gradient, so no update), in two groups:
    gains, biases and the logit scale without weight decay (as open_clip_train), the rest with it."""

    def no_decay(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": recipe.weight_decay},
    ]
    cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=recipe.lr, betas=tuple(recipe.betas), eps=recipe.eps)


def run_fingerprint(recipe: TrainRecipe, bundle: ClipBundle, seed: int, train: PairSet) -> str:
    """Hash of what determines the run's numbers: recipe (minus runtime-only keys), model, seed, data."""
    digest = hashlib.sha256()
    digest.update(train.pairs["pair_id"].to_numpy(dtype=np.int64).tobytes())
    digest.update(train.pairs["cache_index"].to_numpy(dtype=np.int64).tobytes())
    digest.update("\n".join(train.pairs["text"].astype(str)).encode())
    digest.update(str(tuple(train.images.shape)).encode())
    recipe_part = {k: v for k, v in recipe.to_dict().items() if k not in RUNTIME_ONLY}
    return params_hash(
        {"recipe": recipe_part, "model": [bundle.name, bundle.pretrained], "seed": seed, "data": digest.hexdigest()}
    )


def _forward_features(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor):
    out = model(images, tokens)
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


def _is_better(value: float, best: float | None, maximize: bool) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if maximize else value < best


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


class _Trainer:
    """State of one :func:`fit` call (kept in one place so checkpoints capture all of it)."""

    def __init__(self, bundle, train, val, recipe, out_dir, seed, ctx, on_step, tracker):
        self.bundle: ClipBundle = bundle
        self.train: PairSet = train
        self.val: ValidationSet | None = val
        self.recipe: TrainRecipe = recipe
        self.out_dir = Path(out_dir)
        self.seed = int(seed)
        self.ctx: DistContext = ctx
        self.on_step = on_step
        self.tracker = tracker if (tracker is not None and ctx.is_main) else NullTracker()
        self.device = ctx.device
        self.model: torch.nn.Module = bundle.model.to(self.device)
        self.amp_dtype = amp_dtype_for(recipe.precision, self.device)
        self.optimizer = build_optimizer(self.model, recipe)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)  # bf16/fp32 need no scaling
        self.loss_fn = make_loss(ctx.rank, ctx.world_size)
        self.steps_per_epoch = steps_per_epoch(train, recipe.batch_size, recipe.sampling)
        if self.steps_per_epoch < 1:
            n = len(train) if recipe.sampling == "every_image" else train.n_reports
            raise CxrclipError(
                f"train.batch_size={recipe.batch_size} exceeds the {n} training samples per epoch "
                f"(sampling={recipe.sampling}); lower train.batch_size"
            )
        self.local = rank_slice(recipe.batch_size, ctx.rank, ctx.world_size)
        self.total_steps = self.steps_per_epoch * recipe.epochs
        self.fingerprint = run_fingerprint(recipe, bundle, self.seed, train)
        self.ckpt_path = self.out_dir / "checkpoints" / "last.pt"
        self.best_path = self.out_dir / "checkpoints" / "best.safetensors"
        # progress, saved in checkpoints
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimizer steps
        self.history: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        self.run_id: str | None = None
        self.select_metric = recipe.select_metric
        self._phase: str | None = None
        self._step_model: torch.nn.Module = self.model

    # ----------------------------------------------------------------- setup / resume
    def init_logit_scale(self) -> None:
        with torch.no_grad():
            self.model.logit_scale.fill_(math.log(self.recipe.logit_scale_init))

    def try_resume(self) -> bool:
        """Load ``checkpoints/last.pt`` when resuming is on and it matches this run; True if loaded."""
        if self.recipe.resume != "auto" or not self.ckpt_path.exists():
            return False
        state = ckpt.load_checkpoint(self.ckpt_path)
        if state.get("fingerprint") != self.fingerprint:
            if self.ctx.is_main:
                log.warning(
                    "%s is from a different recipe/model/data: ignoring it and training from the start",
                    self.ckpt_path,
                )
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        ckpt.restore_rng_state(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history, self.steps = list(state["history"]), list(state["steps"])
        best = state["best"]
        self.best_value, self.best_epoch = best["value"], best["epoch"]
        self.bad_epochs, self.stopped_early = int(best["bad_epochs"]), bool(best["stopped_early"])
        self.select_metric = best.get("metric", self.select_metric)
        self.run_id = state.get("mlflow_run_id") or None
        if self.ctx.is_main:
            log.info("resuming from %s: %d/%d epochs done, step %d", self.ckpt_path, self.epoch, self.recipe.epochs, self.step)
        return True

    def save_checkpoint(self) -> None:
        ckpt.save_checkpoint(
            self.ckpt_path,
            {
                "fingerprint": self.fingerprint,
                "epoch": self.epoch,
                "step": self.step,
                "model": ckpt.cpu_state_dict(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": {
                    "step": self.step,
                    "base_lr": self.recipe.lr,
                    "warmup_steps": self.recipe.warmup_steps,
                    "total_steps": self.total_steps,
                    "schedule": self.recipe.schedule,
                },
                "scaler": self.scaler.state_dict(),
                "rng": ckpt.capture_rng_state(),
                "history": self.history,
                "steps": self.steps,
                "best": {
                    "metric": self.select_metric,
                    "value": self.best_value,
                    "epoch": self.best_epoch,
                    "bad_epochs": self.bad_epochs,
                    "stopped_early": self.stopped_early,
                },
                "mlflow_run_id": self.run_id or "",
            },
        )

    # ----------------------------------------------------------------- one epoch
    def enter_phase(self, epoch: int) -> str:
        """Apply the freezing schedule for ``epoch``; (re)wrap for DDP / compile when it changes."""
        phase = phase_of_epoch(epoch, self.recipe.freeze_epochs)
        if phase == self._phase:
            return phase
        r = self.recipe
        names = set_trainable(self.model, phase, r.unlock_image_layers, r.unlock_text_layers, r.learn_logit_scale)
        n_train = sum(p.numel() for n, p in self.model.named_parameters() if n in names)
        if self.ctx.is_main:
            log.info("epoch %d: phase %s, %d trainable tensors (%d parameters)", epoch + 1, phase, len(names), n_train)
        self._step_model = self.model  # drop the previous DDP wrapper (and its gradient hooks) first
        step_model: torch.nn.Module = self.model
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            step_model = DistributedDataParallel(self.model, device_ids=ids)
        if r.compile:
            step_model = torch.compile(step_model)
        self._step_model, self._phase = step_model, phase
        return phase

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        r = self.recipe
        phase = self.enter_phase(epoch)
        batches = epoch_batches(self.train.report_group.numpy(), r.batch_size, r.sampling, self.seed, epoch)
        pin = r.pin_memory and self.device.type == "cuda"
        loader = batch_loader(self.train, batches[:, self.local], r.workers, pin)
        step_losses = torch.zeros(len(batches), device=self.device)
        lrs = []
        mean, std, size = self.bundle.mean, self.bundle.std, self.bundle.image_size
        self.model.train()
        started = time.perf_counter()
        bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{r.epochs}", disable=not self.ctx.is_main, leave=False)
        for b, (images, tokens, groups) in enumerate(loader):
            lr = lr_at(self.step, r.lr, r.warmup_steps, self.total_steps, r.schedule)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images = images.to(self.device, non_blocking=True)
            tokens = tokens.to(self.device, non_blocking=True)
            if r.augment:
                draw_seed = int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, epoch, b]).generate_state(1)[0])
                draws = augment_params(r.batch_size, draw_seed)[self.local]
                images = augment_images(images.float(), draws)
            x = normalize_images(images, mean, std, size)
            with autocast_context(self.device, self.amp_dtype):
                img_f, txt_f, scale = _forward_features(self._step_model, x, tokens)
                loss = self.loss_fn(
                    img_f, txt_f, scale, groups.to(self.device) if r.mask_false_negatives else None
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if r.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None], r.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            step_losses[b] = loss.detach().float()
            lrs.append(lr)
            self.step += 1
            bar.update(1)
            if b % 10 == 0 and self.ctx.is_main:
                bar.set_postfix(loss=f"{step_losses[b].item():.4f}", lr=f"{lr:.2e}")
            if self.on_step is not None:
                self.on_step(self.step, epoch)
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        losses = all_reduce_mean(self.ctx, step_losses).cpu().tolist()
        first = self.step - len(batches) + 1
        new_steps = [
            {"step": first + i, "epoch": epoch + 1, "loss": loss_i, "lr": lr_i}
            for i, (loss_i, lr_i) in enumerate(zip(losses, lrs, strict=True))
        ]
        self.steps.extend(new_steps)
        return {
            "epoch": epoch + 1,
            "phase": phase,
            "train_loss": float(np.mean(losses)),
            "lr": lrs[-1],
            "logit_scale": float(self.model.logit_scale.exp().item()),
            "epoch_time_s": seconds,
            "train_samples_per_s": len(batches) * r.batch_size / seconds,
            "_new_steps": new_steps,
        }

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Validate (rank 0), update best / early stopping, write best weights and the checkpoint."""
        new_steps = row.pop("_new_steps")
        if self.ctx.is_main:
            started = time.perf_counter()
            metrics = {}
            if self.val is not None and len(self.val):
                metrics = validate(self.bundle, self.val, self.device)
            row.update({f"val/{k}": v for k, v in metrics.items()})
            row["val_time_s"] = time.perf_counter() - started
            if self.select_metric not in row:
                if metrics:  # validation ran, so the name is wrong
                    known = sorted(k for k, v in row.items() if isinstance(v, float))
                    raise CxrclipError(f"train.select_metric {self.select_metric!r} is not a metric; choose one of {known}")
                log.warning("no validation metrics: selecting the best epoch by train_loss, not %r", self.select_metric)
                self.select_metric = "train_loss"
            maximize = not self.select_metric.endswith("loss")
            value = float(row[self.select_metric])
            if _is_better(value, self.best_value, maximize):
                self.best_value, self.best_epoch, self.bad_epochs = value, row["epoch"], 0
                ckpt.save_weights(self.best_path, self.model.state_dict(), {"epoch": str(row["epoch"])})
            else:
                self.bad_epochs += 1
            patience = self.recipe.early_stopping_patience
            self.stopped_early = patience is not None and self.bad_epochs >= patience
            self.history.append(row)
            self.epoch = row["epoch"]
            self.tracker.log_metric_series([(s["step"], {"train/loss": s["loss"], "train/lr": s["lr"]}) for s in new_steps])
            self.tracker.log_metrics({k: v for k, v in row.items() if k not in ("epoch", "phase")}, step=row["epoch"])
            self.save_checkpoint()
            self.tracker.set_tags({"checkpoint": str(self.ckpt_path.resolve()), "epochs_done": str(self.epoch)})
        else:
            self.epoch = row["epoch"]
        self.stopped_early = bool(broadcast_object(self.ctx, self.stopped_early))
        barrier(self.ctx)

    # ----------------------------------------------------------------- outputs
    def summary_metrics(self) -> dict[str, float]:
        last = self.history[-1] if self.history else {}
        best = next((h for h in self.history if h["epoch"] == self.best_epoch), {})
        out: dict[str, float] = {
            "epochs_completed": float(self.epoch),
            "steps": float(self.step),
            "best_epoch": float(self.best_epoch or 0),
            "stopped_early": float(self.stopped_early),
            "world_size": float(self.ctx.world_size),
        }
        for prefix, row in (("final", last), ("best", best)):
            for k, v in row.items():
                if k not in ("epoch", "phase") and isinstance(v, (int, float)):
                    out[f"{prefix}/{k}"] = float(v)
        rates = [h["train_samples_per_s"] for h in self.history if "train_samples_per_s" in h]
        if rates:
            out["train_samples_per_s"] = float(np.mean(rates))
        return out

    def write_outputs(self) -> dict[str, float]:
        metrics = self.summary_metrics()
        if not self.best_path.exists():  # e.g. resumed from a checkpoint written before best tracking
            ckpt.save_weights(self.best_path, self.model.state_dict())
        with atomic_path(self.out_dir / "model.safetensors") as tmp:
            shutil.copyfile(self.best_path, tmp)
        _write_csv(self.history, self.out_dir / "history.csv")
        _write_csv(self.steps, self.out_dir / "steps.csv")
        write_json(metrics, self.out_dir / "train_metrics.json")
        return metrics


def fit(
    bundle: ClipBundle,
    train: PairSet,
    val: ValidationSet | None,
    recipe: TrainRecipe,
    out_dir: str | Path,
    seed: int,
    ctx: DistContext | None = None,
    on_step: StepCallback | None = None,
    tracker: Any = None,
    run_params: dict[str, Any] | None = None,
) -> FitResult:
    """Fine-tune ``bundle.model`` in place; write checkpoints and outputs under ``out_dir`` (rank 0).

    ``train``: training pairs; ``val``: validation set (None: select the best epoch by train loss);
    ``seed``: fixes the epoch orders and augmentation draws (the model's initial weights are the
    caller's); ``ctx``: this process under torchrun (default: one process on ``bundle``'s device);
    ``on_step(step, epoch)``: called after every optimizer step; ``tracker``: an
    :class:`~cxrclip.training.tracking.MlflowTracker` (used on rank 0 only); ``run_params``: logged
    as MLflow params (default: the recipe).
    """
    if ctx is None:
        ctx = DistContext(device=next(bundle.model.parameters()).device)
    trainer = _Trainer(bundle, train, val, recipe, out_dir, seed, ctx, on_step, tracker)
    resumed = trainer.try_resume()
    if not resumed:
        trainer.init_logit_scale()
        if ctx.is_main and trainer.best_path.exists():
            trainer.best_path.unlink()  # a stale best from another run must not be exported
    trainer.run_id = trainer.tracker.start(trainer.run_id)
    if ctx.is_main and not resumed:
        trainer.tracker.log_params(run_params if run_params is not None else {"train": recipe.to_dict()})
        trainer.tracker.set_tags({"fingerprint": trainer.fingerprint, "world_size": str(ctx.world_size)})
    started = time.perf_counter()
    status = "FAILED"
    try:
        for epoch in range(trainer.epoch, recipe.epochs):
            if trainer.stopped_early:
                break
            row = trainer.train_epoch(epoch)
            trainer.end_epoch(row)
            if ctx.is_main:
                shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
                log.info("epoch %s", shown)
        metrics: dict[str, float] = {}
        if ctx.is_main:
            metrics = trainer.write_outputs()
            if recipe.log_model:
                trainer.tracker.log_artifact(trainer.out_dir / "model.safetensors", "model")
            trainer.tracker.set_tags({"best_weights": str((trainer.out_dir / "model.safetensors").resolve())})
            trainer.tracker.log_metrics({k: v for k, v in metrics.items()}, step=trainer.epoch)
        barrier(ctx)
        status = "FINISHED"
    finally:
        trainer.tracker.end(status)
    return FitResult(
        history=trainer.history,
        steps=trainer.steps,
        best_epoch=trainer.best_epoch,
        best_value=trainer.best_value,
        metrics=metrics,
        out_dir=trainer.out_dir,
        stopped_early=trainer.stopped_early,
        timings={"fit_s": time.perf_counter() - started},
    )
