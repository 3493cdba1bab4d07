"""Fused depthwise-conv + BN and conv-MLP blocks of other timm ViTs (repvit, fastvit,
efficientvit_msra) against the original modules: eval (NCHW / channels_last, input and parameter
gradients through the re-parameterized weights), train mode over SGD steps, whole models, caches
and the skip reasons."""

from __future__ import annotations

import copy

import pytest
import torch
from models import Holder, logits, randomize_, timm_model
from tolerances import MODEL_RTOL, assert_close

import swiftkern
from swiftkern.nn import reparam

timm = pytest.importorskip("timm")
from timm.models import efficientvit_msra as ev  # noqa: E402
from timm.models import fastvit as fv  # noqa: E402
from timm.models import repvit as rv  # noqa: E402

BACKENDS = ["auto", "reference"]


def _blocks(c: int):
    """(id, original module, fused class) for every rule, at width c."""
    return [
        (f"repvggdw-{c}", rv.RepVggDw(c, 3), reparam.FusedRepVggDw),
        (f"repvggdw-legacy-{c}", rv.RepVggDw(c, 3, legacy=True), reparam.FusedRepVggDw),
        (
            f"repvit-block-se-{c}",
            rv.RepViTBlock(c, 2, 3, True, torch.nn.GELU),
            reparam.FusedRepViTBlock,
        ),
        (
            f"repvit-block-{c}",
            rv.RepViTBlock(c, 2, 3, False, torch.nn.GELU),
            reparam.FusedRepViTBlock,
        ),
        (f"repmixer-{c}", fv.RepMixer(c), reparam.FusedRepMixer),
        (
            f"repmixer-block-{c}",
            fv.RepMixerBlock(c, kernel_size=3, mlp_ratio=3.0),
            reparam.FusedRepMixerBlock,
        ),
        (
            f"effvit-dw-{c}",
            ev.ResidualDrop(ev.ConvNorm(c, c, 3, 1, 1, groups=c)),
            reparam.FusedResidualDwConvBN,
        ),
    ]


CASES = {name: (c, i) for c in (33, 48) for i, (name, _, _) in enumerate(_blocks(c))}


def _case(name: str, seed: int = 0):
    c, i = CASES[name]
    torch.manual_seed(seed)
    _, module, fused_cls = _blocks(c)[i]
    module = randomize_(module, seed)
    with torch.no_grad():  # plain conv biases / RepVggDw's 1x1 conv: randomized too
        for p in module.parameters():
            if p.dim() == 1 and not torch.any(p != 0):
                p.copy_(torch.randn(p.shape) * 0.1)
    return Holder(module.eval()), fused_cls, c


def _swapped(opt: Holder, fused_cls) -> None:
    assert any(type(m) is fused_cls for m in opt.modules()), [type(m) for m in opt.modules()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_block_matches_original_eval(name, layout, backend):
    ref, fused_cls, c = _case(name)
    opt = swiftkern.optimize(copy.deepcopy(ref), backend=backend)
    _swapped(opt, fused_cls)
    x = torch.randn(2, c, 7, 9)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = ref(xr), opt(xo)
    assert_close(got, want, what=f"{name} {layout} out")
    g = torch.randn_like(want)
    want.backward(g)
    got.backward(g)
    assert_close(xo.grad, xr.grad, what=f"{name} input grad")
    for (k, a), b in zip(ref.named_parameters(), opt.parameters()):
        if a.grad is not None or b.grad is not None:
            assert_close(b.grad, a.grad, what=f"{name} grad {k}")


@pytest.mark.parametrize("name", sorted(n for n in CASES if n.endswith("-33")))
def test_fused_block_tracks_original_in_train_mode(name):
    ref, fused_cls, c = _case(name)
    opt = swiftkern.optimize(copy.deepcopy(ref))
    _swapped(opt, fused_cls)
    losses = {}
    for tag, m in (("ref", ref), ("opt", opt)):
        m.train()
        sgd = torch.optim.SGD(m.parameters(), lr=0.05)
        losses[tag] = []
        for step in range(5):
            x = torch.randn(4, c, 6, 5, generator=torch.Generator().manual_seed(step))
            loss = m(x).square().mean()
            sgd.zero_grad()
            loss.backward()
            sgd.step()
            losses[tag].append(loss.detach())
    assert_close(torch.stack(losses["opt"]), torch.stack(losses["ref"]), what=f"{name} losses")
    for (k, a), b in zip(ref.state_dict().items(), opt.state_dict().values()):
        if a.is_floating_point():
            assert_close(b, a, what=f"{name} {k} after training")
        else:
            assert torch.equal(a, b), k
    ref.eval()
    opt.eval()
    x = torch.randn(2, c, 5, 5)
    with torch.no_grad():  # the re-parameterized weights follow the trained parameters
        assert_close(opt(x), ref(x), what=f"{name} eval after training")


def test_reparameterized_weights_are_never_stale():
    ref, _, c = _case("repmixer-48")
    opt = swiftkern.optimize(copy.deepcopy(ref))
    x = torch.randn(1, c, 6, 6)
    with torch.no_grad():
        assert_close(opt(x), ref(x), what="first call")
        for m in (ref, opt):  # in-place change of a branch's BN stats and of the layer scale
            m.m.mixer.conv_kxk[0].bn.running_var.mul_(3.0)
            m.m.layer_scale.gamma.mul_(-2.0)
        assert_close(opt(x), ref(x), what="after in-place updates")


@pytest.mark.parametrize(
    "name, fused",
    [
        ("repvit_m0_9", {"FusedRepVggDw", "FusedRepViTBlock"}),
        ("fastvit_t8", {"FusedRepMixer", "FusedRepMixerBlock"}),
        ("efficientvit_m0", {"FusedResidualDwConvBN"}),
    ],
)
def test_whole_models_fuse_blocks_and_match(name, fused):
    model = timm_model(name)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = logits(model(x))
        opt, report = swiftkern.optimize(copy.deepcopy(model), backend="cpu", return_report=True)
        out = logits(opt(x))
    assert fused <= {e.fused for e in report.swapped}, str(report)
    assert_close(out, ref, torch.float32, MODEL_RTOL, what=name)
    assert list(opt.state_dict()) == list(model.state_dict())


def test_skip_reasons_name_what_does_not_fit():
    model = timm_model("efficientvit_m0")
    _, report = swiftkern.optimize(copy.deepcopy(model), return_report=True)
    reasons = {e.reason for e in report.skipped}
    assert any("ReLU MLP" in r for r in reasons), reasons

    class MyRepVggDw(rv.RepVggDw):
        def forward(self, x):  # changed math: must not be swapped
            return super().forward(x) * 2

    m = Holder(randomize_(MyRepVggDw(8, 3)).eval())
    opt, report = swiftkern.optimize(copy.deepcopy(m), return_report=True)
    assert any("own forward" in e.reason for e in report.skipped), str(report)
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():  # its inner ConvNorm is still folded (generic conv+BN pattern)
        assert_close(opt(x), m(x), what="subclass kept")

    mixer = fv.RepMixer(8)
    mixer.reparameterize()  # already a single conv: nothing to fuse
    _, report = swiftkern.optimize(Holder(mixer.eval()), return_report=True)
    assert any("re-parameterized" in e.reason for e in report.skipped), str(report)


def test_fused_block_under_torch_compile():
    ref, _, c = _case("repvit-block-se-48")
    opt = swiftkern.optimize(copy.deepcopy(ref))
    compiled = torch.compile(opt, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, c, 6, 7)
    with torch.no_grad():
        assert_close(compiled(x), ref(x), what="compiled")


def test_repmixer_with_non_affine_identity_bn():
    ref, _, c = _case("repmixer-33")
    bn = torch.nn.BatchNorm2d(c, affine=False).eval()
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    ref.m.mixer.identity = bn
    opt = swiftkern.optimize(copy.deepcopy(ref))
    _swapped(opt, reparam.FusedRepMixer)
    x = torch.randn(2, c, 5, 6)
    with torch.no_grad():
        assert_close(opt(x), ref(x), what="non-affine identity BN")
