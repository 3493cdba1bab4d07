"""Each provider alone in its own process, called back to back: ONNX Runtime with its default
spin-waiting thread pool (which `swiftkern bench` turns off, since its spinning slows whichever
provider runs next in an interleaved round), ONNX Runtime without spinning, and optimize().

    python benchmarks/solo_peers.py --model hf:xs --batch 1 --repeats 5

The three run one after another, `repeats` times (new processes each time); prints each
process's median latency, then per provider the median over repeats, and swiftkern's speed
relative to each ORT setting (median of the per-repeat ratios).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from bench_common import script_parser

CHILD = r"""
import json, statistics, sys, tempfile, time, torch
from swiftkern.bench.models import build_model, example_input
which, spec, batch, threads, calls = sys.argv[1:6]
batch, threads, calls = int(batch), int(threads), int(calls)
torch.set_num_threads(threads)
model = build_model(spec).eval()
x = example_input(batch)
if which.startswith("ort"):
    from swiftkern.bench.suite import _ort_fn
    fn = _ort_fn(model, x, threads, tempfile.mkdtemp(prefix="swiftkern-solo-"),
                 spin=which == "ort_spin")
else:
    import swiftkern
    opt = swiftkern.optimize(model)
    fn = lambda: opt(x)
with torch.inference_mode():
    for _ in range(5):
        fn()
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
print(json.dumps(statistics.median(ts) * 1e3))
"""

PROVIDERS = ("ort_spin", "ort_nospin", "swiftkern")


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=0, help="timed calls per process")
    args = ap.parse_args(argv)
    calls = args.calls or (30 if args.batch == 1 else 8)
    ms: dict[str, list[float]] = {p: [] for p in PROVIDERS}
    for r in range(args.repeats):
        for p in PROVIDERS:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, p, args.model, str(args.batch), str(args.threads),
                 str(calls)], check=True, capture_output=True, text=True).stdout
            ms[p].append(json.loads(out.strip().splitlines()[-1]))
        print(f"repeat {r}: " + " | ".join(f"{p} {ms[p][-1]:.2f} ms" for p in PROVIDERS),
              flush=True)
    med = {p: statistics.median(v) for p, v in ms.items()}
    print(f"{args.model} batch {args.batch}, {args.threads} threads, each alone, medians: "
          + ", ".join(f"{p} {m:.2f} ms" for p, m in med.items()))
    for peer in ("ort_spin", "ort_nospin"):
        r = statistics.median(a / b for a, b in zip(ms[peer], ms["swiftkern"]))
        print(f"  swiftkern runs at {r:.2f}x the speed of {peer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
