"""Base of the fused modules: built FROM an original module, sharing (not copying) its children,
parameters and buffers under the same names, so state_dict keys, parameter identity and optimizer
state are unchanged, and the original class's forward can always serve as the fallback."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .. import _registry
from .._ext import cpuinfo_field
from ..ops import reference as ref
from ..ops._define import layout_of


def _dotted(module: nn.Module, path: str | None):
    """module.<path> for a dotted path; children and parameters are looked up in _modules /
    _parameters first (this runs on every fused forward; getattr through nn.Module's __getattr__
    costs ~1 us per step). AttributeError when a step is missing."""
    if path is None:
        return None
    obj = module
    for part in path.split("."):
        d = obj.__dict__
        mods, params = d.get("_modules", ()), d.get("_parameters", ())
        if part in mods:
            obj = mods[part]
        elif part in params:
            obj = params[part]
        else:
            obj = getattr(obj, part)
    return obj


class FusedModule(nn.Module):
    """A module that stands in for `original` with fused swiftkern ops."""

    backend: str

    def __init__(self, original: nn.Module, backend: str = "auto") -> None:
        super().__init__()
        self.training = original.training
        for name, child in original._modules.items():
            self._modules[name] = child
        for name, p in original._parameters.items():
            self._parameters[name] = p
        for name, b in original._buffers.items():
            self._buffers[name] = b
        self._non_persistent_buffers_set = set(original._non_persistent_buffers_set)
        # Plain attributes (use_layer_scale, scale_factor, ...) that the original forward reads.
        for k, v in original.__dict__.items():
            if not k.startswith("_") and k != "training" and not hasattr(type(self), k):
                self.__dict__[k] = v
        self.original_cls = type(original)
        self.backend = backend
        self._cache: dict[str, tuple] = {}
        self._plans: dict[tuple, _Plan] = {}

    def __getattr__(self, name: str):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            got = d[store].get(name, d) if store in d else d
            if got is not d:
                return got
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Helper methods of the original class (e.g. Conv2d._conv_forward) that its forward
            # calls on `self`.
            cls = self.__dict__.get("original_cls")
            attr = getattr(cls, name, None) if cls is not None else None
            if callable(attr) and not isinstance(attr, type):
                return attr.__get__(self, type(self))
            raise

    def original_forward(self, *args, **kwargs):
        """The replaced module's own math (used where a fused kernel cannot serve)."""
        return self.original_cls.forward(self, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"replaces={self.original_cls.__module__}.{self.original_cls.__qualname__}, "
            f"backend={self.backend!r}"
        )

    def cached(self, key: str, tensors: list, build):
        """`build()` memoized on the identity and version counter of `tensors`.

        Only used when no autograd graph is needed: then folded weights are computed once and
        recomputed as soon as any source tensor is changed in place (optimizer step,
        load_state_dict) or replaced (.to()), so they are never stale.
        """
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            return build()  # autograd needs the graph from the sources
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return build()  # the graph computes the folded weights from the parameters
        hit = self._cache.get(key)
        if hit is not None:
            old, state, value = hit
            if _unchanged(old, state, tensors):
                return value
        if any(t is not None and t.is_inference() for t in tensors):
            # An inference tensor has no version counter, so an in-place change to it could not
            # be seen: no caching (parameters created under torch.inference_mode). Never stored,
            # so the hit test above never reads an inference tensor's version.
            return build()
        # Built outside inference mode (and without grad): the value must itself be a normal
        # tensor, since caches key on each other's values (the channels_last copy of a folded
        # weight) and an inference tensor could not serve as a key.
        with torch.inference_mode(False), torch.no_grad():
            value = _detached(build())
        if hit is not None:
            self._drop_plans()  # they may hold the value this one replaces
        self._cache[key] = (list(tensors), _snapshot(tensors), value)
        return value

    def call_op(self, op, *args, record: dict | None = None):
        """``op(*args)`` (backend last). Plain eager calls whose first backend is "cpu" run the
        C++ kernel directly (OpDef.call_cpu_variant; anything it refuses takes the plain call),
        with two fast paths, both computing the op's own math:

        - bf16 / fp16 activations: the C++ kernel gets this module's parameters as cached fp32
          up-conversions (it would convert them on every call; the outputs are bit-identical).
          Parameters are the Tensor arguments other than x and ``residual``.
        - packed weights (MKL's sgemm format, or oneDNN's 1x1-convolution format where
          _pack_kind picks it; fp32 GEMM summation order differs, within the fp32 tolerance):
          conv_block / mlp on channels_last x whose shape runs the whole-tensor pointwise GEMMs
          (swiftkern_C::pointwise_packable), and additive_attention's qk / final GEMMs from
          _ATTN_PACK_MIN_BYTES on. The weights are packed once per row count and cached (at most
          _MAX_PACKED row counts per module); for bf16 / fp16 x the fp32 copies above are the
          ones packed. SWIFTKERN_CPU_PACKED=0 turns this off, SWIFTKERN_CPU_PACK=mkl|onednn
          forces the format (A/B benchmarks).

        record: when a dict, the C++ call that computed the result on those paths is stored in
        it ("fn", "args": the kernel and its whole argument list), for a call plan (see
        FusedModule.planned); left empty when anything else computed it.
        """
        x = args[0]
        if x.device.type != "cpu":
            return op(*args)
        half = x.dtype in (torch.bfloat16, torch.float16)
        packed = (
            (half or x.dtype == torch.float32) and op.name in _PACKED_WEIGHTS and _packed_on()
        )

        def run(fargs):
            if half:
                self._fp32_params(op, fargs)
            out = self._run_packed(op, fargs, record) if packed else None
            return out if out is not None else _run_cpu(op, fargs, record)

        return op.call_cpu_variant(args, run)

    def _fp32_params(self, op, fargs) -> None:
        """Replaces the parameters in fargs by this module's cached fp32 copies."""
        pos = [i for i in op.tensor_args if i > 0 and op.arg_names[i] != "residual"]
        params = [fargs[i] for i in pos]
        conv = self.cached(
            "fp32:" + op.name, params, lambda: [None if t is None else t.float() for t in params]
        )
        for i, t in zip(pos, conv):
            fargs[i] = t

    def _run_packed(self, op, fargs, record=None):
        """The *_packed C++ kernel on this module's cached packed weights (MKL's sgemm format, or
        oneDNN's where _pack_kind picks it), or None where the shape is not one the packed GEMMs
        serve."""
        x = fargs[0]
        n1, n2 = _PACKED_WEIGHTS[op.name]
        w1, w2 = fargs[op.arg_names.index(n1)], fargs[op.arg_names.index(n2)]
        ws = [w for w in (w1, w2) if w is not None]
        if any(w.dtype != torch.float32 for w in ws):
            return None
        if any(w.is_inference() for w in ws):
            return None  # `cached` cannot keep a copy of these: it would pack on every call
        if op.name == "additive_attention":
            # tokens [B, N, D]: qk and final are whole-tensor GEMMs; small weights do not pay
            if x.dim() != 3 or w1.numel() * w1.element_size() < _ATTN_PACK_MIN_BYTES:
                return None
            rows = x.shape[0] * x.shape[1]
        else:
            plans = self.__dict__.setdefault("_packable", {})
            key = (op.name, x.shape, x.stride(), x.dtype, torch.get_num_threads())
            plan = plans.get(key)
            if plan is None:
                if len(plans) >= 64:
                    plans.clear()
                plan = plans[key] = bool(torch.ops.swiftkern_C.pointwise_packable(x, w1, w2))
            if not plan:
                return None
            rows = x.shape[0] * x.shape[2] * x.shape[3]
        if rows == 0:
            return None
        kind = _pack_kind(rows, w1)
        ck = f"{kind}:{op.name}:{rows}"
        fresh = ck not in self._cache
        p1, p2 = self.cached(
            ck,
            [w1, w2],
            lambda: tuple(None if w is None else _pack(w, rows, kind) for w in (w1, w2)),
        )
        if fresh and ck in self._cache:  # keep the newest few packed copies (each a weight copy)
            # list(): a snapshot (another thread may insert meanwhile); pop: or evict first
            mine = (f"mkl:{op.name}:", f"onednn:{op.name}:")
            old = [k for k in list(self._cache) if k.startswith(mine) and k != ck]
            for k in old[: max(0, len(old) + 1 - _MAX_PACKED)]:
                self._cache.pop(k, None)
                self._drop_plans()  # they may hold the packed weights just evicted
        # detached: the kernel's worker threads do not run in the caller's grad mode
        fargs = [a.detach() if isinstance(a, torch.Tensor) and a.requires_grad else a
                 for a in fargs]
        fn = getattr(torch.ops.swiftkern_C, op.name + "_packed").default
        out = fn(*fargs, p1, p2)
        if record is not None:
            record.update(fn=fn, args=[*fargs, p1, p2])
        return out

    def planned(self, x: torch.Tensor, sources, slow, inputs: tuple[int, ...] = (0,),
                extra=()):
        """``slow(record)`` (the module's own path, ending in ``call_op(..., record=record)``),
        or a replay of the C++ call it made last time for an input like ``x``: a *call plan*.

        A plan skips the Python between the module call and the kernel (folding-cache checks,
        validation, backend dispatch, packing decisions: ~50 us per conv-block call before
        plans, 9-16 us with them; benchmarks/plan_overhead.py). It is replayed only when nothing
        the slow path reads can have changed:

        - the call needs no autograd graph (grad mode off) and is a plain eager CPU call on a
          plain tensor (no compile / export / jit tracing, torch function or dispatch modes);
        - SWIFTKERN_PLANS is not "0" (A/B benchmarks, or to rule plans out);
        - the key matches: x's shape, strides and dtype, torch.get_num_threads(),
          SWIFTKERN_CPU_PACKED, self.backend and ``extra`` (the module's other inputs);
        - ``sources()`` (called on every eligible call; None: no plan) returns the same tensor
          objects as when the plan was made, each at the same version, dtype and device — the
          module's parameters and buffers, fetched afresh, so a replaced child, parameter or
          buffer, an in-place update or a .to() all send the call down the slow path, which
          records a new plan. sources() also returns None whenever the module's mode means the
          slow path would not end in one C++ call (train mode, BN on batch statistics).

        inputs: positions in the kernel's argument list that are the module input x (the MLP's
        residual is x in the encoder block). A plan that fails to replay is dropped.
        """
        key = _plan_key(x, self.backend, extra)
        if key is None:
            return slow(None)
        srcs = sources()
        if srcs is None:
            return slow(None)
        plans = self.__dict__.setdefault("_plans", {})
        plan = plans.get(key)
        if plan is not None:
            if plan.valid(srcs):
                out = plan.run(x)
                if out is not None:
                    return out
            plans.pop(key, None)  # (pop: another thread may have dropped it too)
        record: dict = {}
        out = slow(record)
        plan = _Plan.make(srcs, record, inputs, x)
        if plan is not None:
            if len(plans) >= _MAX_PLANS:
                try:  # the oldest goes
                    plans.pop(next(iter(plans)), None)
                except (RuntimeError, StopIteration):  # changed by another thread meanwhile
                    plans.clear()
            plans[key] = plan
        return out

    def _drop_plans(self) -> None:
        plans = self.__dict__.get("_plans")
        if plans:
            plans.clear()

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["_cache"] = {}
        state["_plans"] = {}
        return state


# MKL's packed sgemm (what inductor's CPU freezing uses for fp32 linears): the weight is
# reordered once for a given row count; see packed_linear in csrc/cpu/cpu_common.h.
_MKL_PACK = torch.backends.mkl.is_available() and hasattr(
    torch.ops.mkl, "_mkl_reorder_linear_weight"
)
# op -> names of the two weights its *_packed C++ kernel takes packed copies of
_PACKED_WEIGHTS = {
    "conv_block": ("pw1_w", "pw2_w"),
    "mlp": ("fc1_w", "fc2_w"),
    "additive_attention": ("w_qk", "w_final"),
}
# additive_attention: pack w_qk / w_final from this size of w_qk on (D >= 111). Against the
# unpacked kernel, interleaved per call, 2 threads: 1.04-1.31x at D = 112-512 (batch 1, N = 49 /
# 196), 1.03-1.06x at batch 8 (D = 320-512); 0.94-1.03x at D = 48-96 (not packed).
_ATTN_PACK_MIN_BYTES = 96 << 10
_MAX_PACKED = 2


# oneDNN convolution on a weight reordered once into its blocked layout (what inductor's CPU
# freezing does): a plain F.conv2d reorders the weight on every call. Measured on the SwiftFormer
# downsamples, fp32, 2 threads, channels_last: 1.45x at 112->220 (14x14, batch 1), 1.5x at
# 320->512; the same speed as F.conv2d on the small stem convs. Both the folded convolutions and
# the oneDNN-packed pointwise weights below need the reorder and the convolution op.
_PACKED_CONV = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
    and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
)

# Weights packed for oneDNN's 1x1 convolution instead of MKL's sgemm (see onednn_linear in
# csrc/cpu/cpu_common.h), where that measured faster: on AMD CPUs, at most _ONEDNN_MAX_ROWS
# rows (7x7 at batch 1) with a first weight (pw1 / fc1 / w_qk) of _ONEDNN_MIN_W1_BYTES or more
# (C >= 363 at a 4C hidden; attention D >= 512). AMD EPYC Zen 3, 2 threads, interleaved: a conv
# block's two GEMMs 1.20x [IQR 1.13-1.25] at C = 384 and 1.32x [1.27-1.36] at C = 512 (7x7,
# batch 1), MKL ahead or even elsewhere (0.77-0.98x at C = 64-224, 1.02-1.06x at 196-392 rows);
# the fused HF attention 1.11x [1.08-1.15] at D = 512, 1.02x at 384, 0.83x at 220 (49 tokens).
# Intel CPUs keep MKL, where its packed path was measured (never compared with oneDNN there).
# SWIFTKERN_CPU_PACK=mkl|onednn forces one kind wherever weights are packed (A/B benchmarks).
_ONEDNN_PACK = _PACKED_CONV and cpuinfo_field("vendor_id") == "AuthenticAMD"
_ONEDNN_MAX_ROWS = 64
_ONEDNN_MIN_W1_BYTES = 2 << 20


_MAX_PLANS = 4


def _plan_key(x: torch.Tensor, backend: str, extra) -> tuple | None:
    """The call-plan key of a module call on x, or None when the call may not use a plan (see
    FusedModule.planned)."""
    if (
        torch.is_grad_enabled()
        or type(x) is not torch.Tensor
        or not x.is_cpu
        or torch.compiler.is_compiling()
        or torch._C._is_torch_function_mode_enabled()
        or torch._C._len_torch_dispatch_stack() > 0
        or torch.jit.is_tracing()
    ):
        return None
    plans, packed, kind = _plan_env()
    if not plans:
        return None
    return (x.shape, x.stride(), x.dtype, torch.get_num_threads(), packed, kind, backend, extra)


# os.environ's own store (POSIX: bytes keys), read directly: os.environ.get costs ~1 us per name
# (key encoding, value decoding) and this runs on every planned module call. Assignments through
# os.environ update it; other platforms read os.environ.
_ENV = getattr(os.environ, "_data", None) if os.name == "posix" else None
if not isinstance(_ENV, dict):
    _ENV = None


def _plan_env() -> tuple[bool, bool, str | bytes | None]:
    """Whether SWIFTKERN_PLANS and SWIFTKERN_CPU_PACKED are on now (unless set to "0"), and
    SWIFTKERN_CPU_PACK's value (None when unset; bytes where the store is read directly)."""
    if _ENV is not None:
        return (_ENV.get(b"SWIFTKERN_PLANS") != b"0", _ENV.get(b"SWIFTKERN_CPU_PACKED") != b"0",
                _ENV.get(b"SWIFTKERN_CPU_PACK"))
    env = os.environ
    return (env.get("SWIFTKERN_PLANS") != "0", env.get("SWIFTKERN_CPU_PACKED") != "0",
            env.get("SWIFTKERN_CPU_PACK"))


class _Plan:
    """One recorded C++ kernel call of a fused module (see FusedModule.planned)."""

    __slots__ = ("srcs", "state", "fn", "args", "inputs", "fmt", "relu")

    @staticmethod
    def make(srcs: list, record: dict, inputs: tuple[int, ...], x: torch.Tensor):
        if "fn" not in record:
            return None  # the slow path did not end in one recorded C++ call
        if any(t is not None and t.is_inference() for t in srcs):
            return None  # no version counter: an in-place change could not be seen
        args = list(record["args"])
        for i in inputs:
            args[i] = None  # filled with x on each replay
        if any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return None
        p = _Plan()
        p.srcs, p.state = list(srcs), _snapshot(srcs)
        p.fn, p.args, p.inputs = record["fn"], args, inputs
        # the op layout contract (see ops/_define.py), or as returned (None: convolutions)
        p.fmt = record.get("fmt", layout_of(x) if x.dim() == 4 else torch.contiguous_format)
        p.relu = record.get("relu", False)  # in place on the fresh output (no autograd here)
        return p

    def valid(self, srcs: list) -> bool:
        return _unchanged(self.srcs, self.state, srcs)

    def run(self, x: torch.Tensor):
        """The kernel's output with the op's layout contract, or None when the kernel refused
        (the caller then takes the slow path, which says why or falls back)."""
        if x.requires_grad:
            x = x.detach()  # the kernel's worker threads do not run in the caller's grad mode
        args = list(self.args)
        for i in self.inputs:
            args[i] = x
        try:
            out = self.fn(*args)
        except (NotImplementedError, _registry.Unsupported):
            return None
        if not isinstance(out, torch.Tensor):
            return None
        if self.fmt is not None:
            out = out.contiguous(memory_format=self.fmt) if out.dim() == 4 else out.contiguous()
        return torch.relu_(out) if self.relu else out


def _snapshot(tensors: list) -> list:
    """What `_unchanged` compares: each tensor's version, dtype and device (None for None)."""
    return [None if t is None else (t._version, t.dtype, t.device) for t in tensors]


def _unchanged(old: list, state: list, tensors: list) -> bool:
    """`tensors` are the objects in `old`, each still at the version, dtype and device in
    `state` (_snapshot): an in-place change, a replaced tensor or a .to() all fail it."""
    if len(old) != len(tensors):
        return False
    for a, t, st in zip(old, tensors, state):
        if a is not t or (t is not None and (t._version, t.dtype, t.device) != st):
            return False
    return True


def _run_cpu(op, fargs, record) -> torch.Tensor:
    """The op's registered C++ CPU kernel on fargs (what dispatch runs first on a CPU)."""
    fn = _registry.kernel_for(op.name, "cpu").fn
    out = fn(*fargs)
    if record is not None:
        # the op itself: _Plan.run detaches x and turns its refusal into the slow path
        record.update(fn=getattr(fn, "raw", fn), args=list(fargs))
    return out


def _packed_on() -> bool:
    return _MKL_PACK and _plan_env()[1]


def _pack_kind(rows: int, w1: torch.Tensor) -> str:
    """"mkl" or "onednn": how _run_packed packs weights for `rows` input rows, w1 the first
    (SWIFTKERN_CPU_PACK=mkl|onednn forces one; any other value, or none, picks)."""
    forced = _plan_env()[2]
    if isinstance(forced, bytes):
        forced = forced.decode(errors="replace")
    if forced == "mkl" or (forced == "onednn" and _PACKED_CONV):
        return forced
    if _ONEDNN_PACK and rows <= _ONEDNN_MAX_ROWS and w1.numel() * 4 >= _ONEDNN_MIN_W1_BYTES:
        return "onednn"
    return "mkl"


def _pack(w: torch.Tensor, rows: int, kind: str) -> torch.Tensor:
    """w [N, K] packed for `rows` rows: MKL's sgemm format (2-D), or oneDNN's 1x1-convolution
    weight format (4-D [N, K, 1, 1], for an input [1, K, 1, rows]); packed_linear in
    csrc/cpu/cpu_common.h tells them apart by rank."""
    w = w.contiguous()
    if kind == "onednn":
        n, k = w.shape
        return torch.ops.mkldnn._reorder_convolution_weight(
            w.view(n, k, 1, 1), [0, 0], [1, 1], [1, 1], 1, [1, k, 1, rows]
        )
    return torch.ops.mkl._mkl_reorder_linear_weight(w, rows)


def _detached(value):
    """A cached value with its tensors (top level, or in a tuple / list) detached: cached values
    serve only calls that build no graph, and views of parameters made under no_grad still say
    requires_grad, which made every kernel call detach them again (~110 detach calls per
    SwiftFormer-XS forward). detach() shares storage and version counter: nothing is copied."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(v.detach() if isinstance(v, torch.Tensor) else v for v in value)
    return value


def vector(t) -> torch.Tensor | None:
    """A per-channel parameter ([C], [C,1,1], LayerScale gamma) as a flat [C] view, or None."""
    if t is None:
        return None
    return t.reshape(-1)


def bn_uses_batch_stats(bn: nn.BatchNorm2d) -> bool:
    # _buffers lookup instead of attribute access: this runs on every fused forward
    return bn.training or not bn.track_running_stats or bn._buffers.get("running_mean") is None


def fold_sources(*modules: nn.Module | None) -> list:
    """Every tensor a folded / re-parameterized weight is computed from, the cache key of
    `cached`: weight, bias, running statistics and layer-scale gamma of each module (None where a
    module has none). Direct _parameters / _buffers lookups: this runs on every fused forward."""
    out: list = []
    for m in modules:
        if m is None:
            continue
        p, b = m._parameters, m._buffers
        out += (p.get("weight"), p.get("bias"), b.get("running_mean"), b.get("running_var"),
                p.get("gamma"))
    return out


def bn_after_forward(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, x: torch.Tensor):
    """Running-stat bookkeeping of nn.BatchNorm2d after a batch-statistics forward over x."""
    count = x.shape[0] * x.shape[2] * x.shape[3]
    if not (bn.training and bn.track_running_stats):
        return
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    if bn.running_mean is not None and count > 0:  # an empty batch leaves them (as nn.BatchNorm2d)
        ref.update_running_stats(
            bn.running_mean, bn.running_var, mean.detach(), var.detach(), count, momentum
        )


def fold_conv_bn(conv_w, conv_b, bn: nn.BatchNorm2d):
    return ref.fold_bn(conv_w, conv_b, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)



def _plain_cpu_call(x: torch.Tensor, w: torch.Tensor, b) -> bool:
    """A CPU call with no autograd graph to build, outside tracers, compilers and modes: the
    only calls the conv routes below serve (a graph sees the plain F.conv2d)."""
    return (
        type(x) is torch.Tensor
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.numel() > 0
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch._C._is_torch_function_mode_enabled()
        and torch._C._len_torch_dispatch_stack() == 0
        and not (
            torch.is_grad_enabled()
            and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad))
        )
    )


def _packed_conv_ok(x: torch.Tensor, w: torch.Tensor, b, conv: nn.Module) -> bool:
    return (
        _PACKED_CONV
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        # channels_last inputs only: for NCHW ones oneDNN hands back a channels_last output,
        # where F.conv2d keeps NCHW
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and _plain_cpu_call(x, w, b)
    )


def _cpu_flag(name: str) -> bool:
    probe = getattr(torch.cpu, name, None)
    return bool(probe()) if probe is not None else False


def _native_half_conv(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs convolutions in this half dtype on this CPU with half-precision
    arithmetic (bf16: AVX512-BF16 / AMX; fp16: AVX512-FP16 / AMX-FP16).

    torch.ops.mkldnn._is_mkldnn_bf16_supported() alone is not that test: it is also true on
    AVX-512 CPUs without AVX512-BF16, where oneDNN emulates bf16 (converting to fp32 inside) and
    ran the SwiftFormer stem / downsample convolutions 2.5-3.6x slower than its fp32 kernels
    (session 10, Intel Xeon with AVX-512 F/BW/VL/DQ, 2 threads, batch 1, channels_last)."""
    if dtype == torch.bfloat16:
        native = _cpu_flag("_is_avx512_bf16_supported") or _cpu_flag("_is_amx_tile_supported")
        return native and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_fp16_supported()


def _half_conv_in_fp32(x: torch.Tensor, w: torch.Tensor, b) -> bool:
    """bf16 / fp16 conv on a CPU whose oneDNN has no kernels for that dtype: ATen then runs its
    reference convolution (im2col + a scalar-path GEMM), measured 16 of the 35 ms of a bf16
    SwiftFormer-XS at batch 1 here (AVX2, 2 threads). It is computed in fp32 instead, on the
    same half-precision values: exact products, fp32 accumulation, one rounding to x's dtype
    (what a native half conv with fp32 accumulation gives)."""
    return (
        x.dtype in (torch.bfloat16, torch.float16)
        and w.dtype == x.dtype
        and (b is None or b.dtype == x.dtype)
        and _plain_cpu_call(x, w, b)
        and not _native_half_conv(x.dtype)
    )


def relu_on_output(y: torch.Tensor) -> torch.Tensor:
    """ReLU of a convolution's fresh output: in place unless autograd records it (relu's
    backward reads its own output)."""
    return torch.relu(y) if torch.is_grad_enabled() and y.requires_grad else torch.relu_(y)


def folded_conv2d(
    owner: FusedModule, x: torch.Tensor, w, b, conv: nn.Conv2d, relu: bool = False,
    record: dict | None = None,
) -> torch.Tensor:
    """conv2d with a folded (w, b) and the hyper-parameters of `conv`.

    Without autograd on channels_last fp32 CPU tensors it runs oneDNN's convolution on a weight
    reordered once and cached on `owner` (see _PACKED_CONV). Otherwise F.conv2d; for a
    channels_last input the weight is then kept channels_last (cached too): given an NCHW weight,
    oneDNN reorders it on every call (measured 0.15-0.37 ms for a 220x112x3x3 weight here).
    bf16 / fp16 without native CPU kernels: the same routes in fp32 (see _half_conv_in_fp32).
    relu: ReLU as well, in place on the convolution's fresh output where autograd does not record
    it (no second activation-sized allocation). Not oneDNN's relu post-op: it turns NaN into 0,
    where torch.relu keeps NaN. ReLU commutes with the final rounding of the half route.
    record: as for FusedModule.call_op; the two fp32 / native-dtype routes record their call
    (output layout as returned, the ReLU in place), the half route records nothing."""
    if _half_conv_in_fp32(x, w, b):
        w32 = owner.cached("conv_fp32_w", [w], lambda: w.float())
        b32 = None if b is None else owner.cached("conv_fp32_b", [b], lambda: b.float())
        return folded_conv2d(owner, x.float(), w32, b32, conv, relu).to(x.dtype)
    if _packed_conv_ok(x, w, b, conv):
        pad, stride, dil = list(conv.padding), list(conv.stride), list(conv.dilation)
        packed = owner.cached(
            "conv_packed",
            [w],
            lambda: torch.ops.mkldnn._reorder_convolution_weight(
                w.contiguous(), pad, stride, dil, conv.groups, list(x.shape)
            ),
        )
        fn = torch.ops.mkldnn._convolution_pointwise.default
        args = [x, packed, b, pad, stride, dil, conv.groups, "none", [], ""]
        y = fn(*args)
        y = y.contiguous(memory_format=torch.channels_last)  # F.conv2d's layout (a no-op)
        if record is not None:
            record.update(fn=fn, args=args, fmt=torch.channels_last, relu=relu)
        return relu_on_output(y) if relu else y
    if (
        x.dim() == 4
        and w.dim() == 4
        and w.shape[-1] * w.shape[-2] > 1
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        w = owner.cached("conv_cl", [w], lambda: w.contiguous(memory_format=torch.channels_last))
    args = [x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups]
    y = F.conv2d(*args)
    if record is not None and _plain_cpu_call(x, w, b):
        record.update(fn=F.conv2d, args=args, fmt=None, relu=relu)
    return relu_on_output(y) if relu else y
