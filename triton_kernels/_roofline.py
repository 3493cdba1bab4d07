"""Performance on paper: DRAM bytes and FLOPs of each Triton kernel vs. the minimum and vs. the
eager PyTorch sequence, turned into a predicted H100 time. No Triton or GPU needed.

Model (stated, not measured on a GPU here):
  * DRAM bandwidth 3.0 TB/s (device-to-device copy measured on this workplace's H100).
  * Tensor-core GEMM 790 TFLOP/s for fp16/bf16 (measured bf16 matmul on the same H100). fp32
    GEMMs run with input_precision="ieee" (no TF32) on the FMA units: 60 TFLOP/s assumed (H100 SXM
    peak fp32 is ~67). Elementwise work (dwconv taps, GELU, normalize) also at the fp32 FMA rate.
  * A kernel is limited by the slower of memory and compute: t = max(bytes/BW, flops/rate), plus
    3 us per kernel launch (a small-kernel launch + tail on H100, typical not measured).
  * "bytes_moved" counts DRAM traffic: every tensor read or written once per kernel that touches
    it. Halo re-reads of the 3x3 dwconv and the per-program re-reads of the (small) weights are
    assumed to hit L2 (50 MB) and are not counted; they are listed separately as l2_bytes.
  * "bytes_min": read every input and write every output exactly once (weights included).
  * "eager_bytes": the unfused module in PyTorch eager (one kernel per layer, BN folded in eval).
  * Train forms: the batch statistics take two launches (a statistics kernel reading x from its
    last pixel tile to its first, then a merge kernel) before the kernel that normalizes, which
    reads x from its start again; that re-read is counted as an L2 hit (l2_bytes) when x <=
    L2_REUSE_BYTES, as kernel B's re-read in the attention forward, else as DRAM traffic. Torch
    ops on [C] vectors between kernels count as launches (LAUNCH_US each).
  * mlp / conv_block (and train forms) with max(C, c_out) > 256 run as two kernels (the fused
    single kernel spilled registers there): the hidden activation goes through memory, one write
    and one read of B*H*W*hidden elements in the input dtype, and one more launch.
shapes: dict with B, C, H, W (conv ops; optional "hidden" (default 4C), "c_out", "dtype_bytes"
(2 = fp16/bf16, 4 = fp32)) or B, N, D (attention ops; optional "T" for the final layer).
additive_attention (module forward): where the fused kernels fit (padded max(D, T) <= 512 for
fp16/bf16, <= 256 for fp32) kernel A reads x and Wq and writes B*SPLITS*(D+2) fp32 partials;
kernel B reads x again, every weight and the partials, and writes the output (fp32 at padded 256:
gk through the per-program fp32 blocks of a persistent grid, L2-resident: in l2_bytes).
Kernel B's re-read of x and Wq (both just read by kernel A) is counted in l2_bytes, not
bytes_moved, only when x is <= 20 MB (L2_REUSE_BYTES: 50 MB H100 L2, B launched right after
A); otherwise both count twice in DRAM. FLOPs count q three times (the price of never storing
it). Wider / fp32-wide shapes: torch GEMMs around the Triton core (6
kernels, ~16 token tensors of traffic).
Backward: additive_attention_core_backward / additive_attention_backward (every gradient wanted;
the eager comparison is autograd through the reference, which keeps the forward's activations).
The core backward's second pass re-reads q, k, dgk right after the first: an L2 hit when the three
are <= L2_REUSE_BYTES together, as above. Where they are bigger, the launcher runs both passes per
batch group that fits (_attention.batch_groups; kernels P, T, W of the fused module backward
likewise, for x and dy): each group's re-reads count as L2 hits, each group adds its launches.
"""

from __future__ import annotations

BW = 3.0e12
TC_FLOPS = 790e12
FP32_FLOPS = 60e12
LAUNCH_US = 3.0
# mlp / conv_block wider than this (max of C_in, C_out) run as two kernels (_conv.SPLIT_CONFIG)
SPLIT_MIN_C = 256
# The fused additive_attention forward (_attention_fused): padded widths max(D, T) it serves
# (fp16/bf16, fp32) and the token tiles (kernel A, kernel B) per padded width (tests/triton check
# that these match _attention_fused.FUSED_CONFIGS / FP32_CONFIGS), and the fp32 padded widths whose
# kernel B writes gk to an fp32 workspace (GK_SCRATCH) and K-loops proj over it.
FUSED_MAX_WIDTH, FUSED_MAX_WIDTH_FP32 = 512, 256
FUSED_BLOCK_N = {64: (32, 32), 128: (32, 16), 256: (16, 16), 512: (16, 16)}
FUSED_GK_SCRATCH_FP32 = (256,)
FUSED_GK_PROGRAMS = 264  # kernel B's persistent grid with GK_SCRATCH (_attention_fused.GK_PROGRAMS)
# Kernel B re-reads x (and Wq) right after kernel A: counted as an L2 hit (H100 L2: 50 MB) only
# when x is at most this big, else as DRAM traffic.
L2_REUSE_BYTES = 20e6
# Batch statistics of the train forms (_conv._batch_stats): the statistics kernel's tiles
# (_conv.DW_CONFIGS) and program target (_conv.STATS_TARGET_PROGRAMS), checked by tests/triton.
STATS_BLOCK_P, STATS_BLOCK_C, STATS_TARGET_PROGRAMS = 32, 32, 528
# The fused MLP backward (_mlp_backward): widths max(C, c_out) it serves, its tiles per padded
# width ((kernel P BLOCK_P, BLOCK_H), (kernel W BLOCK_P, BLOCK_H)) and kernel W's grid target
# (tests/triton check these against _mlp_backward.BWD_CONFIGS / TARGET_PROGRAMS).
MLP_BWD_MAX_C, MLP_BWD_MAX_C_FP32 = 256, 256
MLP_BWD_TILES = {64: ((32, 32), (16, 16)), 128: ((32, 32), (16, 16)), 256: ((16, 32), (16, 16))}
MLP_BWD_TARGET_PROGRAMS = 528
# The fused additive_attention backward (_attention_backward_fused): padded widths max(D, T) it
# serves (fp16/bf16, fp32), its tiles per padded width (kernel P BLOCK_N, kernel T BLOCK_N,
# kernel W BLOCK_N, BLOCK_I) and kernel W's grid rule (tests/triton check these against
# BWD_FUSED_CONFIGS / TARGET_PROGRAMS / MIN_SEG_ROWS / W_PARTS).
ATTN_BWD_FUSED_MAX_WIDTH, ATTN_BWD_FUSED_MAX_WIDTH_FP32 = 256, 256
ATTN_BWD_TILES = {64: (32, 16, 16, 16), 128: (16, 16, 16, 16), 256: (16, 16, 16, 16)}
# fp32 padded widths whose kernel T writes dq / dk to an fp32 workspace and K-loops dx over it
# (_attention_backward_fused.FP32_CONFIGS, DQK_SCRATCH)
ATTN_BWD_DQK_SCRATCH_FP32 = (256,)
ATTN_BWD_TARGET_PROGRAMS, ATTN_BWD_MIN_SEG_ROWS, ATTN_BWD_W_PARTS = 132, 256, 4
# The attention core backward (_attention_backward.ATTN_BWD_CONFIGS): per config width (the
# next power of two >= D, at least 128), pass 1's token tile (its splits: _attention._splits)
# and pass 2's; pass 2 runs about ATTN_CORE_APPLY_PROGRAMS programs over consecutive tiles, one
# dw_g partial row each. Workspaces are the config's width wide.
ATTN_CORE_BWD_TILES = {128: (16, 8), 256: (16, 8), 512: (8, 4)}
ATTN_CORE_APPLY_PROGRAMS = 528


def _pad(w: int) -> int:
    return max(64, 1 << (w - 1).bit_length())


def _splits(b: int, n: int, block_n: int) -> int:
    """Token splits per batch of a split-N pass (_attention._splits at MAX_SPLITS 32: about 528
    programs in all, at most one per token block)."""
    blocks = _cdiv(n, block_n)
    return _cdiv(n, _cdiv(blocks, max(1, min(32, blocks, _cdiv(528, b)))) * block_n)


def batch_groups(b: int, per_image: float) -> list[int]:
    """Images per launch sequence of the attention backwards (_attention.batch_groups, whose
    budget L2_REUSE_BYTES mirrors): the fewest about equal groups of at most L2_REUSE_BYTES, or
    the whole batch where it fits or not even one image does. (The launcher also keeps group
    boundaries 16-byte aligned, _attention.group_unit: one image at SwiftFormer-XS stages 1-3,
    two at stage 4 in fp16 / bf16, where grouping starts past ~460 images; not modelled.)"""
    total = b * per_image
    if b <= 1 or total <= L2_REUSE_BYTES or per_image > L2_REUSE_BYTES:
        return [b]
    size = _cdiv(b, _cdiv(int(total), int(L2_REUSE_BYTES)))
    while size * per_image > L2_REUSE_BYTES:
        size -= 1
    return [min(size, b - b0) for b0 in range(0, b, size)]


def stats_segments(p: int, c: int) -> int:
    """Segments (programs per channel block) of the statistics kernel (_conv.stats_segments)."""
    ntiles = -(-p // STATS_BLOCK_P)
    want = max(1, min(ntiles, -(-STATS_TARGET_PROGRAMS // -(-c // STATS_BLOCK_C))))
    tiles = -(-ntiles // want)
    return -(-ntiles // tiles)


def _stats_traffic(p: int, c: int, act_in: int) -> tuple[int, int, int]:
    """(DRAM bytes, L2 bytes, launches) of _conv._batch_stats plus the next kernel's re-read of
    x: the statistics kernel reads x (last pixel tile first) and writes one fp32 (count, mean,
    M2) row per segment, the merge kernel reads them and writes [4, C] + 2 [C]; the kernel
    launched next reads x from its start, so that re-read is an L2 hit when x <= L2_REUSE_BYTES
    (the rule of the attention forward's kernel B), else DRAM traffic."""
    ws = stats_segments(p, c) * 3 * c * 4
    hit = act_in <= L2_REUSE_BYTES
    return 2 * ws + 6 * c * 4 + (0 if hit else act_in), act_in if hit else 0, 2


def _conv(op: str, s: dict) -> dict:
    b, c, h, w = s["B"], s["C"], s["H"], s["W"]
    e = s.get("dtype_bytes", 2)
    hid = s.get("hidden", 4 * c if op.startswith("conv_block") or op.startswith("mlp") else 0)
    c_out = s.get("c_out", c)
    p = b * h * w
    act_in, act_out = p * c * e, p * c_out * e
    has_dw = op.startswith("dwconv") or op.startswith("conv_block")
    w_bytes = (10 * c if has_dw else 0) * e + (c * hid + hid + hid * c_out + 2 * c_out) * e
    gemm = 2.0 * p * (c * hid + hid * c_out)
    elem = (18.0 * p * c if has_dw else 0.0) + 20.0 * p * hid  # GELU(erf) ~20 flops
    train = op.endswith("_train")
    has_res = op.startswith("conv_block") or s.get("residual", op.startswith("mlp"))
    bytes_min = act_in + act_out + w_bytes + (act_out if has_res and not has_dw else 0)
    if op.startswith("dwconv"):
        bytes_min = act_in + act_out + w_bytes
        gemm, elem = 0.0, 18.0 * p * c
    moved = bytes_min
    launches = 1
    l2 = (w_bytes * -(-p // 32)) + (2 * act_in if has_dw else 0)
    if not op.startswith("dwconv") and "_backward" not in op and max(c, c_out) > SPLIT_MIN_C:
        # two-kernel split: the hidden is written and read back once (x's dtype); the prologue
        # input is re-read per 128-wide hidden tile and h per 64-wide output tile (from L2)
        moved += 2 * p * hid * e
        launches += 1
        l2 += act_in * -(-hid // 128) + p * hid * e * -(-c_out // 64)
    if train:
        # batch statistics (two launches; the merge kernel also folds BN into dwconv_bn_train's
        # dwconv weights) before the kernel that normalizes, which re-reads x
        sb, sl2, sn = _stats_traffic(p, c, act_in)
        moved += sb
        l2 += sl2
        launches += sn
    # eager: one kernel per layer, each reads its input and writes its output
    eager = 0
    if has_dw:
        eager += act_in + act_in  # dwconv (BN folded)
        if train:
            eager += 3 * act_in  # BN stats read + normalize read/write
    if op.startswith("dwconv"):
        pass
    else:
        if train and not has_dw:
            eager += 3 * act_in
        eager += act_in + p * hid * e  # pw1
        eager += 2 * p * hid * e  # GELU
        eager += p * hid * e + act_out  # pw2
        eager += 2 * act_out  # ls
        if has_res:
            eager += 3 * act_out  # residual add
    eager += w_bytes
    flops = gemm + elem
    rate = TC_FLOPS if e == 2 else FP32_FLOPS
    t = max(moved / BW, gemm / rate + elem / FP32_FLOPS) * 1e6 + LAUNCH_US * launches
    return dict(bytes_min=bytes_min, bytes_moved=moved, eager_bytes=eager, flops=flops,
                l2_bytes=l2,
                launches=launches, predicted_h100_us=t,
                eager_predicted_h100_us=max(eager / BW, gemm / rate + elem / FP32_FLOPS) * 1e6
                + LAUNCH_US * (7 + (2 if train else 0)))


def _mlp_bwd_fused(c: int, co: int, e: int) -> bool:
    """Whether _mlp_backward's fused kernels serve these widths at e bytes per element."""
    return max(c, co) <= (MLP_BWD_MAX_C if e == 2 else MLP_BWD_MAX_C_FP32)


def _mlp_grads_traffic(p: int, c: int, hd: int, co: int, e: int, z_bytes: int, ls: bool):
    """(bytes, launches) of _backward._mlp_grads with every gradient wanted.

    max(C, c_out) <= MLP_BWD_MAX_C (MLP_BWD_MAX_C_FP32 for fp32): the fused kernels of
    _mlp_backward. Kernel P reads z (z_bytes per element) and g, writes dz rows (in the input
    dtype) and per-tile [2, c_out] partials;
    kernel W re-reads z and g, counted as DRAM unless z + g <= L2_REUSE_BYTES (launched right
    after kernel P; the L2 rule of the additive_attention forward), and writes per-segment
    [hd, c] + [c_out, hd] + [hd] fp32 partials. The hidden chunks of one pixel segment are
    neighbouring program ids (hidden fastest) and run together, so their repeated reads of the
    same z / g tiles are L2 hits (not counted). One more kernel sums the partials and casts the
    gradients (read once, [C]-sized writes left out).
    Wider: the torch path, z and the gradient to fp32 rows, a = z W1^T + b1, gu = g ls,
    gh = gu W2, GELU fwd/bwd (one Triton kernel), the layer-scale gradient (u = h W2^T + b2,
    sum g u), the bias sums, dW2 = gu^T h, dW1 = ga^T z, dz = ga W1. Every tensor op reads its
    inputs and writes its output once (fp32 intermediates)."""
    f = 4
    if _mlp_bwd_fused(c, co, e):
        (bp_p, _), (bp_w, bh_w) = MLP_BWD_TILES[_pad(max(c, co))]
        io = p * c * z_bytes + p * co * e
        n_h = -(-hd // bh_w)
        segs = max(1, min(-(-p // bp_w), -(-MLP_BWD_TARGET_PROGRAMS // n_h)))
        parts = -(-p // bp_p) * 2 * co * f + segs * (hd * c + co * hd + hd) * f
        moved = io + p * c * e + (0 if io <= L2_REUSE_BYTES else io) + 2 * parts
        return moved, 3  # kernels P and W, then one _partials.sum_partials launch
    steps = [
        p * c * (z_bytes + f),  # z -> fp32 rows (a copy unless z is fp32 channels_last)
        p * co * (e + f),  # grad -> fp32 rows
        p * c * f + p * hd * f,  # a = z W1^T
        2 * p * hd * f,  # a += b1
        p * co * f + p * hd * f,  # gh = gu W2
        4 * p * hd * f,  # GELU fwd/bwd: read a, gh; write h, ga
        p * co * f,  # db2 = sum gu
        p * co * f + p * hd * f,  # dW2 = gu^T h
        p * hd * f,  # db1 = sum ga
        p * hd * f + p * c * f,  # dW1 = ga^T z
        p * hd * f + p * c * f,  # dz = ga W1
    ]
    if ls:
        steps += [
            2 * p * co * f,  # gu = g * ls
            p * hd * f + p * co * f,  # u = h W2^T
            2 * p * co * f,  # u += b2
            3 * p * co * f,  # g * u
            p * co * f,  # dls = sum
        ]
    return sum(steps), len(steps)


def _conv_backward(op: str, s: dict) -> dict:
    """Backward of the conv ops as triton_kernels/_backward.py and _train_backward.py run them
    (every gradient wanted): split into Triton kernels and torch ops; the MLP part is the fused
    two-kernel backward up to MLP_BWD_MAX_C channels (fp32: MLP_BWD_MAX_C_FP32; tensor-core
    GEMMs for fp16/bf16), cuBLAS
    on fp32 intermediates past it (_mlp_grads_traffic); the forward pieces the gradients need
    are recomputed (the backward op only receives the forward's inputs). Counted per step:
    every activation-sized tensor it reads and writes, once; [C]-sized reductions and the
    dwconv / BN per-tile partials are left out."""
    fwd_op = op[: -len("_backward")]
    b, c, h, w = s["B"], s["C"], s["H"], s["W"]
    e = s.get("dtype_bytes", 2)
    f = 4
    p = b * h * w
    is_pw = fwd_op.startswith(("mlp", "conv_block"))
    hd = s.get("hidden", 4 * c) if is_pw else 0
    co = s.get("c_out", c) if is_pw else c
    has_dw = fwd_op.startswith(("dwconv", "conv_block"))
    train = fwd_op.endswith("_train")
    ls = is_pw
    w_bytes = (10 * c if has_dw else 0) * e + ((c * hd + hd + hd * co + 2 * co) * e if is_pw else 0)
    act = p * c
    moved, launches = 0, 0

    def add(nbytes, n=1):
        nonlocal moved, launches
        moved += nbytes
        launches += n

    if train:
        # batch statistics (recompute the dwconv; two launches): the statistics kernel reads x
        # and the step after it (below) reads x again; that re-read is an L2 hit when x fits
        # (_stats_traffic), so x is counted once either way, plus the partials
        sb, _, sn = _stats_traffic(p, c, act * e)
        add(sb, sn)
    if is_pw:
        fused_mlp = _mlp_bwd_fused(c, co, e)
        if train:
            # z = BN(dwconv(x)): in x's dtype where the fused MLP backward reads it, else fp32
            z_bytes = e if fused_mlp else f
            add(act * (e + z_bytes))
        elif has_dw:
            add(2 * act * e)  # z = dwconv_bn(x) recomputed
            z_bytes = e
        else:
            z_bytes = e  # mlp: z is x
        nb, nl = _mlp_grads_traffic(p, c, hd, co, e, z_bytes, ls)
        add(nb, nl)
        # dz rows (pixel-major), x assumed NCHW (optimize()'s default on a GPU): copied into
        # NCHW only where dz is the returned dx (mlp); the dwconv / BN backward of the other
        # forms read the rows beside the NCHW x as they are (_conv._grad_beside)
        to_nchw = 2 * act * e if fwd_op == "mlp" else 0
        if fused_mlp:
            add(to_nchw)  # kernel P wrote x's dtype
        else:
            add(act * (f + e) + to_nchw)  # torch path: fp32 rows -> x's dtype (-> NCHW)
    if train:
        # every gradient between the kernels is in x's dtype (as eager rounds them)
        ws = 2 * stats_segments(p, c) * 2 * c * 4  # the reduce's segment rows, written + read
        add(act * 2 * e + ws)  # BN backward reduce: g, x (recomputes the dwconv)
        add(5 * c * 4)  # the coefficient kernel: [3, C] coefficients, d bn_weight / d bn_bias
        add(act * 3 * e)  # BN backward affine: g, x -> dz (dwconv backward's input) or dx
    if has_dw:
        # one kernel: read the gradient and x once, write dx in x's dtype (dwconv of the
        # gradient with the flipped kernel; + the residual's gradient for conv_block) and the
        # dW / db per-tile partials; then the flipped weight copy and one partial-sum launch
        add(act * 3 * e + (act * e if is_pw else 0), 3)
    fwd = _conv(fwd_op, s)
    bytes_min = p * co * e + 2 * act * e + 2 * w_bytes  # read grad, x; write dx; weights + grads
    fused = is_pw and _mlp_bwd_fused(c, co, e)
    elem = 3.0 * (fwd["flops"] - 2.0 * p * (c * hd + hd * co) if is_pw else fwd["flops"])
    eager_elem = elem
    rate = TC_FLOPS if e == 2 else FP32_FLOPS
    if fused:
        # kernels P and W each recompute a and gh, then two gradient GEMMs each (P: dz, u;
        # W: dW1, dW2): 4x the forward's GEMM FLOPs, operands in the input dtype (tensor cores
        # for fp16/bf16); GELU and GELU' evaluated in both kernels (one more than the torch path)
        gemm = 2.0 * p * (c * hd + hd * co) * 4
        elem += 20.0 * p * hd
        t = max(moved / BW, gemm / rate + elem / FP32_FLOPS) * 1e6 + LAUNCH_US * launches
    else:
        gemm = 2.0 * p * (c * hd + hd * co) * (3 + (0.5 if ls else 0)) if is_pw else 0.0
        # cuBLAS GEMMs on fp32 intermediates run at the fp32 rate (no tensor cores)
        t = max(moved / BW, gemm / FP32_FLOPS + elem / FP32_FLOPS) * 1e6 + LAUNCH_US * launches
    # eager autograd: every forward op's backward reads its saved input(s) and the incoming
    # gradient and writes a gradient: about twice the forward's bytes, 2x its GEMM FLOPs
    eager = 2 * fwd["eager_bytes"]
    eager_gemm = 2.0 * 2.0 * p * (c * hd + hd * co) if is_pw else 0.0
    eager_t = max(eager / BW, eager_gemm / rate + eager_elem / FP32_FLOPS) * 1e6 \
        + LAUNCH_US * 2 * (7 + (2 if train else 0))
    return dict(bytes_min=bytes_min, bytes_moved=moved, eager_bytes=eager, flops=gemm + elem,
                l2_bytes=0, launches=launches, predicted_h100_us=t,
                eager_predicted_h100_us=eager_t)


def _attention(op: str, s: dict) -> dict:
    b, n, d = s["B"], s["N"], s["D"]
    t_out = s.get("T", d)
    e = s.get("dtype_bytes", 2)
    tok = b * n * d * e
    splits = min(32, max(1, -(-528 // b)))
    ws = b * splits * (d + 2) * 4 * 2
    elem = 12.0 * b * n * d  # two normalizes, score dot, pooling, G*k
    l2 = 0
    if op == "additive_attention_core":
        bytes_min = 4 * tok + d * e
        moved = bytes_min + ws
        eager = 2 * (2 * tok) + 2 * tok + 2 * tok + 3 * tok  # normalize x2, score, pool, G*k
        gemm = 0.0
        launches, eager_launches = 2, 8
    else:
        w_bytes = (2 * d * d + 2 * d + d + d * d + d + t_out * d + t_out) * e
        wq = (d * d + d) * e
        out = b * n * t_out * e
        bytes_min = tok + out + w_bytes
        eager = tok + 2 * tok + 2 * (2 * tok) + 2 * tok + 2 * tok + 3 * tok + 3 * tok \
            + 3 * tok + (tok + out) + w_bytes
        eager_launches = 12
        if _pad(max(d, t_out)) <= (FUSED_MAX_WIDTH_FP32 if e == 4 else FUSED_MAX_WIDTH):
            # fused: kernel A reads x + Wq, writes partials; kernel B reads x again, every weight
            # and the partials, writes out. q is computed 3x (A, B's norms, B's column chunks).
            gemm = 2.0 * b * n * (5 * d * d + d * t_out)
            bn_a, bn_b = FUSED_BLOCK_N[_pad(max(d, t_out))]
            splits = _splits(b, n, bn_a)  # kernel A's
            ws = b * splits * (d + 2) * 4 * 2
            again = tok + wq  # kernel B's re-read of x and Wq right after kernel A
            moved = tok + w_bytes + ws + out + (0 if tok <= L2_REUSE_BYTES else again)
            progs_a, progs_b = b * splits, b * -(-n // bn_b)
            # B's own x tile again for k and per 16-wide proj chunk (L1/L2), per-program weight
            # and partial re-reads
            l2 = (again if tok <= L2_REUSE_BYTES else 0) + tok * (1 + -(-d // 16)) \
                + progs_a * wq + progs_b * (w_bytes + wq + splits * (d + 2) * 4)
            if e == 4 and _pad(max(d, t_out)) in FUSED_GK_SCRATCH_FP32:
                # gk of every token in fp32 through the persistent programs' own blocks (at most
                # FUSED_GK_PROGRAMS x 16 x 256 x 4 B = 4.3 MB, reused item after item: L2-resident,
                # no DRAM), written once and re-read per 16-wide proj chunk (L1/L2)
                gk_ws = b * n * d * 4
                l2 += gk_ws * (1 + -(-d // 16))
            launches = 2
        else:
            gemm = 2.0 * b * n * (2 * d * d + d * d + d * t_out)
            # qk GEMM (write 2 tok), core (read 2, write 2), proj baddbmm (read 2, write 1),
            # bias add (read 1 write 1), final (read 1 write out)
            moved = tok + 2 * tok + (4 * tok + ws) + 3 * tok + 2 * tok + (tok + out) + w_bytes
            launches = 6
    rate = TC_FLOPS if e == 2 else FP32_FLOPS
    t = max(moved / BW, gemm / rate + elem / FP32_FLOPS) * 1e6 + LAUNCH_US * launches
    # eager runs each GEMM once (qk, proj, final), not the fused kernels' recomputed q
    eager_gemm = 0.0 if op == "additive_attention_core" else 2.0 * b * n * (3 * d * d + d * t_out)
    return dict(bytes_min=bytes_min, bytes_moved=moved, eager_bytes=eager, flops=gemm + elem,
                l2_bytes=l2, launches=launches, predicted_h100_us=t,
                eager_predicted_h100_us=max(eager / BW, eager_gemm / rate + elem / FP32_FLOPS)
                * 1e6 + LAUNCH_US * eager_launches)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _attention_backward_fused(b: int, n: int, d: int, t_out: int, e: int) -> tuple:
    """(bytes, gemm FLOPs, launches) of _attention_backward_fused with every gradient wanted and
    a final linear (the widths it serves: see _attention_backward)."""
    f = 4
    key = _pad(max(d, t_out))
    bn_p, _, bn_w, bi = ATTN_BWD_TILES[key]
    chunks = _cdiv(d, bi)
    w_bytes = (2 * d * d + 2 * d + d + d * d + d + t_out * d + t_out) * e
    part = ((2 * d + 2 * t_out + 3) * d + t_out) * f  # one segment's weight partial (flat)
    steps = [t_out * d * e * 2 + d * d * e]  # host: Wfp = Wf Wp
    segs = 0
    # kernels P, T, W per batch group (batch_groups: x + dy of a group fit L2_REUSE_BYTES)
    for bg in batch_groups(b, n * (d + t_out) * e):
        rows = bg * n
        tok, dy = rows * d * e, rows * t_out * e
        # kernel P's splits and kernel W's segments (weight_segments)
        splits = _splits(bg, n, bn_p)
        want = max(1, min(_cdiv(ATTN_BWD_TARGET_PROGRAMS, ATTN_BWD_W_PARTS * chunks),
                          _cdiv(rows, ATTN_BWD_MIN_SEG_ROWS)))
        seg = _cdiv(rows, _cdiv(_cdiv(rows, want), bn_w) * bn_w)
        segs += seg
        again = 0 if tok + dy <= L2_REUSE_BYTES else tok + dy  # T / W re-read x, dy (L2 rule)
        # kernel T's fp32 dq / dk workspace (DQK_SCRATCH): written once to DRAM (a ragged
        # tile's rows past N are not written), re-read per BLOCK_J chunk from L1 / L2 (not
        # counted)
        dqk = 2 * rows * d * f if e == 4 and key in ATTN_BWD_DQK_SCRATCH_FP32 else 0
        steps += [
            tok + dy + w_bytes + bg * splits * (2 * key + 2) * f,  # P: x, dy -> pool / dG
            again + tok + bg * 2 * key * f + 6 * rows * f + dqk,  # T: dx, G / dG, 6 / token
            again + 6 * rows * f + seg * part,  # W: scalars, one partial per segment
        ]
    steps.append(segs * part + part)  # sum_partials: the segments' sum, dWqk / dbqk / dwg cast
    # the finalize kernel: reads E, F, sum dy (fp32), Wf, Wp, bp; writes dWp, dbp, dWf, dbf
    steps.append((2 * t_out * d + t_out) * f + (t_out * d + d * d + d) * e
                 + (d * d + d + t_out * d + t_out) * e)
    # tensor-core MACs per token: P q, k, dgk; T q, k, dout1, dgk, dx; W (4 parts) q_i, k_i
    # twice each, dout1_i, dgk_i and four accumulations; plus Wf Wp and the finalize GEMMs
    gemm = 2.0 * b * n * (12 * d * d + 7 * t_out * d) + 2.0 * 3 * t_out * d * d
    # launches: one per step, plus the cast of Wf Wp to fp16 / bf16
    return sum(steps), gemm, len(steps) + (1 if e == 2 else 0)


def _attention_backward(op: str, s: dict) -> dict:
    """Every gradient wanted. Core: pass 1 reads q, k, dgk; pass 2 reads them again (+ the
    residual's qn gradient in the module) and writes dq, dk. The module, where the fused
    backward serves it (padded max(D, T) <= ATTN_BWD_FUSED_MAX_WIDTH for fp16/bf16, <=
    ATTN_BWD_FUSED_MAX_WIDTH_FP32 for fp32): kernels P, T, W of _attention_backward_fused (no
    token-sized intermediate in memory; x and dy re-read by T and W from L2 when they fit,
    L2_REUSE_BYTES), fp32 weight partials per W segment summed by one kernel, then the small
    GEMMs of the projection gradients in one finalize kernel (_attention_backward_fused). Wider:
    the torch path recomputes its forward (qk GEMM, the core, proj for w_final's gradient) and
    runs each GEMM's two gradient GEMMs in cuBLAS."""
    b, n, d = s["B"], s["N"], s["D"]
    t_out = s.get("T", d)
    e = s.get("dtype_bytes", 2)
    tok = b * n * d * e
    # the core kernels' fp32 workspaces, written once and read once (DRAM; pass 2's re-reads of
    # one batch's split rows hit L2): pass 1's G / dG / (m, l) rows per split, pass 2's dw_g
    # partial row per program, both at the config's padded width
    key = next(k for k in sorted(ATTN_CORE_BWD_TILES) if _pad(d) <= k or k == 512)
    bn1, bn2 = ATTN_CORE_BWD_TILES[key]
    tiles = _cdiv(n, bn2)

    def core_ws(bg: int) -> int:
        splits = _splits(bg, n, bn1)
        progs = _cdiv(tiles, _cdiv(tiles, max(1, min(tiles,
                                                     _cdiv(ATTN_CORE_APPLY_PROGRAMS, bg)))))
        return bg * splits * (2 * key + 2) * 4 * 2 + bg * progs * key * 4 * 2

    ws = core_ws(b)
    elem = 40.0 * b * n * d  # normalize x2 + their backward, score, dG, da, ds, dqn
    if op == "additive_attention_core_backward":
        bytes_min = 5 * tok + 2 * d * e
        # per batch group (batch_groups: q, k, dgk of a group fit L2_REUSE_BYTES) pass 1 reads
        # q, k, dgk; pass 2, launched right after it, reads them again (an L2 hit when the
        # group's three fit, the rule of the other two-pass kernels) and writes dq, dk
        groups = batch_groups(b, 3 * n * d * e)
        moved = 2 * d * e
        for bg in groups:
            tg = bg * n * d * e
            moved += 3 * tg + (0 if 3 * tg <= L2_REUSE_BYTES else 3 * tg) + 2 * tg + core_ws(bg)
        # autograd through the reference: ~4 elementwise / reduction kernels per forward op,
        # each reading ~2 and writing ~1 token tensor of saved activations
        eager = 16 * tok + 2 * d * e
        gemm = 0.0
        # passes 1 and 2 per group, the host sum of the per-block dw_g partials, its cast for
        # fp16 / bf16
        launches, eager_launches = 2 * len(groups) + 1 + (1 if e == 2 else 0), 20
    else:
        w_bytes = (2 * d * d + 2 * d + d + d * d + d + t_out * d + t_out) * e
        out = b * n * t_out * e
        bytes_min = out + 2 * tok + 2 * w_bytes  # read dy, x, weights; write dx, weight grads
        fwd_gemm = 2.0 * b * n * (2 * d * d + d * d + d * t_out)
        # dWf (out + tok), dy @ Wf (out + tok), dWp (2), dgk (2), dx (3), dWqk (3),
        # bias sums (3 + out)
        rest = 2 * (out + tok) + 2 * tok + 2 * tok + 3 * tok + 3 * tok + 3 * tok + out
        # eager autograd saves the forward's activations (no recompute; read back instead)
        eager = 5 * tok + 16 * tok + rest + 3 * w_bytes
        eager_launches = 31
        top = ATTN_BWD_FUSED_MAX_WIDTH_FP32 if e == 4 else ATTN_BWD_FUSED_MAX_WIDTH
        if _pad(max(d, t_out)) <= top:
            moved, gemm, launches = _attention_backward_fused(b, n, d, t_out, e)
            elem = 60.0 * b * n * d  # + kernel W's per-chunk dq / dk / gk / qn
        else:
            gemm = fwd_gemm * 3  # recompute + dX + dW of every GEMM
            recompute = 3 * tok + 4 * tok + 3 * tok  # qk GEMM, core forward, proj (+ bias)
            # the core backward's passes over the whole batch, pass 2's re-reads from DRAM (the
            # launcher groups the batch when q, k, dgk, dqn exceed L2_REUSE_BYTES; not modelled
            # on this path, which no SwiftFormer-XS shape takes)
            core_bwd = 10 * tok + ws
            moved = recompute + core_bwd + rest + 3 * w_bytes
            launches = 19
    rate = TC_FLOPS if e == 2 else FP32_FLOPS
    t = max(moved / BW, gemm / rate + elem / FP32_FLOPS) * 1e6 + LAUNCH_US * launches
    # the eager estimate as before the fused path (GEMM FLOPs: 3x the forward's)
    eager_gemm = gemm if op == "additive_attention_core_backward" else fwd_gemm * 3
    eager_elem = 40.0 * b * n * d
    return dict(bytes_min=bytes_min, bytes_moved=moved, eager_bytes=eager, flops=gemm + elem,
                l2_bytes=0, launches=launches, predicted_h100_us=t,
                eager_predicted_h100_us=max(eager / BW, eager_gemm / rate
                                            + eager_elem / FP32_FLOPS) * 1e6
                + LAUNCH_US * eager_launches)


def roofline(op: str, shapes: dict) -> dict:
    """Bytes / FLOPs / predicted H100 microseconds of the Triton implementation of `op`.

    Returns dict(bytes_min, bytes_moved, eager_bytes, flops, l2_bytes, launches,
    predicted_h100_us, eager_predicted_h100_us). See the module docstring for the model.
    """
    if op in ("additive_attention_core_backward", "additive_attention_backward"):
        return _attention_backward(op, shapes)
    if op in ("additive_attention_core", "additive_attention"):
        return _attention(op, shapes)
    conv_ops = ("dwconv_bn", "dwconv_bn_train", "mlp", "mlp_train", "conv_block",
                "conv_block_train")
    if op in conv_ops:
        return _conv(op, shapes)
    if op.endswith("_backward") and op[: -len("_backward")] in conv_ops:
        return _conv_backward(op, shapes)
    raise ValueError(f"no roofline model for {op!r}")


# SwiftFormer-XS at 224x224 (embed dims 48/56/112/220, stage resolutions 56/28/14/7).
SWIFTFORMER_XS_SHAPES = {
    "stage1": dict(C=48, H=56, W=56),
    "stage2": dict(C=56, H=28, W=28),
    "stage3": dict(C=112, H=14, W=14),
    "stage4": dict(C=220, H=7, W=7),
}
