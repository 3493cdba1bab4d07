"""swiftkern.optimize(model): swap fused modules into a model, with a report of what happened."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field

import torch
from torch import nn

from . import _alloc, _registry
from .nn import _base as _fused_base
from .nn._base import FusedModule
from .patch import Rule, generic, rules

_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6, torch.bfloat16: 5e-2, torch.float16: 1e-2}


@dataclass
class Entry:
    path: str
    original: str
    status: str  # "swapped" | "skipped"
    fused: str = ""
    backend: str = ""
    reason: str = ""


@dataclass
class OptimizeReport:
    """What optimize() swapped (with the backend serving it) and what it skipped, and why."""

    entries: list[Entry] = field(default_factory=list)
    backend: str = "auto"
    dtype: torch.dtype | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def swapped(self) -> list[Entry]:
        return [e for e in self.entries if e.status == "swapped"]

    @property
    def skipped(self) -> list[Entry]:
        return [e for e in self.entries if e.status == "skipped"]

    def __str__(self) -> str:
        rows = [("module", "original", "status", "fused / reason", "backend")]
        for e in self.entries:
            rows.append(
                (
                    e.path or "<root>",
                    e.original,
                    e.status,
                    e.fused if e.status == "swapped" else e.reason,
                    e.backend,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [
            f"swiftkern.optimize: {len(self.swapped)} swapped, {len(self.skipped)} skipped "
            f"(backend={self.backend}, dtype={self.dtype})"
        ]
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _check_backend(backend: str, device: torch.device) -> None:
    if backend not in _registry.BACKENDS:
        raise ValueError(f"backend must be one of {_registry.BACKENDS}, got {backend!r}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend='cpu' needs a model on the CPU, the model is on {device}")
    if backend in ("cuda", "triton") and device.type != "cuda":
        raise ValueError(
            f"backend={backend!r} needs a model on a CUDA device, the model is on "
            f"{device}; move it with model.cuda() first or use backend='auto'"
        )


def _serving(rule: Rule, backend: str, device, dtype) -> tuple[str | None, str]:
    """(backend name serving every op of the rule, or None with the reason)."""
    names = []
    for op in rule.ops:
        name = _registry.resolve(op, backend, device, dtype)
        if name is None:
            return None, f"no backend serves {op} for {device.type}/{dtype}"
        if backend == "auto" and name == "reference":
            return None, (
                f"no fused kernel for {op} on {device.type}/{dtype} (the reference "
                "would not be faster than the original)"
            )
        names.append(name)
    return ("+".join(sorted(set(names))) or "torch"), ""


# backend="auto" on CPU: widest block whose C++ kernel measured faster than the eager module
# (2 threads, `swiftkern bench ops --shape ...`). mlp at C=384 ran 0.81x of eager at batch 8 and
# attention at D=384-512 0.98-1.08x (1.2x at batch 1), dwconv_bn at C=384 batch 8 0.93x (2.6x at
# batch 1); at C<=256 every op was 1.1-3.7x faster.
# conv_block has no limit: since its wide shapes run the big-GEMM strategy it measured 1.01-1.30x
# at C=320/384/512 (it ran 0.6-0.9x with per-tile GEMMs).
CPU_AUTO_MAX_CHANNELS = 256
CPU_AUTO_LIMITED_OPS = ("mlp", "additive_attention", "dwconv_bn")
# ...except where the model runs channels_last inside (ChannelsLastInside): there the mlp and the
# encoder block with its attention measured faster than eager at every width tried (HF modules,
# 2 threads, session 4: mlp 1.04-1.38x, encoder block 1.08-1.38x at C = 320 / 384 / 512, 7x7 and
# 14x14, batch 1 / 2 / 8), while on NCHW input at batch 8 the mlp ran 0.80x (C=384) / 0.96x
# (C=320). dwconv_bn keeps the limit (not re-measured channels_last).
CPU_AUTO_CL_OK_OPS = ("mlp", "additive_attention")


def _channels(module: nn.Module) -> int | None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d) or getattr(m, "original_cls", None) is nn.Conv2d:
            return m.in_channels
        if isinstance(m, nn.Linear):
            return m.in_features
    return None


def _known_base(module: nn.Module, table: dict[type, Rule]) -> type | None:
    for cls in type(module).__mro__[1:]:
        if cls in table:
            return cls
    return None


def _walk(model: nn.Module, table, backend, device, dtype, report: OptimizeReport, log: list,
          channels_last_inside: bool = False):
    def visit(parent: nn.Module | None, name: str, module: nn.Module, path: str):
        if isinstance(module, FusedModule):
            for cname, child in list(module.named_children()):
                visit(module, cname, child, f"{path}.{cname}" if path else cname)
            return
        for cname, child in list(module.named_children()):
            visit(module, cname, child, f"{path}.{cname}" if path else cname)
        for conv_name, bn_name in generic.pairs(module):
            relu_name = generic.relu_after(module, bn_name)
            log.extend(generic.fold(module, conv_name, bn_name, backend, relu_name))
            p = f"{path}." if path else ""
            conv = module._modules[conv_name]
            relu = f"+{relu_name}" if relu_name else ""
            report.entries.append(
                Entry(
                    f"{p}{conv_name}+{bn_name}{relu}",
                    f"Conv2d+{conv.partner_bn.original_cls.__name__}{'+ReLU' if relu else ''}",
                    "swapped",
                    "FoldedConv2d",
                    "torch",
                )
            )
        cls = type(module)
        rule = table.get(cls)
        if rule is None:
            base = _known_base(module, table)
            if base is not None:
                overrides = cls.forward is not base.forward
                report.entries.append(
                    Entry(
                        path,
                        cls.__qualname__,
                        "skipped",
                        reason=(
                            f"subclass of {base.__qualname__} with its own forward: math unknown"
                            if overrides
                            else f"subclass of {base.__qualname__}: not swapped "
                            "(only exact classes are)"
                        ),
                    )
                )
            return
        reason = rule.check(module)
        serving = ""
        c = _channels(module)
        if (
            reason is None
            and set(rule.ops) & set(CPU_AUTO_LIMITED_OPS)
            and backend == "auto"
            and device.type == "cpu"
            and c is not None
            and c > CPU_AUTO_MAX_CHANNELS
            and not (channels_last_inside and set(rule.ops) <= set(CPU_AUTO_CL_OK_OPS))
        ):
            reason = (
                f"C={c} > {CPU_AUTO_MAX_CHANNELS} with NCHW activations: the CPU kernel "
                "measured slower than the original there; original kept (backend='cpu' forces "
                "it; models that run channels_last inside get it)"
            )
        if reason is None:
            serving, reason = _serving(rule, backend, device, dtype)
        if not serving:
            report.entries.append(Entry(path, cls.__qualname__, "skipped", reason=reason))
            return
        if parent is None:
            raise ValueError("optimize() cannot replace the root module itself; pass its parent")
        try:
            fused = rule.build(module, backend)
        except Exception as e:
            raise RuntimeError(
                f"swiftkern.optimize: building the replacement of {path} ({cls.__qualname__}) "
                f"failed: {type(e).__name__}: {e}. The model was left unchanged."
            ) from e
        parent._modules[name] = fused
        log.append((parent, name, module))
        report.entries.append(
            Entry(path, cls.__qualname__, "swapped", type(fused).__name__, serving)
        )

    visit(None, "", model, "")


class CastInputs:
    """Forward pre-hook of a model optimized with ``dtype=``: floating tensor arguments are cast
    to that dtype. A picklable object (a closure would break pickle of the optimized model)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def _cast(self, t):
        return t.to(self.dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    def __call__(self, module, args, kwargs):
        return tuple(self._cast(a) for a in args), {k: self._cast(v) for k, v in kwargs.items()}


# Fused blocks of the recognized families (SwiftFormer, repvit, fastvit, efficientvit) whose
# kernels prefer channels_last activations: channels_last inside is switched on only for models
# that contain one. Not for models where only generic conv+BN pairs were folded: arbitrary model
# code may .view() an activation, which fails on a channels_last tensor.
_CONV_FUSED = ("FusedConvBlock", "FusedConvBN", "FusedRep", "FusedResidualDwConvBN")


class ChannelsLastInside:
    """Forward hooks on the optimized root: 4-D floating inputs in NCHW run channels_last inside
    the model (the fused kernels work on NHWC tiles and oneDNN's channels_last convolutions are
    faster here: the 3->24 stem conv 2.1 -> 0.35 ms at batch 1), and every 4-D tensor the model
    returns comes back NCHW-contiguous, as the original would return it for NCHW input.
    Eval mode only: in train mode inputs pass unchanged (no training run was measured faster).
    A picklable object (deepcopy / pickle of the optimized model keep working); the per-call
    state lives in a thread-local that is not pickled."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __getstate__(self):
        return {}

    def __setstate__(self, state) -> None:
        self._local = threading.local()

    def _stack(self) -> list:
        st = getattr(self._local, "stack", None)
        if st is None:
            st = self._local.stack = []
        return st

    @staticmethod
    def _to_cl(t):
        if (
            isinstance(t, torch.Tensor)
            and t.dim() == 4
            and t.is_floating_point()
            and t.is_contiguous()
            and not t.is_contiguous(memory_format=torch.channels_last)
        ):
            return t.contiguous(memory_format=torch.channels_last), True
        return t, False

    def pre(self, module, args, kwargs):
        if torch.compiler.is_compiling():
            return None
        if module.training:  # measured for inference only; training keeps the caller's layout
            self._stack().append(False)
            return None
        changed = False
        new_args = []
        for a in args:
            a, c = self._to_cl(a)
            new_args.append(a)
            changed |= c
        new_kwargs = {}
        for k, v in kwargs.items():
            v, c = self._to_cl(v)
            new_kwargs[k] = v
            changed |= c
        self._stack().append(changed)
        return (tuple(new_args), new_kwargs) if changed else None

    def post(self, module, args, kwargs, output):
        if torch.compiler.is_compiling():
            return None
        st = self._stack()
        if not st or not st.pop():
            return None
        return _nchw_outputs(output)


def _nchw_outputs(out):
    if isinstance(out, torch.Tensor):
        return out.contiguous() if out.dim() == 4 else out
    if isinstance(out, dict):  # also HF ModelOutput (setting a key updates the attribute)
        for k in list(out.keys()):
            v = out[k]
            nv = _nchw_outputs(v)
            if nv is not v:
                out[k] = nv
        return out
    if isinstance(out, list):
        return [_nchw_outputs(o) for o in out]
    if isinstance(out, tuple):
        items = [_nchw_outputs(o) for o in out]
        return type(out)(*items) if hasattr(out, "_fields") else type(out)(items)
    return out


_PACKED_NOTE = (
    "CPU weights: fused conv blocks / MLPs / attention on shapes that run whole-tensor GEMMs "
    "keep packed copies (MKL's sgemm format; on AMD CPUs oneDNN's 1x1-convolution format for "
    "the widest 7x7 batch-1 blocks) of their fp32 (bf16: fp32-converted) pointwise weights, one "
    "per input row count (two at most per module), built on first use: resident memory grows by "
    "about the size of those weights per row count (HF SwiftFormer-L3 after batch 1 and batch 8 "
    "calls: +206 MB over the 109 MB of parameters); SWIFTKERN_CPU_PACKED=0 turns this off"
)


_PACKING_MODULES = ("FusedConvBlock", "FusedMlp", "FusedAdditiveAttention", "FusedEncoderBlock")


def _packs_weights(report: OptimizeReport) -> bool:
    """Whether the swapped modules may keep MKL-packed weights (swiftkern/nn/_base.py call_op)."""
    return _fused_base._packed_on() and any(
        e.backend == "cpu" and e.fused in _PACKING_MODULES for e in report.swapped
    )


_MALLOC_NOTE = (
    f"CPU heap: glibc now keeps up to {_alloc.TRIM_THRESHOLD >> 20} MiB of freed memory per "
    "arena for reuse (process-wide, swiftkern/_alloc.py): the forward's activations stop being "
    "page-faulted in again on every call (1.07x at batch 1, 1.16x at batch 8 on HF "
    "SwiftFormer-XS here); SWIFTKERN_NO_MALLOC_TUNING=1 leaves malloc alone"
)


def _bf16_cpu_note() -> str:
    """What bf16 means for the CPU kernels on this CPU. The arithmetic test is
    _base._native_half_conv's (AVX512-BF16 / AMX): oneDNN's own "bf16 supported" is also true
    on AVX-512 CPUs without them, where it emulates bf16."""
    if not _fused_base._native_half_conv(torch.bfloat16):
        return (
            "bf16 on a CPU without bf16 arithmetic: the CPU kernels and the folded convolutions "
            "compute in fp32 inside, so the bf16 model runs at about the optimized fp32 model's "
            "speed (0.84-1.17x measured on such a CPU, README 'Performance'), not faster; the "
            "fp32 model is as fast and more accurate"
        )
    return (
        "bf16 on a CPU with bf16 arithmetic (AVX512-BF16 / AMX): the swapped-in CPU kernels "
        "still compute in fp32 inside (their GEMMs at the fp32 rate), while the original "
        "modules' oneDNN convolutions use the bf16 units; this was never measured on such a CPU, "
        "so compare before deploying: swiftkern bench model --dtypes bf16 --providers "
        "eager,swiftkern"
    )


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits") and out.logits is not None:
        return out.logits
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _call(model, example):
    with torch.no_grad():
        if isinstance(example, dict):
            return model(**example)
        if isinstance(example, (tuple, list)):
            return model(*example)
        return model(example)


def _observed(path: str) -> str:
    """Module whose output stands for a report entry: a folded pair "a.conv+bn" -> "a.bn", one
    with its ReLU "a.conv+bn+relu" -> "a.relu" (the last of them computes the same value in
    both models)."""
    if "+" not in path:
        return path
    head, *_, last = path.split("+")
    parent = head.rpartition(".")[0]
    return f"{parent}.{last}" if parent else last


def _verify(original: nn.Module, optimized: nn.Module, example, paths: list[str]) -> None:
    """Run both; on disagreement raise with the max difference of every swapped layer."""
    paths = [_observed(p) for p in paths]
    outs: dict[str, dict[str, torch.Tensor]] = {"orig": {}, "opt": {}}
    handles = []
    for tag, m in (("orig", original), ("opt", optimized)):
        mods = dict(m.named_modules())
        for p in paths:

            def rec(_m, _i, o, tag=tag, p=p):
                t = _first_tensor(o)
                if t is not None:
                    outs[tag][p] = t.detach().float()

            handles.append(mods[p].register_forward_hook(rec))
    try:
        ref = _first_tensor(_call(original, example))
        got = _first_tensor(_call(optimized, example))
    finally:
        for h in handles:
            h.remove()
    if ref is None or got is None:
        raise ValueError("verify: the model output has no tensor to compare")
    tol = _TOLERANCE.get(got.dtype, 1e-3)
    diff = (got.float() - ref.float()).abs().max().item()
    bound = tol * max(1.0, ref.float().abs().max().item())
    if ref.shape == got.shape and diff <= bound:
        return
    lines = [
        f"swiftkern.optimize(verify=...): outputs differ, max |diff| = {diff:.3e} > "
        f"{bound:.3e} ({got.dtype}). Per swapped layer (max |diff|, max |ref|):"
    ]
    for p in paths:
        a, b = outs["orig"].get(p), outs["opt"].get(p)
        if a is None or b is None or a.shape != b.shape:
            lines.append(f"  {p}: not comparable")
        else:
            lines.append(f"  {p}: {(a - b).abs().max().item():.3e}  {a.abs().max().item():.3e}")
    raise ValueError("\n".join(lines))


def optimize(
    model: nn.Module,
    *,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    inplace: bool = True,
    verify=None,
    return_report: bool = False,
    channels_last: bool | None = None,
):
    """Swap swiftkern's fused modules into `model` (HF transformers and timm SwiftFormer, ...).

    Args:
        model: any nn.Module; modules it does not recognize are left untouched.
        backend: "auto" (fastest available per device; a module is only swapped where a fused
            kernel serves it), "cpu", "cuda", "triton" or "reference" (plain PyTorch, debugging).
        dtype: cast the model (and floating inputs, by a forward pre-hook) to this dtype first.
        inplace: modify `model` (default) or a deep copy of it.
        verify: an example input (tensor, tuple of args or dict of kwargs): run the original and
            the optimized model on it and raise ValueError, with per-layer differences, if they
            disagree (the model is then left as it was).
        return_report: also return the :class:`OptimizeReport`.
        channels_last: run the model channels_last inside (NCHW inputs are converted on entry,
            4-D outputs are returned NCHW-contiguous again, see :class:`ChannelsLastInside`).
            None (default): on for CPU models with a fused conv block of a recognized family
            (not for models where only generic conv+BN pairs were folded).
    On a CPU, once anything is swapped, glibc's heap is tuned to keep freed memory for reuse
    (process-wide; see swiftkern/_alloc.py and the report's note; SWIFTKERN_NO_MALLOC_TUNING=1
    disables it).
    Idempotent: optimizing an optimized model changes nothing. On any error the model is left
    unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize() takes an nn.Module, got {type(model).__name__}")
    device, mdtype = _model_device_dtype(model)
    _check_backend(backend, device)
    if dtype is not None and dtype not in _TOLERANCE:
        raise ValueError(f"dtype must be one of {list(_TOLERANCE)}, got {dtype}")
    original = copy.deepcopy(model) if (verify is not None or not inplace) else None
    target = model if inplace else copy.deepcopy(model)
    report = OptimizeReport(backend=backend, dtype=dtype or mdtype)
    log: list = []
    cast_back = None
    try:
        if dtype is not None and dtype != mdtype:
            cast_back = mdtype
            target.to(dtype)
        if dtype is not None and not getattr(target, "_swiftkern_cast_hook", False):
            target.register_forward_pre_hook(CastInputs(dtype), with_kwargs=True)
            target._swiftkern_cast_hook = True
        _walk(target, rules(), backend, device, dtype or mdtype, report, log)
        if device.type == "cpu" and (dtype or mdtype) == torch.bfloat16:
            report.notes.append(_bf16_cpu_note())
        if channels_last is None:
            channels_last = device.type == "cpu" and any(
                e.fused.startswith(_CONV_FUSED) for e in report.swapped
            )
        if channels_last and device.type == "cpu" and backend == "auto":
            # the wide modules skipped for NCHW input serve channels_last ones (see
            # CPU_AUTO_CL_OK_OPS): a second walk swaps them (optimize() is idempotent, so it
            # touches nothing else) and their report entries change from skipped to swapped
            wide = OptimizeReport(backend=backend, dtype=dtype or mdtype)
            _walk(target, rules(), backend, device, dtype or mdtype, wide, log,
                  channels_last_inside=True)
            done = {e.path for e in wide.swapped}
            report.entries = [
                e for e in report.entries if not (e.status == "skipped" and e.path in done)
            ] + wide.swapped
        if channels_last and not getattr(target, "_swiftkern_layout_hook", False):
            hook = ChannelsLastInside()
            handles = (
                target.register_forward_pre_hook(hook.pre, with_kwargs=True),
                target.register_forward_hook(hook.post, with_kwargs=True, always_call=True),
            )
            log.append(("hooks", handles))
            target._swiftkern_layout_hook = True
        if verify is not None:
            ref_model = original.to(dtype) if dtype is not None else original
            if dtype is not None:
                ref_model.register_forward_pre_hook(CastInputs(dtype), with_kwargs=True)
            _verify(ref_model, target, verify, [e.path for e in report.swapped])
    except BaseException:
        for entry in reversed(log):
            if isinstance(entry[0], str):  # ("hooks", handles)
                for h in entry[1]:
                    h.remove()
                target.__dict__.pop("_swiftkern_layout_hook", None)
                continue
            parent, name, old = entry
            parent._modules[name] = old
        if cast_back is not None and inplace:
            target.to(cast_back)
        raise
    if device.type == "cpu" and report.swapped and _alloc.tune_cpu_allocator():
        report.notes.append(_MALLOC_NOTE)
    if device.type == "cpu" and _packs_weights(report):
        report.notes.append(_PACKED_NOTE)
    return (target, report) if return_report else target
