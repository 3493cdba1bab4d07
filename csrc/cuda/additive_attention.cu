// Efficient additive attention core (SPEC.md section 1) on CUDA: everything between the qk
// projection GEMM and the output projection GEMM (those run in cuBLAS through ATen, see
// bindings.cpp):
//   qn = normalize(q), kn = normalize(k), s = scale * qn . w_g, a = POOL(s over tokens),
//   G = sum_n a_n qn_n,  gk = G * kn,  res = qn + bias (the residual, with b_proj folded in).
// One warp per token, fp32 math. Pooling needs a reduction over all N tokens of a batch row
// before G * kn can be written, so:
//   * splits == 1: one block per batch row does everything (attn_fwd_fused_kernel);
//   * splits > 1 (few batch rows, many tokens): blocks pool a chunk of tokens each and write a
//     partial state (softmax: running max and sum, flash-style; l2: sum of s^2; all: unnormalized
//     sum of a * qn), then attn_fwd_apply_kernel merges the partials of its row and writes gk.
// The pooled states are linear in a * qn, so partial sums merge exactly (up to fp32 rounding).
#include "swiftkern/cuda_device.h"

namespace swiftkern {
namespace cuda {
namespace {

constexpr int kWarps = kAttnThreads / 32;

// Softmax over a size-1 dim (HF "sum" variant): 1 for finite s, NaN for NaN/Inf s, as torch does.
__device__ __forceinline__ float softmax1(float s) { return __fsub_rn(s, s) + 1.0f; }

// Weight of a partial state with running max `m` when merged under the overall max `M`.
template <Pool P>
__device__ __forceinline__ float merge_factor(float m, float M) {
  if constexpr (P == Pool::kSoftmax) {
    return m == -INFINITY ? 0.0f : expf(m - M);
  } else {
    return 1.0f;
  }
}

// Merges `count` (m, l) states laid out with `stride` floats between them.
template <Pool P>
__device__ __forceinline__ void merge_stats(const float* st, int count, int64_t stride, float& M,
                                            float& L) {
  M = -INFINITY;
  for (int i = 0; i < count; ++i) M = fmaxf(M, st[i * stride]);
  L = 0.0f;
  for (int i = 0; i < count; ++i) L += st[i * stride + 1] * merge_factor<P>(st[i * stride], M);
}

// Normalizer turning the merged sum of a * qn into G.
template <Pool P>
__device__ __forceinline__ float pool_norm(float L) {
  if constexpr (P == Pool::kSum) {
    return 1.0f;
  } else if constexpr (P == Pool::kL2) {
    return math::l2_inv_norm(L);  // a = s / max(||s||, eps); L = sum s^2
  } else {
    return 1.0f / L;
  }
}

template <Pool P>
__device__ __forceinline__ void write_stats(float* out, float M, float L) {
  out[0] = P == Pool::kSoftmax ? M : 0.0f;
  out[1] = P == Pool::kSum ? 0.0f : L;
}

// Pools tokens [n0, n1) of batch row b into per-warp states: s_acc[warp * D + d] and
// s_stat[2 * warp + {0, 1}]. Also writes the residual row (qn + bias) of each token.
template <typename T, Pool P>
__device__ void fwd_pool_chunk(const AttnFwdParams& p, int64_t b, int64_t n0, int64_t n1,
                               const float* s_wg, float* s_acc, float* s_stat) {
  const int D = p.D;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  float* acc = s_acc + warp * D;
  for (int d = lane; d < D; d += 32) acc[d] = 0.0f;
  const T* q = static_cast<const T*>(p.q) + b * p.q_sb;
  T* res = p.res ? static_cast<T*>(p.res) + b * p.N * D : nullptr;
  const T* bias = static_cast<const T*>(p.bias);
  float m = -INFINITY;
  float l = 0.0f;
  for (int64_t n = n0 + warp; n < n1; n += kWarps) {
    const T* qr = q + n * p.q_sn;
    float ss = 0.0f, dot = 0.0f;
    for (int d = lane; d < D; d += 32) {
      const float v = to_float(qr[d]);
      ss = fmaf(v, v, ss);
      dot = fmaf(v, s_wg[d], dot);
    }
    ss = warp_sum(ss);
    dot = warp_sum(dot);
    const float inv = math::l2_inv_norm(ss);
    const float s = dot * inv * p.scale;
    float a, c;  // new acc = acc * c + a * qn
    if constexpr (P == Pool::kSum) {
      a = softmax1(s);
      c = 1.0f;
    } else if constexpr (P == Pool::kL2) {
      a = s;
      c = 1.0f;
      l = fmaf(s, s, l);
    } else {
      const float mn = fmaxf(m, s);
      c = m == -INFINITY ? 0.0f : expf(m - mn);
      a = mn == -INFINITY ? 0.0f : expf(s - mn);
      l = fmaf(l, c, a);
      m = mn;
    }
    T* rr = res ? res + n * D : nullptr;
    for (int d = lane; d < D; d += 32) {
      const float qn = to_float(qr[d]) * inv;
      if (rr) rr[d] = from_float<T>(qn + load_or(bias, d, 0.0f));
      acc[d] = fmaf(a, qn, acc[d] * c);
    }
  }
  if (lane == 0) {
    s_stat[2 * warp] = m;
    s_stat[2 * warp + 1] = l;
  }
}

// gk[n, :] = G * normalize(k[n, :]) for tokens [n0, n1) of batch row b.
template <typename T>
__device__ void fwd_apply_chunk(const AttnFwdParams& p, int64_t b, int64_t n0, int64_t n1,
                                const float* s_g) {
  const int D = p.D;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const T* k = static_cast<const T*>(p.k) + b * p.k_sb;
  T* gk = static_cast<T*>(p.gk) + b * p.N * D;
  for (int64_t n = n0 + warp; n < n1; n += kWarps) {
    const T* kr = k + n * p.k_sn;
    float ss = 0.0f;
    for (int d = lane; d < D; d += 32) {
      const float v = to_float(kr[d]);
      ss = fmaf(v, v, ss);
    }
    const float inv = math::l2_inv_norm(warp_sum(ss));
    T* out = gk + n * D;
    for (int d = lane; d < D; d += 32) out[d] = from_float<T>(s_g[d] * (to_float(kr[d]) * inv));
  }
}

template <typename T>
__device__ void load_vec(float* dst, const void* src, int D) {
  const T* s = static_cast<const T*>(src);
  for (int d = threadIdx.x; d < D; d += blockDim.x) dst[d] = to_float(s[d]);
}

__device__ __forceinline__ void chunk_of(int64_t N, int splits, int sp, int64_t& n0, int64_t& n1) {
  const int64_t chunk = (N + splits - 1) / splits;
  n0 = chunk * sp;
  n1 = n0 + chunk < N ? n0 + chunk : N;
}

// Shared memory (floats): w_g[D], G[D], stats[2 * kWarps], acc[kWarps * D].
template <typename T, Pool P>
__global__ void __launch_bounds__(kAttnThreads) attn_fwd_fused_kernel(const AttnFwdParams p) {
  extern __shared__ float smem[];
  const int D = p.D;
  float* s_wg = smem;
  float* s_g = s_wg + D;
  float* s_stat = s_g + D;
  float* s_acc = s_stat + 2 * kWarps;
  const int64_t b = blockIdx.x;
  load_vec<T>(s_wg, p.w_g, D);
  __syncthreads();
  fwd_pool_chunk<T, P>(p, b, 0, p.N, s_wg, s_acc, s_stat);
  __syncthreads();
  float M, L;
  merge_stats<P>(s_stat, kWarps, 2, M, L);
  const float norm = pool_norm<P>(L);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float g = 0.0f;
    for (int w = 0; w < kWarps; ++w) g += s_acc[w * D + d] * merge_factor<P>(s_stat[2 * w], M);
    g *= norm;
    s_g[d] = g;
    if (p.g_out) p.g_out[b * D + d] = g;
  }
  if (threadIdx.x == 0 && p.stats_out) write_stats<P>(p.stats_out + 2 * b, M, L);
  __syncthreads();
  if (p.gk) fwd_apply_chunk<T>(p, b, 0, p.N, s_g);
}

// Split path, pass 1: workspace entry (b, sp) = [M, L, sum_w acc_w * factor_w (D floats)].
template <typename T, Pool P>
__global__ void __launch_bounds__(kAttnThreads) attn_fwd_partial_kernel(const AttnFwdParams p) {
  extern __shared__ float smem[];
  const int D = p.D;
  float* s_wg = smem;
  float* s_stat = s_wg + D;
  float* s_acc = s_stat + 2 * kWarps;
  const int64_t b = blockIdx.x / p.splits;
  const int sp = static_cast<int>(blockIdx.x % p.splits);
  int64_t n0, n1;
  chunk_of(p.N, p.splits, sp, n0, n1);
  load_vec<T>(s_wg, p.w_g, D);
  __syncthreads();
  fwd_pool_chunk<T, P>(p, b, n0, n1, s_wg, s_acc, s_stat);
  __syncthreads();
  float M, L;
  merge_stats<P>(s_stat, kWarps, 2, M, L);
  float* out = p.workspace + (b * p.splits + sp) * static_cast<int64_t>(D + 2);
  if (threadIdx.x == 0) {
    out[0] = M;
    out[1] = L;
  }
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float g = 0.0f;
    for (int w = 0; w < kWarps; ++w) g += s_acc[w * D + d] * merge_factor<P>(s_stat[2 * w], M);
    out[2 + d] = g;
  }
}

// Split path, pass 2: merge the row's partials into G, then write gk for this block's chunk.
// Shared (floats): G[D], factor[splits].
template <typename T, Pool P>
__global__ void __launch_bounds__(kAttnThreads) attn_fwd_apply_kernel(const AttnFwdParams p) {
  extern __shared__ float smem[];
  const int D = p.D;
  float* s_g = smem;
  const int64_t b = blockIdx.x / p.splits;
  const int sp = static_cast<int>(blockIdx.x % p.splits);
  const int64_t stride = D + 2;
  const float* ws = p.workspace + b * p.splits * stride;
  float* s_fac = s_g + D;  // merge factor of each split
  float M, L;
  merge_stats<P>(ws, p.splits, stride, M, L);
  const float norm = pool_norm<P>(L);
  for (int s = threadIdx.x; s < p.splits; s += blockDim.x) s_fac[s] = merge_factor<P>(ws[s * stride], M);
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float g = 0.0f;
    for (int s = 0; s < p.splits; ++s) g += ws[s * stride + 2 + d] * s_fac[s];
    g *= norm;
    s_g[d] = g;
    if (sp == 0 && p.g_out) p.g_out[b * D + d] = g;
  }
  if (sp == 0 && threadIdx.x == 0 && p.stats_out) write_stats<P>(p.stats_out + 2 * b, M, L);
  __syncthreads();
  if (p.gk) {
    int64_t n0, n1;
    chunk_of(p.N, p.splits, sp, n0, n1);
    fwd_apply_chunk<T>(p, b, n0, n1, s_g);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward. With dG = sum_n dgk_n * kn_n and da_n = dG . qn_n, the pooled sums the pool
// backward needs collapse to one dot: sum_n a_n da_n = dG . G. So one reduction pass (dG) and one
// token-parallel pass suffice:
//   softmax: ds = a (da - dG.G);  l2: ds = (da - a dG.G) / max(||s||, eps);  sum: ds = 0
//   dqn = dres + a dG + scale ds w_g;   dkn = G * dgk;   dq, dk = normalize backward;
//   dw_g = scale * sum_n ds_n qn_n (per-block partials, summed by the caller).
// ---------------------------------------------------------------------------------------------

// Pass 1: workspace entry (b, sp) = sum over the chunk of dgk_n * kn_n. Shared: acc[kWarps * D].
template <typename T>
__global__ void __launch_bounds__(kAttnThreads) attn_bwd_reduce_kernel(const AttnBwdParams p) {
  extern __shared__ float smem[];
  const int D = p.D;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t b = blockIdx.x / p.splits;
  const int sp = static_cast<int>(blockIdx.x % p.splits);
  int64_t n0, n1;
  chunk_of(p.N, p.splits, sp, n0, n1);
  float* acc = smem + warp * D;
  for (int d = lane; d < D; d += 32) acc[d] = 0.0f;
  const T* k = static_cast<const T*>(p.k) + b * p.k_sb;
  const T* dgk = static_cast<const T*>(p.dgk) + b * p.N * D;
  for (int64_t n = n0 + warp; n < n1; n += kWarps) {
    const T* kr = k + n * p.k_sn;
    const T* gr = dgk + n * D;
    float ss = 0.0f;
    for (int d = lane; d < D; d += 32) {
      const float v = to_float(kr[d]);
      ss = fmaf(v, v, ss);
    }
    const float inv = math::l2_inv_norm(warp_sum(ss));
    for (int d = lane; d < D; d += 32) acc[d] = fmaf(to_float(gr[d]), to_float(kr[d]) * inv, acc[d]);
  }
  __syncthreads();
  float* out = p.workspace + (b * p.splits + sp) * static_cast<int64_t>(D);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float g = 0.0f;
    for (int w = 0; w < kWarps; ++w) g += smem[w * D + d];
    out[d] = g;
  }
}

// Pass 2. Shared (floats): w_g[D], G[D], dG[D], red[kWarps], acc[kWarps * D] (dw_g per warp).
template <typename T, Pool P>
__global__ void __launch_bounds__(kAttnThreads) attn_bwd_apply_kernel(const AttnBwdParams p) {
  extern __shared__ float smem[];
  const int D = p.D;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  float* s_wg = smem;
  float* s_g = s_wg + D;
  float* s_dg = s_g + D;
  float* s_red = s_dg + D;
  float* s_acc = s_red + kWarps;
  const int64_t b = blockIdx.x / p.splits;
  const int sp = static_cast<int>(blockIdx.x % p.splits);
  int64_t n0, n1;
  chunk_of(p.N, p.splits, sp, n0, n1);

  load_vec<T>(s_wg, p.w_g, D);
  const float* ws = p.workspace + b * p.splits * static_cast<int64_t>(D);
  float part = 0.0f;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float dg = 0.0f;
    for (int s = 0; s < p.splits; ++s) dg += ws[s * static_cast<int64_t>(D) + d];
    const float g = p.g[b * D + d];
    s_g[d] = g;
    s_dg[d] = dg;
    part = fmaf(dg, g, part);
  }
  float* acc = s_acc + warp * D;
  for (int d = lane; d < D; d += 32) acc[d] = 0.0f;
  part = warp_sum(part);
  if (lane == 0) s_red[warp] = part;
  __syncthreads();
  float ada = 0.0f;  // sum_n a_n da_n = dG . G
  for (int w = 0; w < kWarps; ++w) ada += s_red[w];
  const float M = p.stats[2 * b];
  const float L = p.stats[2 * b + 1];
  const float scale = p.scale;

  const T* q = static_cast<const T*>(p.q) + b * p.q_sb;
  const T* k = static_cast<const T*>(p.k) + b * p.k_sb;
  const T* dgk = static_cast<const T*>(p.dgk) + b * p.N * D;
  const T* dres = p.dres ? static_cast<const T*>(p.dres) + b * p.N * D : nullptr;
  T* dq = static_cast<T*>(p.dq) + b * p.dq_sb;
  T* dk = static_cast<T*>(p.dk) + b * p.dk_sb;
  for (int64_t n = n0 + warp; n < n1; n += kWarps) {
    // --- query row ---
    const T* qr = q + n * p.q_sn;
    const T* rr = dres ? dres + n * D : nullptr;
    float ss = 0.0f, dwg = 0.0f, ddg = 0.0f;
    for (int d = lane; d < D; d += 32) {
      const float v = to_float(qr[d]);
      ss = fmaf(v, v, ss);
      dwg = fmaf(v, s_wg[d], dwg);
      ddg = fmaf(v, s_dg[d], ddg);
    }
    ss = warp_sum(ss);
    dwg = warp_sum(dwg);
    ddg = warp_sum(ddg);
    const float inv = math::l2_inv_norm(ss);
    const bool clamped = math::l2_clamped(ss);
    const float s = dwg * inv * scale;
    const float da = ddg * inv;
    float a, ds;
    if constexpr (P == Pool::kSum) {
      a = softmax1(s);
      ds = 0.0f;
    } else if constexpr (P == Pool::kL2) {
      const float inv_s = math::l2_inv_norm(L);
      a = s * inv_s;
      ds = math::l2_normalize_grad(da, a, ada, inv_s, math::l2_clamped(L));
    } else {
      a = expf(s - M) / L;
      ds = a * (da - ada);
    }
    const float ds_scaled = ds * scale;
    float dot = 0.0f;  // qn . dqn
    for (int d = lane; d < D; d += 32) {
      const float qn = to_float(qr[d]) * inv;
      const float dqn = load_or(rr, d, 0.0f) + a * s_dg[d] + ds_scaled * s_wg[d];
      dot = fmaf(qn, dqn, dot);
    }
    dot = warp_sum(dot);
    T* dqr = dq + n * p.dq_sn;
    for (int d = lane; d < D; d += 32) {
      const float qn = to_float(qr[d]) * inv;
      const float dqn = load_or(rr, d, 0.0f) + a * s_dg[d] + ds_scaled * s_wg[d];
      dqr[d] = from_float<T>(math::l2_normalize_grad(dqn, qn, dot, inv, clamped));
      if constexpr (P != Pool::kSum) acc[d] = fmaf(ds_scaled, qn, acc[d]);
    }
    // --- key row ---
    const T* kr = k + n * p.k_sn;
    const T* gr = dgk + n * D;
    float ssk = 0.0f, dotk = 0.0f;  // ||k||^2, k . dkn
    for (int d = lane; d < D; d += 32) {
      const float v = to_float(kr[d]);
      ssk = fmaf(v, v, ssk);
      dotk = fmaf(v, to_float(gr[d]) * s_g[d], dotk);
    }
    ssk = warp_sum(ssk);
    dotk = warp_sum(dotk);
    const float invk = math::l2_inv_norm(ssk);
    const bool clampedk = math::l2_clamped(ssk);
    dotk *= invk;  // kn . dkn
    T* dkr = dk + n * p.dk_sn;
    for (int d = lane; d < D; d += 32) {
      const float kn = to_float(kr[d]) * invk;
      const float dkn = to_float(gr[d]) * s_g[d];
      dkr[d] = from_float<T>(math::l2_normalize_grad(dkn, kn, dotk, invk, clampedk));
    }
  }
  if constexpr (P != Pool::kSum) {
    if (p.dwg_partial) {
      __syncthreads();
      float* out = p.dwg_partial + static_cast<int64_t>(blockIdx.x) * D;
      for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float g = 0.0f;
        for (int w = 0; w < kWarps; ++w) g += s_acc[w * D + d];
        out[d] = g;
      }
    }
  }
}

template <typename T, Pool P>
cudaError_t launch_fwd(const AttnFwdParams& p, cudaStream_t stream) {
  const int D = p.D;
  const dim3 block(kAttnThreads);
  if (p.splits <= 1) {
    const size_t shm = sizeof(float) * (2 * D + 2 * kWarps + kWarps * D);
    attn_fwd_fused_kernel<T, P><<<dim3(static_cast<unsigned>(p.B)), block, shm, stream>>>(p);
    return cudaGetLastError();
  }
  const dim3 grid(static_cast<unsigned>(p.B * p.splits));
  const size_t shm1 = sizeof(float) * (D + 2 * kWarps + kWarps * D);
  attn_fwd_partial_kernel<T, P><<<grid, block, shm1, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  attn_fwd_apply_kernel<T, P><<<grid, block, sizeof(float) * (D + p.splits), stream>>>(p);
  return cudaGetLastError();
}

template <typename T, Pool P>
cudaError_t launch_bwd(const AttnBwdParams& p, cudaStream_t stream) {
  const int D = p.D;
  const dim3 grid(static_cast<unsigned>(p.B * (p.splits < 1 ? 1 : p.splits)));
  const dim3 block(kAttnThreads);
  attn_bwd_reduce_kernel<T><<<grid, block, sizeof(float) * kWarps * D, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const size_t shm = sizeof(float) * (3 * D + kWarps + kWarps * D);
  attn_bwd_apply_kernel<T, P><<<grid, block, shm, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

int attn_splits(int64_t B, int64_t N, int num_sms) {
  const int64_t target = 2 * static_cast<int64_t>(num_sms > 0 ? num_sms : 1);
  if (B >= target || N <= 64) return 1;
  int64_t s = (target + B - 1) / B;
  const int64_t by_tokens = (N + 63) / 64;  // at least 64 tokens per block
  if (s > by_tokens) s = by_tokens;
  if (s > 256) s = 256;
  if (s < 1) s = 1;
  const int64_t chunk = (N + s - 1) / s;  // no empty trailing split
  return static_cast<int>((N + chunk - 1) / chunk);
}

size_t attn_fwd_workspace_floats(int64_t B, int splits, int D) {
  return splits > 1 ? static_cast<size_t>(B) * splits * (D + 2) : 0;
}

size_t attn_bwd_workspace_floats(int64_t B, int splits, int D) {
  return static_cast<size_t>(B) * (splits < 1 ? 1 : splits) * D;
}

cudaError_t attn_fwd(const AttnFwdParams& p, cudaStream_t stream) {
  if (p.D < 1 || p.D > kAttnMaxDim || p.B < 1 || p.N < 1) return cudaErrorInvalidValue;
  if (p.splits > 1 && p.workspace == nullptr) return cudaErrorInvalidValue;
  SK_DISPATCH_DTYPE(p.dtype, {
    switch (p.pool) {
      case Pool::kSum:
        return launch_fwd<T, Pool::kSum>(p, stream);
      case Pool::kL2:
        return launch_fwd<T, Pool::kL2>(p, stream);
      case Pool::kSoftmax:
        return launch_fwd<T, Pool::kSoftmax>(p, stream);
    }
    return cudaErrorInvalidValue;
  });
  return cudaErrorInvalidValue;
}

cudaError_t attn_bwd(const AttnBwdParams& p, cudaStream_t stream) {
  if (p.D < 1 || p.D > kAttnMaxDim || p.B < 1 || p.N < 1 || p.workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  SK_DISPATCH_DTYPE(p.dtype, {
    switch (p.pool) {
      case Pool::kSum:
        return launch_bwd<T, Pool::kSum>(p, stream);
      case Pool::kL2:
        return launch_bwd<T, Pool::kL2>(p, stream);
      case Pool::kSoftmax:
        return launch_bwd<T, Pool::kSoftmax>(p, stream);
    }
    return cudaErrorInvalidValue;
  });
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace swiftkern
