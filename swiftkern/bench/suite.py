"""Benchmark cases shared by the CLI and benchmarks/: building providers, checking, timing, rows.

A case is one workload (an op at a shape, mode and dtype; or a model at a batch size). Every
provider of a case is first run once and its output compared with the eager fp32 output (the
max abs difference is always reported; a provider outside the SPEC.md tolerance is marked FAIL),
then all providers of the case are timed together in interleaved rounds (harness.py).
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import check, roofline
from .harness import Provider, compare, run_rounds
from .models import build_model, example_input, parse_spec
from .workloads import DTYPES, OpWorkload, make_workload

SWIFTKERN_GPU_BACKENDS = ("triton", "cuda")


@dataclass
class Settings:
    threads: int = 2
    rounds: int = 20
    warmup_s: float = 0.3
    min_sample_s: float = 0.01
    time_budget_s: float | None = None  # per case, for the timing rounds
    device: str = "cpu"
    seed: int = 0
    roof: roofline.Roofline | None = None
    on_step: Callable[[], None] | None = None
    on_status: Callable[[str], None] | None = None

    def status(self, msg: str) -> None:
        if self.on_status is not None:
            self.on_status(msg)


@dataclass
class Candidate:
    name: str
    family: str
    dtype: str
    backend: str | None = None
    fn: Callable[[], object] | None = None
    note: str = ""
    error: str | None = None
    predicted_s: float | None = None
    out: object = None
    checks: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------
def live_backends(op: str, device: str, dtype: torch.dtype, backward: bool = False) -> list[str]:
    """Backends in the registry with a kernel for ``op`` (and its backward) on (device, dtype)."""
    from .. import _registry

    table = _registry.table()
    names = []
    for backend in ("cpu", "cuda", "triton", "reference"):
        ok = True
        for name in (op, op + "_backward") if backward else (op,):
            k = table.get((name, backend))
            if k is None or device not in k.devices or (k.dtypes is not None and
                                                        dtype not in k.dtypes):
                ok = False
        if ok:
            names.append(backend)
    return names


def gpu_only_backends(op: str) -> list[str]:
    """Registered GPU backends of ``op`` (shown as predicted / n/a rows when there is no GPU)."""
    from .. import _registry

    table = _registry.table()
    return [b for b in SWIFTKERN_GPU_BACKENDS
            if (k := table.get((op, b))) is not None and "cpu" not in k.devices]


def roofline_shapes(op: str, shape: tuple, dtype: str) -> dict:
    """The ``shapes`` dict of ``swiftkern.triton_kernels.roofline`` for a workload."""
    e = torch.empty(0, dtype=DTYPES[dtype]).element_size()
    if op.startswith("additive_attention"):
        if op == "additive_attention_sum":  # tokens-last workload [B, N, D]
            b, n, d = shape
        else:
            b, d, h, w = shape
            n = h * w
        return dict(B=b, N=n, D=d, dtype_bytes=e)
    b, c, h, w = shape
    out = dict(B=b, C=c, H=h, W=w, dtype_bytes=e)
    if op == "conv_block_local":
        out["hidden"] = c
    return out


def predict_gpu_s(op: str, kernel: str, shape: tuple, dtype: str, mode: str) -> float | None:
    """Predicted H100 time (s) of the Triton kernels of workload ``op`` (registry op ``kernel``)
    from ``swiftkern.triton_kernels.roofline(op, shapes) -> {"predicted_h100_us": ...}``; for
    fwd+bwd the ``<kernel>_backward`` prediction is added. None when there is no such model."""
    try:
        from .. import triton_kernels
    except Exception:  # noqa: BLE001
        return None
    fn = getattr(triton_kernels, "roofline", None)
    if fn is None:
        return None
    shapes = roofline_shapes(op, shape, dtype)
    total = 0.0
    try:
        for name in (kernel, kernel + "_backward") if mode == "fwd+bwd" else (kernel,):
            total += float(fn(name, dict(shapes))["predicted_h100_us"]) * 1e-6
    except Exception:  # noqa: BLE001 - a prediction is optional information
        return None
    return total


# ----------------------------------------------------------------------------------------------
# Shared: check, time, rows
# ----------------------------------------------------------------------------------------------
def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _grad_x(out):
    if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], (tuple, list)):
        return out[1][0]
    return None


def _check_all(cands: list[Candidate], ref_out: torch.Tensor, ref_grad: torch.Tensor | None,
               level: str, s: Settings) -> None:
    """Run each candidate once, compare with the fp32 eager output (and input gradient)."""
    for c in cands:
        if c.fn is None:
            continue
        s.status(f"checking {c.name}")
        try:
            t0 = time.perf_counter()
            c.out = c.fn()
            c.checks["first_call_s"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - a failing provider is a reported row, not a crash
            c.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            c.fn = None
            continue
        c.checks["max_abs_diff"] = check.max_abs_diff(_first(c.out), ref_out)
        g = _grad_x(c.out)
        if ref_grad is not None and g is not None:
            c.checks["grad_max_abs_diff"] = check.max_abs_diff(g, ref_grad)
    # Low-precision tolerance is relative to plain PyTorch's own error at that dtype.
    eager_err = {c.dtype: c.checks for c in cands if c.family == "eager" and c.checks}
    ref_absmax = check.abs_max(ref_out)
    grad_absmax = check.abs_max(ref_grad) if ref_grad is not None else 0.0
    for c in cands:
        if "max_abs_diff" not in c.checks:
            continue
        e = eager_err.get(c.dtype, {})
        try:
            tol = check.tolerance(ref_absmax, c.dtype, level, e.get("max_abs_diff"))
            ok = c.checks["max_abs_diff"] <= tol
            if "grad_max_abs_diff" in c.checks:
                gtol = check.tolerance(grad_absmax, c.dtype, level, e.get("grad_max_abs_diff"))
                ok = ok and c.checks["grad_max_abs_diff"] <= gtol
        except ValueError:
            tol, ok = None, None
        c.checks["tol"] = tol
        c.checks["ok"] = ok
        c.checks["ref_absmax"] = ref_absmax
        c.out = None  # free memory before timing


def _time_and_rows(meta: dict, cands: list[Candidate], s: Settings, flops: int | None,
                   nbytes: int | None) -> list[dict]:
    timed = [
        Provider(c.name, c.fn, family=c.family, dtype=c.dtype, device=s.device)
        for c in cands if c.fn is not None
    ]
    rows = []
    timings = comps = None
    if timed:
        s.status("timing " + ", ".join(p.name for p in timed))
        timings = run_rounds(timed, s.rounds, s.warmup_s, s.min_sample_s, s.on_step,
                             s.time_budget_s)
        eager = next((c.name for c in cands if c.family == "eager" and c.fn is not None
                      and c.dtype == meta.get("dtype", "fp32")), None)
        if eager is None:
            eager = next((c.name for c in cands if c.family == "eager" and c.fn is not None), "")
        comps = compare(timings, timed, eager)
    for c in cands:
        row = dict(meta)
        row.update(provider=c.name, family=c.family, provider_dtype=c.dtype, backend=c.backend,
                   note=c.note)
        row.update(max_abs_diff=c.checks.get("max_abs_diff"),
                   grad_max_abs_diff=c.checks.get("grad_max_abs_diff"),
                   tol=c.checks.get("tol"), ref_absmax=c.checks.get("ref_absmax"),
                   check=_check_word(c))
        row.update(gflop=flops / 1e9 if flops else None,
                   mbytes=nbytes / 1e6 if nbytes else None)
        if timings is not None and c.name in timings.samples:
            sm = timings.summary(c.name)
            cp = comps[c.name]
            row.update(median_ms=sm.median * 1e3, q1_ms=sm.q1 * 1e3, q3_ms=sm.q3 * 1e3,
                       iqr_ms=sm.iqr * 1e3, rounds=sm.n, inner=timings.inner[c.name])
            if cp.speedup_vs_eager is not None:
                row.update(speedup_vs_eager=cp.speedup_vs_eager.median,
                           speedup_vs_eager_q1=cp.speedup_vs_eager.q1,
                           speedup_vs_eager_q3=cp.speedup_vs_eager.q3)
            if cp.best_peer is not None:
                row.update(best_peer=cp.best_peer,
                           speedup_vs_best_peer=cp.speedup_vs_best_peer.median,
                           speedup_vs_best_peer_q1=cp.speedup_vs_best_peer.q1,
                           speedup_vs_best_peer_q3=cp.speedup_vs_best_peer.q3)
            if s.roof is not None and flops is not None and nbytes is not None:
                row["roofline_frac"] = s.roof.fraction(flops, nbytes, c.dtype, sm.median)
        elif c.predicted_s is not None:
            row["predicted_ms"] = c.predicted_s * 1e3
        if c.error:
            row["note"] = (c.note + "; " if c.note else "") + c.error
        rows.append(row)
    return rows


def _check_word(c: Candidate) -> str:
    if c.error:
        return "error"
    ok = c.checks.get("ok")
    if ok is None:
        return "n/a"
    return "ok" if ok else "FAIL"


# ----------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _reset_compiler() -> None:
    import torch._dynamo

    # Every case compiles fresh modules whose forward shares a code object with the previous
    # cases'; without a reset per case dynamo would hit its recompile limit and silently run
    # eager. Within a case (fp32 + bf16 variants) the limit is never reached.
    torch._dynamo.reset()


def _compiled(fn_module: torch.nn.Module):
    return torch.compile(fn_module)


def _wanted(backend: str, backends: list[str] | None, device: str) -> bool:
    if backends:
        return backend in backends
    # Triton on CPU only exists under TRITON_INTERPRET=1 (a correctness tool, far too slow to
    # time); it is benchmarked on CPU only when named with --backends.
    return not (backend == "triton" and device == "cpu")


def op_candidates(w: OpWorkload, providers: list[str],
                  backends: list[str] | None) -> list[Candidate]:
    cands = [Candidate("eager", "eager", w.dtype, fn=w.runner(w.module, w.eager_params()))]
    if "compile" in providers:
        try:
            cm = _compiled(w.module)
            cands.append(Candidate("compile", "peer", w.dtype, fn=w.runner(cm, w.eager_params()),
                                   note="torch.compile (inductor)"))
        except Exception as e:  # noqa: BLE001
            cands.append(Candidate("compile", "peer", w.dtype, error=str(e)[:160]))
    if "swiftkern" in providers:
        live = live_backends(w.kernel_op, w.device, DTYPES[w.dtype], w.mode == "fwd+bwd")
        for b in live:
            if not _wanted(b, backends, w.device):
                continue
            fn = w.runner(lambda x, b=b: w.sk(x, b), w.sk_params)
            cands.append(Candidate(f"swiftkern[{b}]", "swiftkern", w.dtype, backend=b, fn=fn))
        if w.device == "cpu" and not torch.cuda.is_available():
            for b in gpu_only_backends(w.kernel_op):
                if backends and b not in backends:
                    continue
                pred = predict_gpu_s(w.op, w.kernel_op, w.shape, w.dtype, w.mode) \
                    if b == "triton" else None
                cands.append(Candidate(
                    f"swiftkern[{b}]", "swiftkern", w.dtype, backend=b, predicted_s=pred,
                    note="no GPU: H100 time predicted by triton_kernels.roofline"
                    if pred is not None else "n/a (no GPU)"))
    return cands


def run_op_case(op: str, shape: tuple[int, ...], mode: str, dtype: str, s: Settings,
                providers: list[str], backends: list[str] | None = None,
                stage: str = "") -> list[dict]:
    """Check and time one op workload against its eager module sequence; returns table rows."""
    s.status(f"{op} {shape} {mode} {dtype}: building")
    w = make_workload(op, shape, mode, dtype, s.device, s.seed)
    if "compile" in providers:
        _reset_compiler()
    ref_run = w.runner(w.ref_module, w.eager_params(w.ref_module), x=w.x.float())
    with torch.enable_grad() if mode == "fwd+bwd" else torch.no_grad():
        ref = ref_run()
    ref_out, ref_grad = _first(ref), _grad_x(ref)
    flops = roofline.count_flops(w.flop_runner())
    with torch.no_grad():
        y = w.module(w.x)
    nbytes = roofline.min_bytes([w.x], w.sk_params, [y], backward=mode == "fwd+bwd")
    with _quiet():
        cands = op_candidates(w, providers, backends)
        _check_all(cands, ref_out, ref_grad, "block", s)
        meta = dict(suite="ops", case=f"{w.label} {mode} {dtype}", name=op, stage=stage,
                    shape="x".join(map(str, w.shape)), mode=mode, dtype=dtype, batch=shape[0],
                    threads=s.threads, kernel_op=w.kernel_op)
        return _time_and_rows(meta, cands, s, flops, nbytes)


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------
MODEL_PROVIDERS = ("eager", "channels_last", "compile", "onnxruntime", "swiftkern")
DEFAULT_MODEL_PROVIDERS = ("eager", "channels_last", "onnxruntime", "swiftkern")


def _no_grad(f, x):
    def run():
        with torch.no_grad():
            return f(x)

    return run


def _ort_fn(model: torch.nn.Module, x: torch.Tensor, threads: int, tmpdir: str,
            spin: bool = False):
    """ONNX Runtime on `model` exported to ONNX; spin=True keeps ORT's default spin-waiting
    thread pool (benchmarks/solo_peers.py, which runs each provider alone)."""
    import onnxruntime as ort

    path = os.path.join(tmpdir, "model.onnx")
    with torch.no_grad():
        # The TorchScript-based exporter: the dynamo exporter needs onnxscript graph rewrites
        # that are slower to run on 2 cores and gain nothing for a static-shape CNN.
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Without ORT's spin-waiting thread pool: after a run its spinning workers kept both cores
    # busy for tens of ms and slowed whichever provider ran next even after the harness's re-warm
    # call (HF XS batch 1: swiftkern 16.5 -> 20-34 ms). That costs ORT itself: run alone, back to
    # back, it took 12-14 ms with spinning and 14-17 ms without (README "Performance" reports both).
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    xn = x.numpy()

    def run():
        return torch.from_numpy(sess.run(None, {"x": xn})[0])

    return run


def _optimize(model, **kw):
    import swiftkern

    return swiftkern.optimize(model, **kw)


def model_candidates(model: torch.nn.Module, x: torch.Tensor, providers: list[str],
                     dtypes: list[str], backends: list[str] | None, s: Settings,
                     tmpdir: str) -> list[Candidate]:
    cands = []

    def add(name, family, dtype, build, backend=None, note=""):
        s.status(f"building {name}")
        try:
            t0 = time.perf_counter()
            fn = build()
            dt = time.perf_counter() - t0
            if dt > 2:
                note = (note + "; " if note else "") + f"setup {dt:.0f} s"
            cands.append(Candidate(name, family, dtype, backend=backend, fn=fn, note=note))
        except Exception as e:  # noqa: BLE001 - a provider that cannot be built is a row
            msg = str(e).splitlines()[0][:160] if str(e) else ""
            cands.append(Candidate(name, family, dtype, backend=backend, note=note,
                                   error=f"{type(e).__name__}: {msg}"))

    cl = torch.channels_last
    for dt in dtypes:
        tdt = DTYPES[dt]
        sfx = "" if dt == "fp32" else f"-{dt}"
        xd = x.to(tdt)
        m = model if dt == "fp32" else copy.deepcopy(model).to(tdt)
        if "eager" in providers:
            add(f"eager{sfx}", "eager", dt, lambda m=m, xd=xd: _no_grad(m, xd))
        if "channels_last" in providers:
            add(f"channels_last{sfx}", "peer", dt,
                lambda m=m, xd=xd: _no_grad(copy.deepcopy(m).to(memory_format=cl),
                                            xd.contiguous(memory_format=cl)))
        if "compile" in providers:
            def build_compiled(m=m, xd=xd):
                f = _no_grad(_compiled(copy.deepcopy(m)), xd)
                f()  # compile now, so its minutes show as setup time, not as a first call
                return f

            add(f"compile{sfx}", "peer", dt, build_compiled, note="inductor")
        if "onnxruntime" in providers and dt == "fp32" and s.device == "cpu":
            add("onnxruntime", "peer", dt, lambda: _ort_fn(model, x, s.threads, tmpdir),
                note=f"CPUExecutionProvider, {s.threads} threads")
        if "swiftkern" in providers:
            if dt == "fp32":
                # "auto" is what optimize(model) gives a user (it keeps modules whose kernel
                # measured slower); the named backends force their kernel on every module.
                live = ["auto"] + [b for b in ("cpu", "cuda", "triton", "reference")
                                   if _backend_live(b, s.device)]
                for b in live:
                    if not _wanted(b, backends, s.device):
                        continue
                    add(f"swiftkern[{b}]", "swiftkern", dt,
                        lambda b=b: _no_grad(_optimize(copy.deepcopy(model), backend=b), x),
                        backend=b)
            else:
                add(f"swiftkern{sfx}", "swiftkern", dt,
                    lambda tdt=tdt, xd=xd: _no_grad(
                        _optimize(copy.deepcopy(model), backend="auto", dtype=tdt), xd),
                    backend="auto")
    return cands


def _backend_live(backend: str, device: str) -> bool:
    from .. import _registry

    return any(b == backend and device in k.devices for (_, b), k in _registry.table().items())


def run_model_case(spec: str, batch: int, s: Settings, providers: list[str],
                   dtypes: list[str], backends: list[str] | None = None,
                   image_size: int = 224) -> list[dict]:
    ms = parse_spec(spec)
    s.status(f"{ms.label} batch {batch}: building")
    model = build_model(ms, seed=s.seed).to(s.device)
    x = example_input(batch, seed=s.seed + 1, image_size=image_size).to(s.device)
    with torch.no_grad():
        ref = model(x).float()
    flops = roofline.count_flops(_no_grad(model, x))
    nbytes = roofline.min_bytes([x], list(model.parameters()) + list(model.buffers()), [ref])
    if "compile" in providers:
        _reset_compiler()
    with _quiet(), tempfile.TemporaryDirectory(prefix="swiftkern-bench-") as tmp:
        cands = model_candidates(model, x, providers, dtypes, backends, s, tmp)
        _check_all(cands, ref, None, "model", s)
        meta = dict(suite="model", case=f"{ms.label} b{batch}", name=ms.label, stage="",
                    shape=f"{batch}x3x{image_size}x{image_size}", mode="fwd",
                    dtype="fp32", batch=batch, threads=s.threads, kernel_op="")
        return _time_and_rows(meta, cands, s, flops, nbytes)
