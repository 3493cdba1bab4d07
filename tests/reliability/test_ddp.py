"""2-process DDP (gloo, CPU) training of an optimized SwiftFormer tracks eager DDP."""

from __future__ import annotations

import copy
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

TESTS = Path(__file__).resolve().parents[1]
STEPS = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(model, rank, steps):
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.02, momentum=0.9)
    g = torch.Generator().manual_seed(100 + rank)
    losses, grads0 = [], None
    for step in range(steps):
        # 64x64: the last stage is 2x2, so its BatchNorm sees 16 values per channel. At 32x32 it
        # sees 2 (B=2, 1x1) and its gradients are pure rounding noise, which no two
        # implementations share.
        x = torch.randn(4, 3, 64, 64, generator=g)
        y = torch.randint(0, 10, (4,), generator=g)
        loss = F.cross_entropy(ddp(x).logits, y)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grads0 = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        t = loss.detach().clone()
        dist.all_reduce(t)
        losses.append(t.item() / 2)
    return losses, grads0


def _worker(rank, port, out_dir):
    sys.path.insert(0, str(TESTS))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from models import hf_model

    import swiftkern

    base = hf_model("tiny").train()
    eager = copy.deepcopy(base)
    opt = swiftkern.optimize(copy.deepcopy(base))
    le, ge = _train(eager, rank, STEPS)
    lo, go = _train(opt, rank, STEPS)
    torch.save({"eager": le, "opt": lo, "ge": ge, "go": go}, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_track_eager(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    res = torch.load(tmp_path / "0.pt")
    le, lo = res["eager"], res["opt"]
    assert len(le) == STEPS
    assert abs(le[0] - lo[0]) <= 1e-4 * max(1.0, abs(le[0]))
    for i, (a, b) in enumerate(zip(le, lo)):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), f"step {i}: {b} vs eager {a}"
    for n, g in res["ge"].items():
        d = (res["go"][n] - g).abs().max().item()
        assert d <= 1e-4 * max(1.0, g.abs().max().item()), f"step-0 grad {n}: {d}"
