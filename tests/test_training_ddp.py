"""The loss gathered across two gloo ranks gives the single-process gradients of the same global batch."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cxrclip.training.loss import make_loss

torch.set_num_threads(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toy_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x_img, x_txt = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
    w_img, w_txt = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    groups = torch.tensor([0, 0, 1, 2, 3, 3, 3, 4])  # same-report pairs on one rank and across ranks
    return x_img, x_txt, w_img, w_txt, groups


def _loss_and_grads(rank: int, world: int, mask: bool):
    x_img, x_txt, w_img, w_txt, groups = _toy_problem()
    w_img.requires_grad_(True)
    w_txt.requires_grad_(True)
    scale = torch.tensor(2.5, requires_grad=True)
    part = slice(rank * 8 // world, (rank + 1) * 8 // world)
    img = torch.nn.functional.normalize(x_img[part] @ w_img, dim=-1)
    txt = torch.nn.functional.normalize(x_txt[part] @ w_txt, dim=-1)
    loss = make_loss(rank, world)(img, txt, scale.exp(), groups[part] if mask else None)
    loss.backward()
    grads = torch.cat([w_img.grad.ravel(), w_txt.grad.ravel(), scale.grad.ravel()])
    return loss.detach(), grads


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    for mask in (False, True):
        loss, grads = _loss_and_grads(rank, world, mask)
        dist.all_reduce(loss)
        dist.all_reduce(grads)  # what DDP does: average the ranks' gradients
        results[f"mask={mask}"] = {"loss": loss / world, "grads": grads / world}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def test_gathered_loss_gradients_on_two_ranks_equal_one_process(tmp_path):
    out = tmp_path / "ranks.pt"
    mp.spawn(_rank_main, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)
    for mask in (False, True):
        loss, grads = _loss_and_grads(0, 1, mask)
        assert torch.allclose(two[f"mask={mask}"]["loss"], loss, atol=1e-6), mask
        assert torch.allclose(two[f"mask={mask}"]["grads"], grads, atol=1e-6, rtol=1e-5), mask
    # the masking really changes the problem (same-report pairs exist in and across the rank halves)
    assert not torch.allclose(two["mask=True"]["loss"], two["mask=False"]["loss"])
