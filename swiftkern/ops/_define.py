"""Shared machinery that turns (schema, reference, validator) into a torch custom op.

For an op NAME with forward arguments ARGS this defines, in the ``swiftkern`` namespace:
  * ``NAME(ARGS, str backend="auto") -> outputs``: dispatches to the backend table
    (swiftkern/_registry.py); the fake impl runs the reference on fake tensors, so shapes, dtypes
    and layouts of every backend are held to the reference's by opcheck;
  * ``NAME_backward(Tensor grad, ARGS, str backend, bool[] grad_mask) -> Tensor[]``: its own op, so
    torch.compile and torch.export see it. It returns one tensor per Tensor argument of ARGS, in
    order; an argument that is None or whose gradient is not needed gets an empty tensor;
  * the autograd formula linking the two. Only the first output is differentiable; the others
    (batch statistics of train-form ops) are marked non-differentiable.
Output layout contract: outputs of 4-D ops keep the memory format of ``x`` (NCHW or
channels_last), everything else is contiguous.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .. import _registry

LIB = torch.library.Library("swiftkern", "DEF")


def layout_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last for 4-D tensors laid out with C fastest, else contiguous (NCHW wins ties)."""
    if t.dim() != 4 or t.is_contiguous():
        return torch.contiguous_format
    if t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    s = t.stride()
    return (
        torch.channels_last
        if t.shape[1] > 1 and s[1] < min(s[2], s[3])
        else torch.contiguous_format
    )


def like_layout(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=layout_of(ref))


@dataclass(frozen=True)
class OpDef:
    name: str
    arg_names: tuple[str, ...]
    tensor_args: tuple[int, ...]  # positions of Tensor / Tensor? arguments
    n_outputs: int
    reference: Callable
    validate: Callable
    # signatures (see _signature) of argument lists that passed `validate` on the direct path
    _valid: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def op(self):
        return getattr(torch.ops.swiftkern, self.name).default

    @property
    def backward_op(self):
        return getattr(torch.ops.swiftkern, self.name + "_backward").default

    def __call__(self, *args):
        """Call the op (arguments as the schema, backend last).

        Plain eager calls that need no autograd graph skip the dispatcher round trip (about
        10-15 us per call, which is most of a small op's cost) and run exactly what the op's
        CPU/CUDA implementation runs: validation, the backend table, the layout contract.
        Anything else (autograd, torch.compile / export tracing, fake or subclass tensors,
        torch function / dispatch modes) goes through ``torch.ops.swiftkern.<name>``.
        """
        if _direct_ok(args, self.tensor_args):
            *fargs, backend = args
            self._validate_memo(fargs)
            x = fargs[0]
            out = _registry.dispatch(self.name, backend, x.device, x.dtype, *fargs)
            return _normalize_outputs(out, x)
        return getattr(torch.ops.swiftkern, self.name)(*args)

    def _validate_memo(self, fargs) -> None:
        # validation reads only what the signature holds (shapes, dtypes, devices, scalar
        # arguments): memoized, it costs ~4 us instead of ~14 us for conv_block's 8 tensors
        sig = _signature(fargs)
        if sig is None or sig not in self._valid:
            self.validate(*fargs)
            if sig is not None:
                if len(self._valid) >= 1024:
                    self._valid.clear()
                self._valid[sig] = True

    def call_cpu_variant(self, args: tuple, run: Callable) -> torch.Tensor:
        """Internal fast paths of the fused modules on a CPU (swiftkern/nn/_base.py call_op).

        ``args`` are the op's arguments (backend last), validated as by a plain call. On the
        direct eager path (no autograd graph, no tracing), when the first backend that serves is
        "cpu", ``run(fargs)`` (fargs: a list of args without backend) may compute the result with
        C++ CPU kernels given extra state the module caches (fp32 copies of half parameters,
        MKL-packed weights) and returns it, or returns None. Anything else, and None, is a plain
        call on ``args``. The output layout contract is applied as for a plain call.
        """
        x = args[0]
        if x.device.type == "cpu" and _direct_ok(args, self.tensor_args):
            *fargs, backend = args
            self._validate_memo(fargs)
            if _registry.resolve(self.name, backend, x.device, x.dtype) == "cpu":
                try:
                    out = run(fargs)
                except (NotImplementedError, _registry.Unsupported):
                    out = None  # the plain call tries the next backend and says why
                if out is not None:
                    return _normalize_outputs(out, x)
        return self(*args)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _direct_ok(args, tensor_args) -> bool:
    if torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled():
        return False
    if torch._C._len_torch_dispatch_stack() > 0:
        return False
    grad = torch.is_grad_enabled()
    for i in tensor_args:
        t = args[i]
        if t is None:
            continue
        if type(t) not in _PLAIN or (grad and t.requires_grad):
            return False
    return True


def _signature(args) -> tuple | None:
    """What an op's validator reads of its arguments: per tensor (shape, dtype, device), per
    scalar (type, value); None when an argument is of another kind (validated every call)."""
    sig = []
    for a in args:
        if isinstance(a, torch.Tensor):
            sig.append((a.shape, a.dtype, a.device))
        elif a is None or isinstance(a, (bool, int, float, str)):
            sig.append((type(a), a))
        else:
            return None
    return tuple(sig)


def _parse_args(args: str) -> list[tuple[str, str]]:
    out = []
    for part in [p.strip() for p in args.split(",") if p.strip()]:
        typ, name = part.rsplit(" ", 1)
        out.append((typ.strip(), name.split("=")[0].strip()))
    return out


def _normalize_outputs(outs, x: torch.Tensor):
    lay = layout_of(x) if x.dim() == 4 else torch.contiguous_format
    if isinstance(outs, torch.Tensor):
        return outs.contiguous(memory_format=lay) if outs.dim() == 4 else outs.contiguous()
    first = outs[0].contiguous(memory_format=lay) if outs[0].dim() == 4 else outs[0].contiguous()
    return (first, *[o.contiguous() for o in outs[1:]])


def reference_backward(reference: Callable, tensor_args: tuple[int, ...]) -> Callable:
    """Backward of a reference forward by autograd through it (recomputes the forward)."""

    def backward(grad: torch.Tensor, *args_and_mask):
        *args, grad_mask = args_and_mask
        args = list(args)
        wanted = []
        for i, need in zip(tensor_args, grad_mask):
            if args[i] is not None and need:
                args[i] = args[i].detach().requires_grad_(True)
                wanted.append(i)
        if wanted:
            with torch.enable_grad():
                out = reference(*args)
                y = out if isinstance(out, torch.Tensor) else out[0]
                grads = torch.autograd.grad(y, [args[i] for i in wanted], grad, allow_unused=True)
        result = []
        got = dict(zip(wanted, grads)) if wanted else {}
        for i in tensor_args:
            g = got.get(i)
            if g is None and i in got:
                g = torch.zeros_like(args[i])
            result.append(g if g is not None else grad.new_empty(0))
        return result

    return backward


def define_op(
    name: str,
    args: str,
    returns: str,
    reference: Callable,
    validate: Callable,
) -> OpDef:
    """Define NAME and NAME_backward (see module docstring) and register the reference kernels."""
    parsed = _parse_args(args)
    arg_names = tuple(n for _, n in parsed)
    tensor_args = tuple(i for i, (t, _) in enumerate(parsed) if re.fullmatch(r"Tensor\??", t))
    n_outputs = 1 if returns == "Tensor" else returns.count("Tensor")
    fwd_args = ", ".join(f"{t} {n}" for t, n in parsed)
    LIB.define(f'{name}({fwd_args}, str backend="auto") -> {returns}')
    LIB.define(
        f"{name}_backward(Tensor grad, {fwd_args}, str backend, bool[] grad_mask) -> Tensor[]"
    )
    qual = f"swiftkern::{name}"
    bwd_ref = reference_backward(reference, tensor_args)

    n_args = len(parsed)

    def split(a, kw):
        # The dispatcher drops trailing arguments equal to their default (backend="auto").
        return list(a[:n_args]), (a[n_args] if len(a) > n_args else kw.get("backend", "auto"))

    def fwd_impl(*a, **kw):
        fargs, backend = split(a, kw)
        validate(*fargs)
        x = fargs[0]
        out = _registry.dispatch(name, backend, x.device, x.dtype, *fargs)
        return _normalize_outputs(out, x)

    def fwd_fake(*a, **kw):
        fargs, backend = split(a, kw)
        validate(*fargs)
        _registry.candidates(fargs[0].device, backend)  # rejects unknown backend names
        return _normalize_outputs(reference(*fargs), fargs[0])

    def bwd_impl(grad, *a):
        *fargs, backend, grad_mask = a
        x = fargs[0]
        grads = _registry.dispatch(
            name + "_backward", backend, x.device, x.dtype, grad, *fargs, grad_mask
        )
        return [
            g if g.numel() == 0 else like_layout(g, fargs[i]) for g, i in zip(grads, tensor_args)
        ]

    def bwd_fake(grad, *a):
        *fargs, backend, grad_mask = a
        out = []
        for i, need in zip(tensor_args, grad_mask):
            t = fargs[i]
            out.append(torch.empty_like(t) if (t is not None and need) else grad.new_empty(0))
        return out

    for fn, target in ((fwd_impl, qual), (bwd_impl, qual + "_backward")):
        torch.library.impl(target, "CompositeExplicitAutograd", fn, lib=LIB)
    torch.library.register_fake(qual, fwd_fake, lib=LIB)
    torch.library.register_fake(qual + "_backward", bwd_fake, lib=LIB)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*[inputs[i] for i in tensor_args])
        ctx.non_tensor = {i: inputs[i] for i in range(len(inputs)) if i not in tensor_args}
        ctx.n_inputs = len(inputs)
        if n_outputs > 1:
            ctx.mark_non_differentiable(*output[1:])

    def backward(ctx, grad, *unused):
        saved = dict(zip(tensor_args, ctx.saved_tensors))
        inputs = [saved[i] if i in saved else ctx.non_tensor[i] for i in range(ctx.n_inputs)]
        *fargs, backend = inputs
        mask = [bool(ctx.needs_input_grad[i]) for i in tensor_args]
        if grad is None or not any(mask):
            return (None,) * ctx.n_inputs
        grads = getattr(torch.ops.swiftkern, name + "_backward")(grad, *fargs, backend, mask)
        result: list = [None] * ctx.n_inputs
        for g, i, need in zip(grads, tensor_args, mask):
            if need and fargs[i] is not None:
                result[i] = g
        return tuple(result)

    torch.library.register_autograd(qual, backward, setup_context=setup_context, lib=LIB)
    _registry.register_kernel(name, "reference", reference, devices=("cpu", "cuda", "meta"))
    _registry.register_kernel(
        name + "_backward", "reference", bwd_ref, devices=("cpu", "cuda", "meta")
    )
    return OpDef(name, arg_names, tensor_args, n_outputs, reference, validate)
