"""Call plans of the fused modules (swiftkern/nn/_base.py FusedModule.planned): a repeated
eager no-grad CPU call replays the C++ kernel call recorded the first time, and never when
anything that call depended on has changed."""

from __future__ import annotations

import copy

import pytest
import torch
from models import Holder, randomize_
from test_modules import _hf, _modules
from tolerances import assert_close

from swiftkern import _registry
from swiftkern.nn import _base
from swiftkern.optimize import optimize


def _needs_cpu_kernels():
    if _registry.resolve("conv_block", "auto", torch.device("cpu"), torch.float32) != "cpu":
        pytest.skip("no C++ CPU kernels loaded")


def _fused(model):
    return [m for m in model.modules() if isinstance(m, _base.FusedModule)]


def _n_plans(model) -> int:
    return sum(len(m.__dict__.get("_plans", {})) for m in _fused(model))


@pytest.fixture
def replays(monkeypatch):
    """Counts plan replays (calls of _Plan.run)."""
    count = [0]
    run = _base._Plan.run

    def counting(self, x):
        count[0] += 1
        return run(self, x)

    monkeypatch.setattr(_base._Plan, "run", counting)
    return count


def _no_slow_path(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the slow path ran where a plan should have been replayed")

    monkeypatch.setattr(_base.FusedModule, "call_op", refuse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("idx", range(20))
def test_plan_replays_the_same_call(idx, layout, dtype, monkeypatch, replays):
    """Every fused module kind, both families, fp32 and bf16, both layouts: the second call is a
    replay (the slow path is not entered) and bit for bit the slow path's result."""
    _needs_cpu_kernels()
    name, module, x = _modules()[idx]
    randomize_(module.eval(), idx)
    if layout == "channels_last":
        if x.dim() != 4:
            pytest.skip("token input")
        x = x.contiguous(memory_format=torch.channels_last)
    opt = optimize(Holder(copy.deepcopy(module)))
    if dtype != torch.float32:
        opt = opt.to(dtype)
    x = x.to(dtype)
    with torch.no_grad():
        first = opt(x)
        assert _n_plans(opt) > 0, f"{name}: no plan was recorded"
        with monkeypatch.context() as mp:
            mp.setenv("SWIFTKERN_PLANS", "0")
            slow = opt(x)
        with monkeypatch.context() as mp:
            _no_slow_path(mp)
            again = opt(x)
        if dtype == torch.float32:
            assert_close(again, module(x), what=name)
    assert replays[0] > 0
    assert again.dtype == slow.dtype and again.shape == slow.shape
    assert again.stride() == slow.stride(), "the output layout differs from the slow path's"
    assert torch.equal(again, slow) and torch.equal(first, slow), name


def _block():
    """An HF encoder block (conv block, attention, MLP with x as residual) and a ConvEncoder,
    optimized, with a deep copy of the originals to compare against."""
    _needs_cpu_kernels()
    cfg, hf = _hf()
    seq = torch.nn.Sequential(
        hf.SwiftFormerEncoderBlock(cfg, 24), hf.SwiftFormerConvEncoder(cfg, 24)
    )
    randomize_(seq.eval(), 3)
    return seq, optimize(copy.deepcopy(seq))


def _x(b=2, h=6, w=7):
    return torch.randn(b, 24, h, w).contiguous(memory_format=torch.channels_last)


def _recorded(calls: int = 1):
    """_block() and an input it was called on `calls` times without grad (plans recorded, and
    replayed from the second call)."""
    seq, opt = _block()
    x = _x()
    with torch.no_grad():
        for _ in range(calls):
            opt(x)
    return seq, opt, x


def test_plans_follow_in_place_changes():
    seq, opt, x = _recorded()
    with torch.no_grad():
        for m in (seq, opt):  # an optimizer step, and BN statistics moved in place
            for p in m.parameters():
                p.mul_(0.75)
            for b in m.buffers():
                if b.is_floating_point():
                    b.mul_(1.5)
        assert_close(opt(x), seq(x), what="after in-place changes")


def test_plans_follow_replaced_parameters_and_children():
    seq, opt, x = _recorded()
    with torch.no_grad():
        w = torch.randn_like(seq[0].linear.fc1.weight)
        for m in (seq, opt):  # a new Parameter object, and a new child module
            m[0].linear.fc1.weight = torch.nn.Parameter(w.clone())
        conv = torch.nn.Conv2d(24, 96, 1)
        seq[1].point_wise_conv1 = conv
        opt[1].point_wise_conv1 = copy.deepcopy(conv)
        assert_close(opt(x), seq(x), what="after replacing a parameter and a child")


@pytest.mark.parametrize("how", ["to", "data"])
def test_plans_follow_dtype_changes(how):
    """.to() (parameters) and ``.data =`` (any tensor) change a dtype without bumping the
    version: a plan made for fp32 weights must not serve fp32 input once the module is fp64
    (eager raises there too)."""
    seq, opt, x = _recorded()
    with torch.no_grad():
        if how == "to":
            opt.double()
            seq.double()
        else:  # keeps every tensor object, buffers included
            for m in (seq, opt):
                for t in [*m.parameters(), *m.buffers()]:
                    if t.is_floating_point():
                        t.data = t.data.double()
        with pytest.raises((RuntimeError, TypeError, ValueError)):
            seq(x)
        with pytest.raises((RuntimeError, TypeError, ValueError)):
            opt(x)
        assert_close(opt(x.double()), seq(x.double()), what="fp64")


@pytest.mark.parametrize("which", ["model", "bn"])
def test_plans_follow_train_mode(which):
    """Train mode (under no_grad) updates the BN statistics like the original: no plan made in
    eval may serve it, also when only a child BN is switched."""
    seq, opt, x = _recorded(2)
    with torch.no_grad():
        for m in (seq, opt):
            if which == "model":
                m.train()
            else:
                m[1].norm.train()  # the ConvEncoder's BN alone
        assert_close(opt(x), seq(x), what=f"train ({which})")
        for (name, a), b in zip(seq.named_buffers(), opt.buffers()):
            if a.is_floating_point():
                assert_close(b, a, what=f"{name} updated as the original's")
            else:
                assert torch.equal(a, b), name


def test_plan_key_covers_backend_threads_and_grad(replays):
    seq, opt, x = _recorded(2)
    with torch.no_grad():
        n = replays[0]
        assert n > 0
        for m in _fused(opt):
            m.backend = "reference"
        assert_close(opt(x), seq(x), what="reference backend")
        assert replays[0] == n, "a plan recorded for backend 'auto' served backend 'reference'"
        for m in _fused(opt):
            m.backend = "auto"
        threads = torch.get_num_threads()
        plans = _n_plans(opt)
        try:
            torch.set_num_threads(1 if threads > 1 else 2)
            opt(x)
            assert _n_plans(opt) > plans, "no new plan for another thread count"
        finally:
            torch.set_num_threads(threads)
    n = replays[0]
    xg = x.clone().requires_grad_(True)
    out = opt(xg)
    assert replays[0] == n and out.grad_fn is not None
    out.sum().backward()
    assert xg.grad is not None


def test_plans_are_bounded_and_not_copied():
    seq, opt = _block()
    with torch.no_grad():
        for hw in range(3, 3 + 2 * _base._MAX_PLANS):
            opt(_x(1, hw, hw))
    for m in _fused(opt):
        assert len(m._plans) <= _base._MAX_PLANS
    assert _n_plans(opt) > 0
    clone = copy.deepcopy(opt)
    assert _n_plans(clone) == 0
    x = _x()
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(0.5)
        assert_close(opt(x), seq(x), what="original after its copy changed")


def test_refused_replay_takes_the_slow_path():
    seq, opt, x = _recorded()

    def refuse(*a):
        raise NotImplementedError("refused")

    with torch.no_grad():
        for m in _fused(opt):
            for plan in m._plans.values():
                plan.fn = refuse
        assert_close(opt(x), seq(x), what="after a refused replay")
        for m in _fused(opt):
            assert all(p.fn is not refuse for p in m._plans.values()), "the refused plan stayed"


def test_no_plans_for_inference_tensors():
    """Parameters created under inference_mode have no version counter: no plan."""
    _needs_cpu_kernels()
    cfg, hf = _hf()
    with torch.inference_mode():
        m = randomize_(hf.SwiftFormerConvEncoder(cfg, 24).eval())
        opt = optimize(Holder(m))
        x = _x()
        opt(x)
        opt(x)
    assert _n_plans(opt) == 0


def test_plans_hold_only_cached_packed_weights():
    """Plans may hold MKL-packed weights; evicting a row count from the cache drops them, so
    the packed copies alive stay those the cache bounds (_MAX_PACKED per module)."""
    _needs_cpu_kernels()
    if not _base._MKL_PACK:
        pytest.skip("no MKL packing in this torch build")
    cfg, hf = _hf()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the packing rule depends on it; the shapes are chosen for 2
    try:
        m = randomize_(hf.SwiftFormerConvEncoder(cfg, 130).eval())
        opt = optimize(Holder(m))
        with torch.no_grad():
            for b in (1, 2, 3, 4, 1):
                opt(torch.randn(b, 130, 7, 5).contiguous(memory_format=torch.channels_last))
    finally:
        torch.set_num_threads(threads)
    seen = 0
    for f in _fused(opt):
        cached = [v for k, (_s, _v, vals) in f._cache.items() if k.startswith("mkl:")
                  for v in vals]
        for plan in f._plans.values():
            for a in plan.args:
                if isinstance(a, torch.Tensor) and a.layout == torch._mkldnn:
                    seen += 1
                    assert any(a is c for c in cached), "a plan holds an evicted packed weight"
    assert seen > 0, "no plan used packed weights (the test shape no longer packs)"


def test_plan_switches_are_read_per_call(monkeypatch):
    """SWIFTKERN_PLANS, SWIFTKERN_CPU_PACKED and SWIFTKERN_CPU_PACK are read on every call (the
    A/B benchmarks flip them in-process); the plan key holds the packing switch and kind."""
    x = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        key = _base._plan_key(x, "auto", ())
        assert key is not None
        monkeypatch.setenv("SWIFTKERN_PLANS", "0")
        assert _base._plan_key(x, "auto", ()) is None
        monkeypatch.setenv("SWIFTKERN_PLANS", "1")
        assert _base._plan_key(x, "auto", ()) == key
        monkeypatch.setenv("SWIFTKERN_CPU_PACKED", "0")
        assert _base._plan_key(x, "auto", ()) != key
        assert not _base._packed_on()
        monkeypatch.delenv("SWIFTKERN_CPU_PACKED")
        assert _base._plan_key(x, "auto", ()) == key
        assert _base._packed_on() == _base._MKL_PACK
        monkeypatch.setenv("SWIFTKERN_CPU_PACK", "mkl")
        mkl_key = _base._plan_key(x, "auto", ())
        assert mkl_key not in (None, key)
        monkeypatch.setenv("SWIFTKERN_CPU_PACK", "onednn")
        assert _base._plan_key(x, "auto", ()) not in (None, key, mkl_key)
        monkeypatch.delenv("SWIFTKERN_CPU_PACK")
        assert _base._plan_key(x, "auto", ()) == key
    assert _base._plan_key(x, "auto", ()) is None  # grad mode on: no plan


@pytest.mark.parametrize("family", ["hf", "timm"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_whole_model_plans(family, layout, monkeypatch, replays):
    """A whole model (stem / downsample convolutions with folded BN and ReLU too): the second
    call replays a plan in every fused module kind that has one, bit for bit the slow path's
    result, and follows an in-place change of the stem's first convolution."""
    from models import hf_model, logits, timm_model

    _needs_cpu_kernels()
    model = (hf_model("tiny") if family == "hf" else timm_model("swiftformer_xs")).eval()
    opt = optimize(copy.deepcopy(model))
    x = torch.randn(1, 3, 40, 48)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        opt(x)
        with monkeypatch.context() as mp:
            mp.setenv("SWIFTKERN_PLANS", "0")
            slow = logits(opt(x))
        again = logits(opt(x))
        assert torch.equal(again, slow)
        kinds = {type(m).__name__ for m in _fused(opt) if m.__dict__.get("_plans")}
        assert {"FusedConvBlock", "FusedMlp", "FusedAdditiveAttention"} <= kinds, kinds
        assert kinds & {"FoldedConv2d", "FusedConvBN"}, kinds
        assert replays[0] > 0
        stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        stem_opt = next(m for m in opt.modules() if isinstance(m, torch.nn.Conv2d)
                        or type(m).__name__ == "FoldedConv2d")
        assert stem_opt.weight.shape == stem.weight.shape
        for w in (stem.weight, stem_opt.weight):
            w.mul_(-1.5)
        assert_close(logits(opt(x)), logits(model(x)), what=f"{family} after a stem change")


def test_concurrent_calls_from_threads():
    """One optimized model called from several Python threads at once, with row counts that
    make the packed-weight cache evict and plans be dropped and re-recorded concurrently: every
    result equals the single-threaded one, nothing raises."""
    import threading

    _needs_cpu_kernels()
    cfg, hf = _hf()
    seq = torch.nn.Sequential(
        hf.SwiftFormerEncoderBlock(cfg, 130), hf.SwiftFormerConvEncoder(cfg, 130)
    )
    randomize_(seq.eval(), 5)
    opt = optimize(copy.deepcopy(seq))
    xs = [torch.randn(b, 130, 7, 5).contiguous(memory_format=torch.channels_last)
          for b in (1, 2, 3, 4)]
    with torch.no_grad():
        want = [seq(x) for x in xs]
    errors: list = []

    def work(k):
        try:
            with torch.no_grad():
                for i in range(12):
                    j = (i + k) % len(xs)
                    assert_close(opt(xs[j]), want[j], what=f"thread {k} call {i}")
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
