"""Op workloads: each swiftkern op next to the eager module sequence it replaces.

For every op the eager side is the real module (timm ConvEncoder / LocalRepresentation / Mlp /
EfficientAdditiveAttention, HF SwiftFormerEfficientAdditiveAttention) with randomized BN and layer
scales, and the swiftkern side calls the functional op with the same parameters (BN folded once at
setup for the eval form, as ``optimize`` does). Mode "fwd" runs the eval form without autograd;
mode "fwd+bwd" runs the train form (BatchNorm with batch statistics and the running-stat update,
which is what training executes) and the backward to the input and every parameter.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import ops
from .models import randomize_

OPS = (
    "dwconv_bn",
    "conv_block",
    "conv_block_local",
    "mlp",
    "additive_attention_l2",
    "additive_attention_sum",
)
MODES = ("fwd", "fwd+bwd")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class MlpResidual(nn.Module):
    """``x + ls2 * Mlp(x)``: the MLP half of a SwiftFormer encoder block (timm Block)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        from timm.models.swiftformer import LayerScale2d, Mlp

        self.mlp = Mlp(dim, 4 * dim)
        self.ls = LayerScale2d(dim, 1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ls(self.mlp(x))


class DwConvBN(nn.Sequential):
    def __init__(self, dim: int) -> None:
        super().__init__(nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.BatchNorm2d(dim))


def _module(op: str, c: int) -> nn.Module:
    from timm.models import swiftformer as tsf

    if op == "dwconv_bn":
        return DwConvBN(c)
    if op == "conv_block":
        return tsf.ConvEncoder(c, 4 * c)
    if op == "conv_block_local":
        return tsf.LocalRepresentation(c)
    if op == "mlp":
        return MlpResidual(c)
    if op == "additive_attention_l2":
        return tsf.EfficientAdditiveAttention(c, c)
    if op == "additive_attention_sum":
        import transformers
        from transformers.models.swiftformer import modeling_swiftformer as hsf

        return hsf.SwiftFormerEfficientAdditiveAttention(transformers.SwiftFormerConfig(), c)
    raise ValueError(f"unknown op {op!r}; choose from {OPS}")


def kernel_op(op: str, mode: str) -> str:
    """The swiftkern op (registry name) a workload exercises."""
    base = {"conv_block_local": "conv_block", "additive_attention_l2": "additive_attention",
            "additive_attention_sum": "additive_attention"}.get(op, op)
    if mode == "fwd+bwd" and base in ("dwconv_bn", "conv_block", "mlp"):
        return base + "_train"
    return base


def _pw(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.reshape(conv.weight.shape[0], -1)


def _leaf(t: torch.Tensor | None, dtype: torch.dtype, grad: bool) -> torch.Tensor | None:
    if t is None:
        return None
    return t.detach().to(dtype).clone().requires_grad_(grad)


def _swiftkern_fn(op: str, mod: nn.Module, mode: str, dtype: torch.dtype):
    """(fn(x, backend) -> y, parameter leaves) computing ``op`` with ``mod``'s fp32 parameters."""
    train = mode == "fwd+bwd"
    # Fold/convert in fp32, then cast: the low-precision copy is what a bf16 model would hold.
    L = lambda t: _leaf(t, dtype, train)  # noqa: E731
    if op in ("conv_block", "conv_block_local", "dwconv_bn"):
        if op == "dwconv_bn":
            dw, bn = mod[0], mod[1]
        else:
            dw, bn = mod.dwconv, mod.norm
        rm, rv = bn.running_mean.detach().clone(), bn.running_var.detach().clone()
        if op != "dwconv_bn":
            p1w, p1b, p2w, p2b = L(_pw(mod.pwconv1)), L(mod.pwconv1.bias), L(_pw(mod.pwconv2)), \
                L(mod.pwconv2.bias)
            ls = L(mod.layer_scale.gamma.reshape(-1))
        if train:
            dww, dwb, bnw, bnb = L(dw.weight), L(dw.bias), L(bn.weight), L(bn.bias)
            params = [dww, dwb, bnw, bnb]

            def fn(x, backend):
                if op == "dwconv_bn":
                    y, m, v = ops.dwconv_bn_train(x, dww, dwb, bnw, bnb, bn.eps, backend=backend)
                else:
                    y, m, v = ops.conv_block_train(x, dww, dwb, bnw, bnb, bn.eps, p1w, p1b, p2w,
                                                   p2b, ls, backend=backend)
                ops.update_running_stats(rm, rv, m, v, x.numel() // x.shape[1], bn.momentum)
                return y
        else:
            w, b = ops.fold_bn(dw.weight, dw.bias, bn.weight, bn.bias, bn.running_mean,
                               bn.running_var, bn.eps)
            dww, dwb = L(w), L(b)
            params = [dww, dwb]
            if op == "dwconv_bn":
                fn = lambda x, backend: ops.dwconv_bn(x, dww, dwb, backend=backend)  # noqa: E731
            else:
                fn = lambda x, backend: ops.conv_block(  # noqa: E731
                    x, dww, dwb, p1w, p1b, p2w, p2b, ls, backend=backend)
        if op != "dwconv_bn":
            params += [p1w, p1b, p2w, p2b, ls]
        return fn, params
    if op == "mlp":
        m, bn = mod.mlp, mod.mlp.norm1
        rm, rv = bn.running_mean.detach().clone(), bn.running_var.detach().clone()
        f2w, f2b, ls = L(_pw(m.fc2)), L(m.fc2.bias), L(mod.ls.gamma.reshape(-1))
        if train:
            bnw, bnb, f1w, f1b = L(bn.weight), L(bn.bias), L(_pw(m.fc1)), L(m.fc1.bias)

            def fn(x, backend):
                y, mean, var = ops.mlp_train(x, bnw, bnb, bn.eps, f1w, f1b, f2w, f2b, ls, x,
                                             backend=backend)
                ops.update_running_stats(rm, rv, mean, var, x.numel() // x.shape[1], bn.momentum)
                return y

            return fn, [bnw, bnb, f1w, f1b, f2w, f2b, ls]
        w, b = ops.fold_bn_into_next(_pw(m.fc1), m.fc1.bias, bn.weight, bn.bias, bn.running_mean,
                                     bn.running_var, bn.eps)
        f1w, f1b = L(w), L(b)
        return (lambda x, backend: ops.mlp(x, f1w, f1b, f2w, f2b, ls, x, backend=backend),
                [f1w, f1b, f2w, f2b, ls])
    if op.startswith("additive_attention"):
        pool = "l2" if op.endswith("l2") else "sum"
        wqk = L(torch.cat([mod.to_query.weight, mod.to_key.weight]))
        bqk = L(torch.cat([mod.to_query.bias, mod.to_key.bias]))
        wg, pw, pb = L(mod.w_g.reshape(-1)), L(mod.proj.weight), L(mod.proj.bias)
        fw, fb = L(mod.final.weight), L(mod.final.bias)
        scale = float(mod.scale_factor)
        params = [wqk, bqk, wg, pw, pb, fw, fb]

        def attn(t, backend):
            return ops.additive_attention(t, wqk, bqk, wg, scale, pw, pb, fw, fb, pool,
                                          backend=backend)

        if pool == "sum":  # HF module: tokens-last input [B, N, D]
            return attn, params

        def fn(x, backend):  # timm module: NCHW in and out
            b, c, h, w = x.shape
            y = attn(x.flatten(2).transpose(1, 2), backend)
            return y.transpose(1, 2).reshape(b, -1, h, w)

        return fn, params
    raise ValueError(f"unknown op {op!r}")


@dataclass
class OpWorkload:
    op: str
    shape: tuple[int, ...]  # NCHW activation shape (tokens [B, N, C] for additive_attention_sum)
    mode: str
    dtype: str
    device: str
    module: nn.Module  # eager module at `dtype`, in eval (fwd) or train (fwd+bwd) mode
    ref_module: nn.Module  # the same module at fp32: the ground truth
    x: torch.Tensor
    sk: Callable[[torch.Tensor, str], torch.Tensor]
    sk_params: list[torch.Tensor] = field(default_factory=list)
    grad_out: torch.Tensor | None = None

    @property
    def kernel_op(self) -> str:
        return kernel_op(self.op, self.mode)

    @property
    def label(self) -> str:
        return f"{self.op} {'x'.join(map(str, self.shape))}"

    def eager_params(self, module: nn.Module | None = None) -> list[torch.Tensor]:
        return [p for p in (module or self.module).parameters() if p.requires_grad]

    def runner(self, f: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor],
               x: torch.Tensor | None = None) -> Callable[[], object]:
        """A zero-argument callable running one forward (and backward in fwd+bwd mode)."""
        x = self.x if x is None else x
        if self.mode == "fwd":

            def run():
                with torch.no_grad():
                    return f(x)

            return run
        xg = x.detach().requires_grad_(True)
        g = self.grad_out

        def run_bwd():
            y = f(xg)
            return y, torch.autograd.grad(y, [xg, *params], g.to(y.dtype), allow_unused=True)

        return run_bwd

    def flop_runner(self) -> Callable[[], object]:
        """The eager fwd(+bwd) for FlopCounterMode, whose module hooks reject autograd.grad on
        leaves: the backward goes through ``Tensor.backward`` (grads are discarded)."""
        if self.mode == "fwd":
            return self.runner(self.module, [])
        xg = self.x.detach().requires_grad_(True)

        def run():
            y = self.module(xg)
            y.backward(self.grad_out.to(y.dtype))
            for p in self.module.parameters():
                p.grad = None

        return run


def make_workload(op: str, shape: tuple[int, ...], mode: str = "fwd", dtype: str = "fp32",
                  device: str = "cpu", seed: int = 0,
                  channels_last: bool = False) -> OpWorkload:
    """Build ``op`` at NCHW ``shape`` (B, C, H, W), parameters randomized per SPEC.md section 3."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    b, c, h, w = shape
    torch.manual_seed(seed)
    ref = randomize_(_module(op, c), seed).to(device)
    ref.train(mode == "fwd+bwd")
    tdt = DTYPES[dtype]
    mod = copy.deepcopy(ref).to(tdt)
    sk, params = _swiftkern_fn(op, ref, mode, tdt)
    gen = torch.Generator().manual_seed(seed + 1)
    x_shape = (b, h * w, c) if op == "additive_attention_sum" else (b, c, h, w)
    x = torch.randn(x_shape, generator=gen).to(device=device, dtype=tdt)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    grad_out = None
    if mode == "fwd+bwd":
        with torch.no_grad():
            y = ref(x.float())
        grad_out = torch.randn(y.shape, generator=gen).to(device=device, dtype=tdt)
        for p in mod.parameters():
            p.requires_grad_(True)
    else:
        for p in mod.parameters():
            p.requires_grad_(False)
    return OpWorkload(op, tuple(x_shape), mode, dtype, device, mod, ref, x, sk, params, grad_out)
