"""Generic Conv2d -> BatchNorm2d folding in other timm families (and the SwiftFormer stems)."""

from __future__ import annotations

import copy

import pytest
import torch
from models import logits, timm_model
from tolerances import MODEL_RTOL, assert_close

import swiftkern
from swiftkern.nn.folded import FoldedBatchNorm2d, FoldedConv2d

FAMILIES = [
    "repvit_m0_9",
    "efficientvit_m0",
    "fastvit_t8",
    "efficientformerv2_s0",
    "mobilevitv2_050",
]


@pytest.mark.parametrize("name", FAMILIES)
def test_other_timm_families_fold_and_match(name):
    model = timm_model(name)
    size = 224 if name.startswith("efficientformerv2") else 128  # fixed attention-bias grid
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = logits(model(x))
        opt, report = swiftkern.optimize(copy.deepcopy(model), return_report=True)
        out = logits(opt(x))
    assert any(e.fused == "FoldedConv2d" for e in report.swapped), str(report)
    assert_close(out, ref, torch.float32, MODEL_RTOL, what=name)
    assert list(opt.state_dict()) == list(model.state_dict())


def test_folded_pair_train_mode_is_exact_and_eval_not_stale():
    torch.manual_seed(0)
    seq = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU()
    )
    ref = copy.deepcopy(seq)
    opt = swiftkern.optimize(torch.nn.Sequential(seq))[0]
    assert isinstance(opt[0], FoldedConv2d) and isinstance(opt[1], FoldedBatchNorm2d)
    for m in (ref, opt):
        m.train()
        sgd = torch.optim.SGD(m.parameters(), lr=0.1)
        for step in range(3):
            x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(step))
            loss = m(x).square().mean()
            sgd.zero_grad()
            loss.backward()
            sgd.step()
    for (k, a), b in zip(ref.state_dict().items(), opt.state_dict().values()):
        assert torch.equal(a, b), k  # train mode runs the identical original math
    ref.eval()
    opt.eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert_close(opt(x), ref(x), what="eval after training")


def test_conv_followed_by_bn_outside_a_known_container_is_left_alone():
    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):  # not bn(conv(x)): the pair must not be folded
            return self.bn(x.repeat(1, 2, 1, 1)[:, :4]) + self.conv(x)

    m = Custom().eval()
    opt, report = swiftkern.optimize(copy.deepcopy(m), return_report=True)
    assert not report.swapped
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(opt(x), m(x))
