"""The eager fast path of the public op functions (OpDef.__call__): plain calls that need no
autograd graph skip the dispatcher; they must give exactly what torch.ops.swiftkern.<op> gives,
raise the same errors, and step aside for autograd, tracing and dispatch modes."""

from __future__ import annotations

import pytest
import torch
from cases import CONV_SHAPES, SMALL_CONV, conv_args
from torch.utils._python_dispatch import TorchDispatchMode

from swiftkern.ops import _define
from swiftkern.ops.conv_block import CONV_BLOCK
from swiftkern.ops.dwconv_bn import DWCONV_BN
from swiftkern.ops.mlp import MLP

OPS = {"dwconv_bn": DWCONV_BN, "mlp": MLP, "conv_block": CONV_BLOCK}


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SMALL_CONV)
@pytest.mark.parametrize("op", sorted(OPS))
def test_direct_call_equals_the_dispatched_op(op, shape, layout):
    args = conv_args(op, CONV_SHAPES[shape], layout=layout).args
    assert _define._direct_ok(args + ["auto"], OPS[op].tensor_args)
    direct = OPS[op](*args, "auto")
    via_op = getattr(torch.ops.swiftkern, op)(*args, "auto")
    assert torch.equal(direct, via_op)
    assert direct.stride() == via_op.stride()


def test_direct_call_raises_the_same_errors():
    args = conv_args("mlp", CONV_SHAPES["odd_c33"]).args
    bad = list(args)
    bad[1] = bad[1][:, :5]  # fc1_w with the wrong input width
    with pytest.raises(ValueError, match="fc1_w must be") as direct:
        MLP(*bad, "auto")
    with pytest.raises(ValueError, match="fc1_w must be") as via_op:
        torch.ops.swiftkern.mlp(*bad, "auto")
    assert str(direct.value) == str(via_op.value)
    with pytest.raises(ValueError, match="backend must be one of"):
        MLP(*args, "nope")


def test_autograd_and_modes_take_the_op_path():
    args = conv_args("mlp", CONV_SHAPES["odd_c33"]).args
    args[0] = args[0].clone().requires_grad_()
    assert not _define._direct_ok(args + ["auto"], MLP.tensor_args)
    with torch.no_grad():  # no graph needed: direct again
        assert _define._direct_ok(args + ["auto"], MLP.tensor_args)

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    plain = conv_args("mlp", CONV_SHAPES["odd_c33"]).args
    with Record():
        MLP(*plain, "auto")
    assert any("swiftkern.mlp" in s for s in seen), seen


def test_validation_memo_never_lets_a_bad_call_through():
    """The direct path remembers argument signatures that passed validation; anything that
    differs in a shape, dtype, device or scalar is validated again and rejected."""
    from swiftkern.ops.mlp import MLP_TRAIN

    args = conv_args("mlp", CONV_SHAPES["odd_c33"]).args
    MLP(*args, "auto")  # remembered
    assert _define._signature(args) in MLP._valid
    bad = list(args)
    bad[5] = bad[5][:-1]  # ls one channel short
    with pytest.raises(ValueError, match="ls must have shape"):
        MLP(*bad, "auto")
    bad = list(args)
    bad[1] = bad[1].double()
    with pytest.raises(TypeError, match="dtype"):
        MLP(*bad, "auto")
    x = args[0]
    c = x.shape[1]
    train = [x, torch.ones(c), torch.zeros(c), 1e-5, *args[1:]]
    MLP_TRAIN(*train, "auto")
    for eps in (float("nan"), 0.0, -1.0):  # NaN never equals itself: validated on every call
        train[3] = eps
        for _ in range(2):
            with pytest.raises(ValueError, match="eps must be > 0"):
                MLP_TRAIN(*train, "auto")
    # an argument the signature cannot hold (a list) is validated every time
    assert _define._signature([x, [1, 2]]) is None
