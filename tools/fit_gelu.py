"""Fit the rational erf approximation used by the fp32 CPU GELU (csrc/cpu/cpu_common.h).

    erf(z) ~= z * P(z^2) / Q(z^2)   for |z| < 4,   erf(z) = sign(z) beyond (erf(4) = 1 - 1.5e-8
                                                    rounds to 1.0f)

P has degree 6 and Q degree 5 in t = z^2 (Q(0) = 1). The fit is a linearized rational
least-squares (each step solves f*Q - P = 0 weighted by 1/Q of the previous step) with Lawson
re-weighting towards the minimax solution of the absolute erf error. The coefficients are then
rounded to fp32 and the GELU built from them, x/2 + (x/2) * erf(x / sqrt(2)), is evaluated in fp32
(numpy) against a float64 reference on a dense grid; the script prints the C++ constants and that
error next to the error of ATen's own fp32 GELU on the same grid.

    python tools/fit_gelu.py
"""

from __future__ import annotations

import math

import numpy as np

Z = 4.0  # saturation point of erf in fp32
DEG_P, DEG_Q = 6, 5


def fit(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (in t = z^2) of P and Q, Q[0] = 1."""
    f = np.array([math.erf(v) / v for v in z])
    u = z * z / (Z * Z)  # fit on [0, 1] for conditioning; rescaled below (powers of 2: exact)
    w = np.ones_like(z)
    q_prev = np.ones_like(z)
    best = None
    for _ in range(60):
        a = np.hstack([
            -np.vander(u, DEG_P + 1, increasing=True),
            f[:, None] * np.vander(u, DEG_Q + 1, increasing=True)[:, 1:],
        ])
        sw = np.sqrt(w) * z / np.abs(q_prev)  # erf's absolute error is z * (f - P/Q)
        sol, *_ = np.linalg.lstsq(a * sw[:, None], -f * sw, rcond=None)
        p, q = sol[: DEG_P + 1], np.concatenate([[1.0], sol[DEG_P + 1:]])
        pv, qv = np.polyval(p[::-1], u), np.polyval(q[::-1], u)
        err = z * (f - pv / qv)
        if best is None or np.abs(err).max() < best[0]:
            best = (np.abs(err).max(), p.copy(), q.copy())
        q_prev = qv
        w = w * np.abs(err)
        w /= w.sum()
    _, p, q = best
    scale = np.array([(Z * Z) ** -i for i in range(max(DEG_P, DEG_Q) + 1)])
    return (p * scale[: DEG_P + 1]).astype(np.float32), (q * scale[: DEG_Q + 1]).astype(np.float32)


def gelu_fp32(x: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The C++ evaluation order, in fp32."""
    f32 = np.float32
    x = x.astype(f32)
    z = x * f32(math.sqrt(0.5))
    t = z * z
    pv = np.full_like(t, p[-1])
    for c in p[-2::-1]:
        pv = pv * t + c
    qv = np.full_like(t, q[-1])
    for c in q[-2::-1]:
        qv = qv * t + c
    with np.errstate(all="ignore"):
        er = z * pv / qv
    er = np.where(np.abs(z) >= f32(Z), np.copysign(f32(1), z), er).astype(f32)
    hx = x * f32(0.5)
    return hx + hx * er


def main() -> None:
    p, q = fit(np.linspace(1e-4, Z, 20000))
    x = np.linspace(-12, 12, 2_000_001).astype(np.float32)
    ref = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    err = np.abs(gelu_fp32(x, p, q).astype(np.float64) - ref)
    print("P (t^0 first):", ", ".join(f"{c:.9e}f" for c in p))
    print("Q (t^0 first):", ", ".join(f"{c:.9e}f" for c in q))
    print(f"fp32 GELU on [-12, 12]: max abs error {err.max():.3g} (at x = {x[err.argmax()]:.4g}),"
          f" max abs error / max(1, |x|) {(err / np.maximum(1, np.abs(x))).max():.3g}")
    try:
        import torch
    except ImportError:
        return
    xt = torch.from_numpy(x)
    aten = torch.nn.functional.gelu(xt).double().numpy()
    e2 = np.abs(aten - ref)
    print(f"ATen fp32 GELU, same grid: max abs error {e2.max():.3g},"
          f" / max(1, |x|) {(e2 / np.maximum(1, np.abs(x))).max():.3g}")


if __name__ == "__main__":
    main()
