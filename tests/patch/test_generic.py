"""Generic Conv2d -> BatchNorm2d folding in other timm families (and the SwiftFormer stems)."""

from __future__ import annotations

import copy

import pytest
import torch
from models import logits, timm_model
from tolerances import MODEL_RTOL, assert_close

import swiftkern
from swiftkern.nn.folded import FoldedBatchNorm2d, FoldedConv2d, FoldedReLU

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
    assert isinstance(opt[2], FoldedReLU) and opt[0].fused_relu
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


def _randomized_bn(bn: torch.nn.BatchNorm2d) -> None:
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_(1, 0.2)
        bn.bias.normal_(0, 0.2)


@pytest.mark.parametrize("route", ["channels_last", "nchw", "grad", "bf16", "reflect"])
def test_relu_after_a_folded_pair_is_applied_by_the_conv(route):
    """conv -> BN -> ReLU in a plain Sequential: the folded conv applies the ReLU (in place on
    its output, out of place where autograd records it) and the ReLU's stand-in passes its input
    through; every route matches the original, NaN included (oneDNN's relu post-op would have
    turned NaN into 0)."""
    torch.manual_seed(1)
    pad_mode = "reflect" if route == "reflect" else "zeros"
    seq = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, padding_mode=pad_mode),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(8, 6, 3, padding=1),
        torch.nn.BatchNorm2d(6),
        torch.nn.ReLU(),
    ).eval()
    for m in (seq[1], seq[4]):
        _randomized_bn(m)
    ref = copy.deepcopy(seq)
    opt, report = swiftkern.optimize(seq, return_report=True, channels_last=False)
    assert [type(m) for m in opt] == [FoldedConv2d, FoldedBatchNorm2d, FoldedReLU] * 2
    assert [e.original for e in report.swapped] == ["Conv2d+BatchNorm2d+ReLU"] * 2
    x = torch.randn(2, 3, 11, 13)
    x[0, :, 3, 4] = float("nan")
    if route in ("channels_last", "bf16"):
        x = x.contiguous(memory_format=torch.channels_last)
    if route == "bf16":
        opt, ref, x = opt.to(torch.bfloat16), ref.to(torch.bfloat16), x.to(torch.bfloat16)
    if route == "grad":
        x.requires_grad_(True)
        out, want = opt(x), ref(x.detach().requires_grad_(False))
        out.square().nansum().backward()
        x2 = x.detach().clone().requires_grad_(True)
        ref(x2).square().nansum().backward()
        assert_close(x.grad.nan_to_num(), x2.grad.nan_to_num(), what="input gradient")
    else:
        with torch.no_grad():
            out, want = opt(x), ref(x)
    assert torch.equal(out.isnan(), want.isnan())
    assert (out.nan_to_num() >= 0).all()
    if route == "bf16":
        assert (out.float() - want.float()).nan_to_num().abs().max() <= 0.05
    else:
        assert_close(out.nan_to_num(), want.nan_to_num(), what=route)


def test_relu_is_not_fused_past_other_children():
    """A ReLU that does not directly follow the BN, or a BN with its own activation
    (timm's BatchNormAct2d), keeps its own module."""
    seq = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Identity(), torch.nn.ReLU()
    ).eval()
    opt = swiftkern.optimize(copy.deepcopy(seq))
    assert type(opt[3]) is torch.nn.ReLU and not opt[0].fused_relu
    timm_layers = pytest.importorskip("timm.layers")
    bna = timm_layers.BatchNormAct2d(4, act_layer=torch.nn.Hardswish)
    seq2 = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), bna, torch.nn.ReLU()).eval()
    _randomized_bn(bna)
    ref = copy.deepcopy(seq2)
    opt2 = swiftkern.optimize(seq2)
    assert type(opt2[2]) is torch.nn.ReLU and not opt2[0].fused_relu
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert_close(opt2(x), ref(x), what="BatchNormAct2d + ReLU")


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
