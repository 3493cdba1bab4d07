// Per-channel reductions for the conv blocks' train forms and backwards (SPEC.md section 2):
// BatchNorm batch statistics, the depthwise 3x3 weight/bias gradient, and the elementwise pieces
// around them (BN affine, GELU backward). Reductions write per-split fp32 partials that the binding
// sums (deterministic, no atomics). Batch statistics are two-pass (mean, then sum of squared
// deviations) so channels with |mean| >> std keep their variance.
#include "swiftkern/cuda_device.h"

namespace swiftkern {
namespace cuda {
namespace {

constexpr int kRedThreads = 256;
constexpr int kRedWarps = kRedThreads / 32;

__device__ __forceinline__ void chunk_of(int64_t n, int splits, int s, int64_t& e0, int64_t& e1) {
  const int64_t chunk = (n + splits - 1) / splits;
  e0 = chunk * s;
  e1 = e0 + chunk < n ? e0 + chunk : n;
}

// NCHW: one block per (channel, split); threads stride the channel's B*HW elements.
template <typename T, bool kCentered>
__global__ void __launch_bounds__(kRedThreads)
    channel_sums_nchw_kernel(const T* __restrict__ z, const float* __restrict__ mean,
                             float* __restrict__ partial, int64_t B, int64_t C, int64_t HW,
                             int splits) {
  __shared__ float s_red[kRedWarps];
  const int64_t c = blockIdx.x;
  const int s = blockIdx.y;
  int64_t e0, e1;
  chunk_of(B * HW, splits, s, e0, e1);
  const float mu = kCentered ? mean[c] : 0.0f;
  float acc = 0.0f;
  // (b, j) of element e advance incrementally: a 64-bit division per element would be a call.
  int64_t e = e0 + threadIdx.x;
  int64_t b = e / HW;
  int64_t j = e - b * HW;
  for (; e < e1; e += blockDim.x) {
    const float v = to_float(z[(b * C + c) * HW + j]);
    if constexpr (kCentered) {
      acc = fmaf(v - mu, v - mu, acc);
    } else {
      acc += v;
    }
    j += blockDim.x;
    while (j >= HW) {
      j -= HW;
      ++b;
    }
  }
  acc = warp_sum(acc);
  if ((threadIdx.x & 31) == 0) s_red[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.0f;
    for (int w = 0; w < kRedWarps; ++w) t += s_red[w];
    partial[s * C + c] = t;
  }
}

// NHWC: one block per (32 channels, split); lane = channel (coalesced), warp strides the rows.
template <typename T, bool kCentered>
__global__ void __launch_bounds__(kRedThreads)
    channel_sums_nhwc_kernel(const T* __restrict__ z, const float* __restrict__ mean,
                             float* __restrict__ partial, int64_t rows, int64_t C, int splits) {
  __shared__ float s_red[kRedWarps][32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + lane;
  const int s = blockIdx.y;
  int64_t r0, r1;
  chunk_of(rows, splits, s, r0, r1);
  float acc = 0.0f;
  if (c < C) {
    const float mu = kCentered ? mean[c] : 0.0f;
    for (int64_t r = r0 + warp; r < r1; r += kRedWarps) {
      const float v = to_float(z[r * C + c]);
      if constexpr (kCentered) {
        acc = fmaf(v - mu, v - mu, acc);
      } else {
        acc += v;
      }
    }
  }
  s_red[warp][lane] = acc;
  __syncthreads();
  if (warp == 0 && c < C) {
    float t = 0.0f;
    for (int w = 0; w < kRedWarps; ++w) t += s_red[w][lane];
    partial[s * C + c] = t;
  }
}

// Taps t < 9 accumulate g * x[h + t/3 - 1, w + t%3 - 1]; t = 9 accumulates g (bias gradient).
template <typename T>
__device__ __forceinline__ void dw_taps(float (&acc)[10], float g, const T* x, int64_t plane,
                                        int64_t h, int64_t w, int64_t H, int64_t W, int64_t sh,
                                        int64_t sw) {
#pragma unroll
  for (int i = 0; i < 3; ++i) {
    const int64_t hh = h + i - 1;
    const bool hok = hh >= 0 && hh < H;
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      const int64_t ww = w + j - 1;
      if (hok && ww >= 0 && ww < W) acc[i * 3 + j] = fmaf(g, to_float(x[plane + hh * sh + ww * sw]), acc[i * 3 + j]);
    }
  }
  acc[9] += g;
}

template <typename T>
__global__ void __launch_bounds__(kRedThreads)
    dw_weight_grad_nchw_kernel(const T* __restrict__ g, const T* __restrict__ x,
                               float* __restrict__ partial, int64_t B, int64_t C, int64_t H,
                               int64_t W, int splits) {
  __shared__ float s_red[kRedWarps][10];
  const int64_t c = blockIdx.x;
  const int s = blockIdx.y;
  const int64_t HW = H * W;
  int64_t e0, e1;
  chunk_of(B * HW, splits, s, e0, e1);
  float acc[10];
#pragma unroll
  for (int t = 0; t < 10; ++t) acc[t] = 0.0f;
  for (int64_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
    const int64_t b = e / HW;
    const int64_t j = e - b * HW;
    const int64_t plane = (b * C + c) * HW;
    dw_taps(acc, to_float(g[plane + j]), x, plane, j / W, j % W, H, W, W, 1);
  }
#pragma unroll
  for (int t = 0; t < 10; ++t) {
    const float v = warp_sum(acc[t]);
    if ((threadIdx.x & 31) == 0) s_red[threadIdx.x >> 5][t] = v;
  }
  __syncthreads();
  if (threadIdx.x < 10) {
    float t = 0.0f;
    for (int w = 0; w < kRedWarps; ++w) t += s_red[w][threadIdx.x];
    partial[(s * C + c) * 10 + threadIdx.x] = t;
  }
}

template <typename T>
__global__ void __launch_bounds__(kRedThreads)
    dw_weight_grad_nhwc_kernel(const T* __restrict__ g, const T* __restrict__ x,
                               float* __restrict__ partial, int64_t B, int64_t C, int64_t H,
                               int64_t W, int splits) {
  __shared__ float s_red[kRedWarps][10][32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + lane;
  const int s = blockIdx.y;
  int64_t r0, r1;
  chunk_of(B * H * W, splits, s, r0, r1);
  float acc[10];
#pragma unroll
  for (int t = 0; t < 10; ++t) acc[t] = 0.0f;
  if (c < C) {
    // (b, h, w) of row r advance incrementally (no 64-bit division per row).
    int64_t r = r0 + warp;
    int64_t w = r % W;
    int64_t h = (r / W) % H;
    int64_t b = r / (W * H);
    for (; r < r1; r += kRedWarps) {
      dw_taps(acc, to_float(g[r * C + c]), x, b * H * W * C + c, h, w, H, W, W * C, C);
      w += kRedWarps;
      while (w >= W) {
        w -= W;
        if (++h == H) {
          h = 0;
          ++b;
        }
      }
    }
  }
#pragma unroll
  for (int t = 0; t < 10; ++t) s_red[warp][t][lane] = acc[t];
  __syncthreads();
  if (warp == 0 && c < C) {
#pragma unroll
    for (int t = 0; t < 10; ++t) {
      float v = 0.0f;
      for (int w = 0; w < kRedWarps; ++w) v += s_red[w][t][lane];
      partial[(s * C + c) * 10 + t] = v;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    channel_affine_kernel(T* out, const T* z, const float* __restrict__ scale,
                          const float* __restrict__ shift, int64_t numel, int64_t C,
                          int64_t inner) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += step) {
    const int64_t c = (i / inner) % C;
    out[i] = from_float<T>(fmaf(to_float(z[i]), scale[c], shift[c]));
  }
}

template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    gelu_backward_kernel(T* dx, const T* grad, const T* __restrict__ u, int64_t numel) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += step) {
    dx[i] = from_float<T>(to_float(grad[i]) * math::gelu_grad(to_float(u[i])));
  }
}

}  // namespace

int channel_splits(int64_t B, int64_t C, int64_t HW, int num_sms) {
  const int64_t target = 4 * static_cast<int64_t>(num_sms > 0 ? num_sms : 1);
  const int64_t groups = C < 1 ? 1 : C;
  int64_t s = (target + groups - 1) / groups;
  const int64_t by_size = (B * HW + 1023) / 1024;  // >= ~1024 elements per block
  if (s > by_size) s = by_size;
  if (s > 256) s = 256;
  return static_cast<int>(s < 1 ? 1 : s);
}

cudaError_t channel_sums(Dtype dtype, const void* z, const float* mean, float* partial, int64_t B,
                         int64_t C, int64_t HW, bool channels_last, int splits,
                         cudaStream_t stream) {
  if (C < 1 || splits < 1 || splits > 65535) return cudaErrorInvalidValue;
  SK_DISPATCH_DTYPE(dtype, {
    const T* zp = static_cast<const T*>(z);
    if (channels_last) {
      const dim3 grid(static_cast<unsigned>((C + 31) / 32), static_cast<unsigned>(splits));
      if (mean) {
        channel_sums_nhwc_kernel<T, true><<<grid, kRedThreads, 0, stream>>>(zp, mean, partial, B * HW, C, splits);
      } else {
        channel_sums_nhwc_kernel<T, false><<<grid, kRedThreads, 0, stream>>>(zp, mean, partial, B * HW, C, splits);
      }
    } else {
      const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>(splits));
      if (mean) {
        channel_sums_nchw_kernel<T, true><<<grid, kRedThreads, 0, stream>>>(zp, mean, partial, B, C, HW, splits);
      } else {
        channel_sums_nchw_kernel<T, false><<<grid, kRedThreads, 0, stream>>>(zp, mean, partial, B, C, HW, splits);
      }
    }
  });
  return cudaGetLastError();
}

cudaError_t channel_affine(Dtype dtype, void* out, const void* z, const float* scale,
                           const float* shift, int64_t numel, int64_t C, int64_t inner,
                           cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  if (C < 1 || inner < 1) return cudaErrorInvalidValue;
  SK_DISPATCH_DTYPE(dtype, {
    channel_affine_kernel<T><<<elt_blocks(numel), kEltThreads, 0, stream>>>(
        static_cast<T*>(out), static_cast<const T*>(z), scale, shift, numel, C, inner);
  });
  return cudaGetLastError();
}

cudaError_t gelu_backward(Dtype dtype, void* dx, const void* grad, const void* u, int64_t numel,
                          cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  SK_DISPATCH_DTYPE(dtype, {
    gelu_backward_kernel<T><<<elt_blocks(numel), kEltThreads, 0, stream>>>(
        static_cast<T*>(dx), static_cast<const T*>(grad), static_cast<const T*>(u), numel);
  });
  return cudaGetLastError();
}

cudaError_t dwconv3x3_weight_grad(Dtype dtype, const void* g, const void* x, float* partial,
                                  int64_t B, int64_t C, int64_t H, int64_t W, bool channels_last,
                                  int splits, cudaStream_t stream) {
  if (C < 1 || splits < 1 || splits > 65535) return cudaErrorInvalidValue;
  SK_DISPATCH_DTYPE(dtype, {
    const T* gp = static_cast<const T*>(g);
    const T* xp = static_cast<const T*>(x);
    if (channels_last) {
      const dim3 grid(static_cast<unsigned>((C + 31) / 32), static_cast<unsigned>(splits));
      dw_weight_grad_nhwc_kernel<T><<<grid, kRedThreads, 0, stream>>>(gp, xp, partial, B, C, H, W, splits);
    } else {
      const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>(splits));
      dw_weight_grad_nchw_kernel<T><<<grid, kRedThreads, 0, stream>>>(gp, xp, partial, B, C, H, W, splits);
    }
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace swiftkern
