"""End to end: optimize() on real HF / timm SwiftFormer models (random weights, no downloads)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from models import hf_model, logits, timm_model
from tolerances import MODEL_RTOL, assert_close

import swiftkern
from swiftkern.nn._base import FusedModule

BUILDERS = {
    "hf-tiny": lambda: hf_model("tiny"),
    "hf-xs": lambda: hf_model("xs"),
    "timm-xs": lambda: timm_model("swiftformer_xs"),
}


def _run(model, x):
    with torch.no_grad():
        return logits(model(x))


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_eval_logits_match_eager(name, backend):
    model = BUILDERS[name]()
    size = 64 if name == "hf-tiny" else 224
    x = torch.randn(2 if name == "hf-tiny" else 1, 3, size, size)
    ref = _run(model, x)
    opt, report = swiftkern.optimize(model, backend=backend, inplace=False, return_report=True)
    assert_close(_run(opt, x), ref, torch.float32, MODEL_RTOL, what=f"{name} logits")
    assert_close(
        _run(opt, x.contiguous(memory_format=torch.channels_last)),
        ref,
        torch.float32,
        MODEL_RTOL,
        what=f"{name} channels_last logits",
    )
    if backend == "reference":
        kinds = {e.fused for e in report.swapped}
        assert {
            "FusedConvBlock",
            "FusedAdditiveAttention",
            "FusedMlp",
            "FusedEncoderBlock",
            "FusedConvBN",
        } <= kinds, str(report)


def _train_steps(model, steps, seed=0, size=32, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = []
    model.train()
    for _ in range(steps):
        x = torch.randn(2, 3, size, size, generator=g)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (2,), generator=g)
        loss = F.cross_entropy(logits(model(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", ["hf", "timm", "timm-fastvit", "timm-repvit"])
def test_train_mode_tracks_eager_over_steps(family):
    """Losses, parameters and BN running statistics track eager over SGD steps (20 for the tiny
    HF model and the other-ViT families; 3 for timm XS, which is 10x larger)."""
    backend = "reference"
    if family == "hf":
        base = hf_model("tiny", drop_path_rate=0.0)
    elif family == "timm":
        base = timm_model("swiftformer_xs", num_classes=10)
    else:  # fused blocks of other ViTs, through the C++ kernels where they serve
        base = timm_model(family.split("-")[1] + ("_t8" if "fastvit" in family else "_m0_9"),
                          num_classes=10)
        backend = "auto"
    steps = 3 if family == "timm" else 20
    # 64x64 for repvit / fastvit: at 32x32 their last stage is 1x1 and eager PyTorch takes
    # seconds per training step there (measured: 6 s forward for repvit_m0_9 at batch 2).
    # 64x64 for HF too: at 32x32 its last stage is 1x1, so each train-mode BatchNorm there
    # normalizes 2 values per channel, an ill-conditioned step that turns rounding into chaos
    # (session 9, Intel AVX-512 CPU: eager and eager channels_last already differed by 0.018 at
    # step 5 and the trajectories were unrelated by step 8). At 64x64 (8 values) eager, eager
    # channels_last and swiftkern agree to 5 digits over all 20 steps.
    size = 64 if backend == "auto" or family == "hf" else 32
    ref, ref_cl = copy.deepcopy(base), copy.deepcopy(base)
    opt = swiftkern.optimize(copy.deepcopy(base), backend=backend)
    la = _train_steps(ref, steps, size=size)
    lb = _train_steps(opt, steps, size=size)
    # An equally valid eager run (channels_last input: other conv algorithms, other rounding)
    # measures how far fp32 rounding alone drifts over these steps. Not for repvit / fastvit:
    # eager channels_last training of repvit_m0_9 did not finish a step in minutes here; they
    # are held to the plain end-to-end tolerance (drift 0).
    if backend == "auto":
        ref_cl = ref
        lc = la
    else:
        lc = _train_steps(ref_cl, steps, size=size, channels_last=True)
    # Step 0 is one forward: per-block tolerance. Later steps: end-to-end tolerance, or twice the
    # drift of the eager variant where the trajectory amplifies rounding more than that.
    assert abs(la[0] - lb[0]) <= 1e-4 * max(1.0, abs(la[0]))
    for i, (a, b, c) in enumerate(zip(la, lb, lc)):
        bound = max(MODEL_RTOL[torch.float32] * max(1.0, abs(a)), 2 * abs(c - a))
        assert abs(a - b) <= bound, f"step {i}: loss {b} vs eager {a} (eager-cl {c})"
    sa, sb, sc = ref.state_dict(), opt.state_dict(), ref_cl.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if sa[k].is_floating_point():
            err = (sb[k] - sa[k]).abs().max().item()
            drift = (sc[k] - sa[k]).abs().max().item()
            bound = max(MODEL_RTOL[torch.float32] * max(1.0, sa[k].abs().max().item()), 2 * drift)
            assert err <= bound, f"{k}: {err:.3e} > {bound:.3e} (eager drift {drift:.3e})"
        else:
            assert torch.equal(sa[k], sb[k]), k
    # back to eval: no stale folded weights
    ref.eval()
    opt.eval()
    x = torch.randn(2, 3, size, size)
    y_ref = _run(ref, x)
    drift = (_run(ref_cl.eval(), x) - y_ref).abs().max().item()
    err = (_run(opt, x) - y_ref).abs().max().item()
    assert err <= max(MODEL_RTOL[torch.float32] * max(1.0, y_ref.abs().max().item()), 2 * drift)


def test_idempotent_and_state_dict_round_trip():
    model = hf_model("tiny")
    keys = list(model.state_dict().keys())
    x = torch.randn(1, 3, 64, 64)
    opt, r1 = swiftkern.optimize(model, backend="reference", return_report=True)
    y1 = _run(opt, x)
    opt2, r2 = swiftkern.optimize(opt, backend="reference", return_report=True)
    assert opt2 is opt and not r2.swapped and len(r1.swapped) > 0
    assert torch.equal(_run(opt2, x), y1)
    assert list(opt.state_dict().keys()) == keys
    fresh = hf_model("tiny", seed=5)
    fresh.load_state_dict(opt.state_dict())
    assert_close(_run(fresh, x), y1, torch.float32, MODEL_RTOL, what="state_dict -> original")
    other = swiftkern.optimize(hf_model("tiny", seed=7), backend="reference")
    other.load_state_dict(fresh.state_dict())
    assert_close(_run(other, x), y1, torch.float32, MODEL_RTOL, what="state_dict -> optimized")


@pytest.mark.parametrize("name", ["hf-tiny", "hf-tiny-bf16", "repvit_m0_9", "fastvit_t8"])
def test_deepcopy_and_pickle(name):
    if name == "hf-tiny":
        opt = swiftkern.optimize(hf_model("tiny"), backend="reference")
    elif name == "hf-tiny-bf16":  # dtype= adds an input-casting hook, which must pickle too
        opt = swiftkern.optimize(hf_model("tiny"), dtype=torch.bfloat16)
    else:
        opt = swiftkern.optimize(timm_model(name, num_classes=10))
    x = torch.randn(1, 3, 64, 64)
    y = _run(opt, x)
    assert torch.equal(_run(copy.deepcopy(opt), x), y)
    buf = io.BytesIO()
    pickle.dump(opt, buf)
    assert torch.equal(_run(pickle.loads(buf.getvalue()), x), y)


def test_hidden_states_stay_correct():
    model = hf_model("tiny")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x, output_hidden_states=True).hidden_states
        got = swiftkern.optimize(model, inplace=False, backend="reference")(
            x, output_hidden_states=True
        ).hidden_states
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert_close(b, a, torch.float32, MODEL_RTOL, what="hidden state")


def test_subclass_with_changed_forward_is_not_swapped():
    from transformers.models.swiftformer import modeling_swiftformer as hf

    class Doubled(hf.SwiftFormerConvEncoder):
        def forward(self, x):
            return 2 * super().forward(x)

    model = hf_model("tiny")
    blk = model.swiftformer.encoder.network[4].blocks[0]
    sub = Doubled(model.config, blk.depth_wise_conv.in_channels)
    model.swiftformer.encoder.network[4].blocks[0] = sub
    _, report = swiftkern.optimize(model, backend="reference", return_report=True)
    assert model.swiftformer.encoder.network[4].blocks[0] is sub
    skipped = {e.path: e.reason for e in report.skipped}
    assert "own forward" in skipped["swiftformer.encoder.network.4.blocks.0"]


def test_unknown_models_stay_bit_identical():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(4)
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    ref = _run(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt, report = swiftkern.optimize(model, return_report=True)
    assert not report.swapped
    assert torch.equal(_run(opt, x), ref)
    assert all(torch.equal(before[k], v) for k, v in opt.state_dict().items())


def test_verify_failure_raises_and_leaves_model_unchanged(monkeypatch):
    from swiftkern.nn.attention import FusedAdditiveAttention

    model = hf_model("tiny")
    mods_before = dict(model.named_modules())
    orig = FusedAdditiveAttention.forward_tokens
    monkeypatch.setattr(
        FusedAdditiveAttention, "forward_tokens", lambda self, t: orig(self, t) + 1.0
    )
    with pytest.raises(ValueError, match="Per swapped layer"):
        swiftkern.optimize(model, backend="reference", verify=torch.randn(1, 3, 64, 64))
    assert dict(model.named_modules()) == mods_before
    assert not any(isinstance(m, FusedModule) for m in model.modules())


def test_verify_passes_on_a_correct_model():
    model = hf_model("tiny")
    opt = swiftkern.optimize(model, backend="reference", verify=torch.randn(1, 3, 64, 64))
    assert any(isinstance(m, FusedModule) for m in opt.modules())


@pytest.mark.parametrize("name", ["hf-tiny", "repvit_m0_9", "fastvit_t8", "efficientvit_m0"])
def test_bf16_logits_cosine(name):
    model = hf_model("tiny") if name == "hf-tiny" else timm_model(name, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    ref = _run(model, x)
    opt, report = swiftkern.optimize(model, dtype=torch.bfloat16, inplace=False,
                                     return_report=True)
    out = _run(opt, x)
    assert out.dtype == torch.bfloat16
    # a CPU without bf16 arithmetic (this one) is told that bf16 is no faster than fp32 here;
    # one with it, that the kernels compute in fp32 and were not measured there
    has_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    notes = [n for n in report.notes if n.startswith("bf16 on a CPU")]
    assert len(notes) == 1
    assert ("without bf16 arithmetic" in notes[0]) != has_bf16
    assert ("never measured on such a CPU" in notes[0]) == has_bf16
    assert "note: bf16 on a CPU" in str(report)
    cos = F.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0).item()
    assert cos >= 0.999, cos


def test_bad_arguments():
    model = hf_model("tiny")
    with pytest.raises(ValueError, match="backend must be one of"):
        swiftkern.optimize(model, backend="gpu")
    with pytest.raises(ValueError, match="needs a model on a CUDA device"):
        swiftkern.optimize(model, backend="triton")
    with pytest.raises(TypeError, match="nn.Module"):
        swiftkern.optimize(lambda x: x)
    assert not any(isinstance(m, FusedModule) for m in model.modules())


def test_compile_fullgraph_of_optimized_model():
    model = swiftkern.optimize(hf_model("tiny"), backend="reference")
    x = torch.randn(1, 3, 64, 64)
    ref = _run(model, x)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert_close(_run(compiled, x), ref, torch.float32, MODEL_RTOL, what="compiled logits")


def test_export_of_optimized_model_runs_and_matches():
    model = swiftkern.optimize(hf_model("tiny"), backend="reference")
    x = torch.randn(1, 3, 64, 64)
    ref = _run(model, x)

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x).logits

    ep = torch.export.export(Logits(model), (x,))
    names = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("swiftkern.conv_block" in n for n in names), names
    assert any("swiftkern.additive_attention" in n for n in names), names
    with torch.no_grad():
        assert_close(ep.module()(x), ref, torch.float32, MODEL_RTOL, what="exported logits")


def test_failure_part_way_leaves_the_model_unchanged(monkeypatch):
    from swiftkern.nn import conv_block as cb

    model = hf_model("tiny")
    before = dict(model.named_modules())
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    built = []
    orig_init = cb.FusedConvBlock.__init__

    def flaky(self, *a, **k):
        built.append(1)
        if len(built) == 3:
            raise RuntimeError("boom")
        orig_init(self, *a, **k)

    monkeypatch.setattr(cb.FusedConvBlock, "__init__", flaky)
    with pytest.raises(RuntimeError, match=r"building the replacement of .* failed.*boom"):
        swiftkern.optimize(model, backend="reference")
    assert len(built) == 3
    assert dict(model.named_modules()) == before
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_timm_feature_apis_keep_working():
    import timm

    model = timm_model("swiftformer_xs")
    x = torch.randn(1, 3, 128, 128)
    opt = swiftkern.optimize(copy.deepcopy(model))
    with torch.no_grad():
        assert_close(
            opt.forward_features(x),
            model.forward_features(x),
            torch.float32,
            MODEL_RTOL,
            what="forward_features",
        )
        ref_final, ref_inter = model.forward_intermediates(x)
        got_final, got_inter = opt.forward_intermediates(x)
        assert_close(got_final, ref_final, torch.float32, MODEL_RTOL, what="intermediates final")
        assert len(got_inter) == len(ref_inter) == 4
        for a, b in zip(got_inter, ref_inter):
            assert_close(a, b, torch.float32, MODEL_RTOL, what="intermediate")
    torch.manual_seed(0)
    feats = timm.create_model("swiftformer_xs", pretrained=False, features_only=True).eval()
    from models import randomize_

    randomize_(feats)
    opt_feats, report = swiftkern.optimize(copy.deepcopy(feats), return_report=True)
    assert report.swapped
    with torch.no_grad():
        for a, b in zip(opt_feats(x), feats(x)):
            assert_close(a, b, torch.float32, MODEL_RTOL, what="features_only")


def test_hf_base_model_is_optimized_too():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.SwiftFormerConfig(depths=[1, 1, 2, 1], embed_dims=[16, 24, 40, 56])
    from models import randomize_

    model = randomize_(transformers.SwiftFormerModel(cfg).eval())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x).last_hidden_state
        opt, report = swiftkern.optimize(
            copy.deepcopy(model), return_report=True, backend="reference"
        )
        got = opt(x).last_hidden_state
    assert len(report.swapped) >= 20
    assert_close(got, ref, torch.float32, MODEL_RTOL, what="SwiftFormerModel")


def test_auto_keeps_wide_cpu_blocks_where_kernels_measured_slower():
    from models import randomize_
    from timm.models import swiftformer as tm

    from swiftkern.optimize import CPU_AUTO_MAX_CHANNELS

    c = CPU_AUTO_MAX_CHANNELS + 64
    wide = torch.nn.Sequential(tm.Mlp(c, 4 * c))
    _, report = swiftkern.optimize(wide, return_report=True)
    assert not report.swapped and "measured slower" in report.skipped[0].reason
    _, report = swiftkern.optimize(wide, backend="reference", return_report=True)
    assert report.swapped
    # conv blocks measured faster at every width: swapped
    _, report = swiftkern.optimize(torch.nn.Sequential(tm.ConvEncoder(c, 4 * c)),
                                   return_report=True)
    assert report.swapped and not report.skipped, str(report)
    # in a model that runs channels_last inside, the wide mlp / attention serve channels_last
    # activations, where they measured faster: swapped (and correct); kept with NCHW inside
    torch.manual_seed(0)
    model = torch.nn.Sequential(tm.ConvEncoder(c, 4 * c), tm.Block(c)).eval()
    randomize_(model)
    x = torch.randn(2, c, 5, 7)
    ref = _run(model, x)
    opt, report = swiftkern.optimize(copy.deepcopy(model), return_report=True)
    assert {"FusedMlp", "FusedAdditiveAttention"} <= {e.fused for e in report.swapped}
    assert not report.skipped, str(report)
    assert opt._forward_pre_hooks  # channels_last inside
    assert_close(_run(opt, x), ref, torch.float32, MODEL_RTOL, what="wide block, channels_last")
    _, report = swiftkern.optimize(copy.deepcopy(model), channels_last=False, return_report=True)
    assert {e.path for e in report.skipped} == {"1.attn", "1.linear"}, str(report)


def _layouts_seen(model, x, **kwargs):
    """Memory formats of the inputs of every Conv2d-like leaf during one forward."""
    seen = []

    def rec(_m, args):
        t = args[0]
        if isinstance(t, torch.Tensor) and t.dim() == 4:
            seen.append("cl" if not t.is_contiguous() else "nchw")

    handles = [
        m.register_forward_pre_hook(rec)
        for m in model.modules()
        if type(m).__name__ in ("FoldedConv2d", "FusedConvBlock")
    ]
    try:
        with torch.no_grad():
            out = model(x, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return seen, out


def test_channels_last_inside_and_nchw_outside():
    model = hf_model("tiny")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x, output_hidden_states=True)
    opt, report = swiftkern.optimize(copy.deepcopy(model), return_report=True)
    seen, out = _layouts_seen(opt, x, output_hidden_states=True)
    assert seen and set(seen) == {"cl"}, seen  # every conv ran channels_last inside
    assert x.is_contiguous()  # the caller's tensor is not touched
    assert_close(out.logits, ref.logits, torch.float32, MODEL_RTOL, what="logits")
    assert len(out.hidden_states) == len(ref.hidden_states)
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert b.dim() != 4 or a.is_contiguous(), a.stride()  # handed back NCHW
        assert_close(a, b, torch.float32, MODEL_RTOL, what="hidden state")
    # channels_last input: nothing converted, the model's own layout behaviour
    xc = x.contiguous(memory_format=torch.channels_last)
    seen, out = _layouts_seen(opt, xc, output_hidden_states=True)
    assert set(seen) == {"cl"}
    assert_close(out.logits, ref.logits, torch.float32, MODEL_RTOL, what="logits (cl input)")
    # opt-out and idempotence: one pair of hooks, whatever optimize() is called again with
    off = swiftkern.optimize(copy.deepcopy(model), channels_last=False)
    seen, _ = _layouts_seen(off, x)
    assert set(seen) == {"nchw"}
    again = swiftkern.optimize(opt)
    assert len(again._forward_pre_hooks) == 1 and len(again._forward_hooks) == 1
    # an exception inside forward leaves no stale state behind (the post hook always runs)
    with pytest.raises(RuntimeError, match="channels"):
        opt(torch.randn(2, 5, 64, 64))
    assert not opt._forward_hooks[next(iter(opt._forward_hooks))].__self__._stack()
    seen, out = _layouts_seen(opt, x)
    assert set(seen) == {"cl"}


def test_channels_last_inside_keeps_feature_maps_nchw():
    import timm
    from models import randomize_

    torch.manual_seed(0)
    feats = timm.create_model("swiftformer_xs", pretrained=False, features_only=True).eval()
    randomize_(feats)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ref = feats(x)
    opt = swiftkern.optimize(copy.deepcopy(feats))
    seen, got = _layouts_seen(opt, x)
    assert set(seen) == {"cl"}
    assert isinstance(got, list) and len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.is_contiguous() and a.shape == b.shape
        assert_close(a, b, torch.float32, MODEL_RTOL, what="feature map")


def test_channels_last_inside_is_off_without_fused_conv_blocks():
    from timm.models import swiftformer as tm

    opt, report = swiftkern.optimize(torch.nn.Sequential(tm.Mlp(16, 64)), return_report=True)
    assert report.swapped and not opt._forward_pre_hooks

    class ViewsActivations(torch.nn.Module):  # user code that .view()s a conv output
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU()
            )
            self.head = torch.nn.Linear(8 * 16 * 16, 10)

        def forward(self, x):
            y = self.body(x)
            return self.head(y.view(y.shape[0], -1))

    model = ViewsActivations().eval()
    x = torch.randn(2, 3, 16, 16)
    ref = _run(model, x)
    opt, report = swiftkern.optimize(copy.deepcopy(model), return_report=True)
    assert [e.fused for e in report.swapped] == ["FoldedConv2d"]
    assert not opt._forward_pre_hooks  # only a generic fold: the caller's layout is kept
    assert_close(_run(opt, x), ref, torch.float32, MODEL_RTOL, what="folded CNN")


def test_channels_last_inside_only_in_eval():
    opt = swiftkern.optimize(hf_model("tiny"))
    opt.train()
    seen, _ = _layouts_seen(opt, torch.randn(2, 3, 64, 64))
    assert set(seen) == {"nchw"}
    opt.eval()
    seen, _ = _layouts_seen(opt, torch.randn(2, 3, 64, 64))
    assert set(seen) == {"cl"}


@pytest.mark.parametrize("channels_last", [None, False])
def test_inference_mode(channels_last):
    """torch.inference_mode: folded weights built there are inference tensors, which have no
    version counter; they must neither crash the weight caches (the channels_last / packed conv
    weights are keyed on them) nor go stale when a parameter changes in place."""
    model = hf_model("tiny")
    x = torch.randn(2, 3, 64, 64)
    ref = _run(model, x)
    opt = swiftkern.optimize(copy.deepcopy(model), channels_last=channels_last)
    for _ in range(2):  # build, then cache hits
        with torch.inference_mode():
            got = logits(opt(x))
        assert_close(got, ref, torch.float32, MODEL_RTOL, what="inference_mode logits")
    assert_close(_run(opt, x), ref, torch.float32, MODEL_RTOL, what="no_grad after")
    # an in-place change made inside inference mode is seen (the stem BN's shift)
    with torch.inference_mode():
        for m in (model, opt):
            m.swiftformer.patch_embed.patch_embedding[1].bias.add_(0.5)
        assert_close(logits(opt(x)), logits(model(x)), torch.float32, MODEL_RTOL,
                     what="after an in-place update")


def test_model_built_in_inference_mode():
    """Parameters that are inference tensors: folded weights are rebuilt on every call (no
    version counter to key a cache on), results stay right."""
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        model = hf_model("tiny")
        ref = logits(model(x))
        opt = swiftkern.optimize(copy.deepcopy(model))
        assert_close(logits(opt(x)), ref, torch.float32, MODEL_RTOL, what="logits")
        for m in (model, opt):
            m.swiftformer.patch_embed.patch_embedding[1].bias.add_(0.5)
        assert_close(logits(opt(x)), logits(model(x)), torch.float32, MODEL_RTOL,
                     what="after an in-place update")


def test_empty_batch_like_eager():
    """HF SwiftFormer runs a batch of 0 images in eager (logits [0, classes]), in eval and in
    training; so must the optimized model."""
    model = hf_model("tiny")
    x = torch.randn(0, 3, 64, 64)
    ref = _run(model, x)
    opt = swiftkern.optimize(copy.deepcopy(model))
    got = _run(opt, x)
    assert got.shape == ref.shape == (0, 10)
    # train mode, forward and backward: no warning (eager gives none), BN state as eager's
    import warnings

    for m in (model, opt):
        m.train()
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for m, xi in zip((model, opt), xs):
            logits(m(xi)).sum().backward()
    assert xs[1].grad.shape == xs[0].grad.shape == x.shape
    got_state = opt.state_dict()
    for k, v in model.state_dict().items():
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(got_state[k], v), k


def test_report_says_when_weights_get_packed(monkeypatch):
    """The MKL-packed weight copies cost memory: the report says so where they can be made, and
    not after SWIFTKERN_CPU_PACKED=0 or where no C++ CPU kernel serves."""
    from swiftkern.nn import _base

    _, report = swiftkern.optimize(hf_model("tiny"), return_report=True)
    says = any("SWIFTKERN_CPU_PACKED=0" in n for n in report.notes)
    serves_cpu = any(e.backend == "cpu" for e in report.swapped)
    assert says == (serves_cpu and _base._MKL_PACK)
    monkeypatch.setenv("SWIFTKERN_CPU_PACKED", "0")
    _, report = swiftkern.optimize(hf_model("tiny"), return_report=True)
    assert not any("SWIFTKERN_CPU_PACKED" in n for n in report.notes)
    monkeypatch.delenv("SWIFTKERN_CPU_PACKED")
    _, report = swiftkern.optimize(hf_model("tiny"), backend="reference", return_report=True)
    assert not any("SWIFTKERN_CPU_PACKED" in n for n in report.notes)
