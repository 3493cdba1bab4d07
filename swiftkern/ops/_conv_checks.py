"""Validators for the 4-D conv-style ops."""

from __future__ import annotations

from ._checks import check_shape, check_tensor


def check_x(x) -> int:
    check_tensor(x, "x", dim=4)
    return x.shape[1]


def check_dw(x, w, b) -> None:
    c = x.shape[1]
    check_tensor(w, "dw_w", like=x)
    if w.dim() != 4 or tuple(w.shape[:2]) != (c, 1):
        raise ValueError(f"dw_w must be a depthwise weight [{c}, 1, 3, 3], got {tuple(w.shape)}")
    if tuple(w.shape[2:]) != (3, 3):
        raise ValueError(f"only 3x3 depthwise kernels are supported, got {tuple(w.shape[2:])}")
    check_shape(b, "dw_b", (c,), x, optional=True)


def check_bn(x, c: int, bn_w, bn_b, eps) -> None:
    check_shape(bn_w, "bn_weight", (c,), x, optional=True)
    check_shape(bn_b, "bn_bias", (c,), x, optional=True)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if x.shape[0] * x.shape[2] * x.shape[3] == 1:
        # nn.BatchNorm2d's rule: the batch variance of a single value is meaningless.
        raise ValueError(
            "Expected more than 1 value per channel when training, got input size "
            f"{tuple(x.shape)}"
        )


def check_mlp(x, c_in: int, w1, b1, w2, b2, ls, residual, names=("fc1", "fc2")) -> int:
    n1, n2 = names
    check_tensor(w1, f"{n1}_w", dim=2, like=x)
    if w1.shape[1] != c_in:
        raise ValueError(f"{n1}_w must be [hidden, {c_in}], got {tuple(w1.shape)}")
    hid = w1.shape[0]
    check_shape(b1, f"{n1}_b", (hid,), x, optional=True)
    check_tensor(w2, f"{n2}_w", dim=2, like=x)
    if w2.shape[1] != hid:
        raise ValueError(f"{n2}_w must be [C_out, {hid}], got {tuple(w2.shape)}")
    c_out = w2.shape[0]
    check_shape(b2, f"{n2}_b", (c_out,), x, optional=True)
    check_shape(ls, "ls", (c_out,), x, optional=True)
    if residual is not None:
        b, _, h, w = x.shape
        check_shape(residual, "residual", (b, c_out, h, w), x)
    return c_out
