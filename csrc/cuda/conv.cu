// Conv-block pieces on CUDA (SPEC.md section 2): the depthwise 3x3 conv with BN folded in, and
// the elementwise epilogues that run around the cuBLAS pointwise GEMMs (bindings.cpp):
//   h = GELU(pw1(z) + b1)            -> bias_gelu, in place on the GEMM output
//   y = x + ls * (pw2(h) + b2)       -> bias_scale_residual
// Thread per output element with the fastest-varying memory index on threadIdx.x, so loads and
// stores are coalesced in both layouts; 3x3 neighbours of a warp overlap and are served by L1.
#include "swiftkern/cuda_device.h"

namespace swiftkern {
namespace cuda {
namespace {

template <typename T, bool kChannelsLast>
__global__ void __launch_bounds__(kEltThreads)
    dwconv3x3_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                     T* __restrict__ y, int64_t B, int64_t C, int64_t H, int64_t W) {
  const int64_t total = B * C * H * W;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += step) {
    int64_t c, h, ww, plane;  // plane: offset of (b, c) / b, strides below per layout
    int64_t sh, sw;
    if constexpr (kChannelsLast) {
      c = i % C;
      const int64_t t = i / C;
      ww = t % W;
      h = (t / W) % H;
      const int64_t b = t / (W * H);
      plane = b * H * W * C + c;
      sh = W * C;
      sw = C;
    } else {
      ww = i % W;
      const int64_t t = i / W;
      h = t % H;
      c = (t / H) % C;
      plane = (t / H) * H * W;  // (b * C + c) * H * W
      sh = W;
      sw = 1;
    }
    const T* wc = w + c * 9;
    float acc = load_or(bias, c, 0.0f);
#pragma unroll
    for (int dh = -1; dh <= 1; ++dh) {
      const int64_t hh = h + dh;
      if (hh < 0 || hh >= H) continue;
#pragma unroll
      for (int dw = -1; dw <= 1; ++dw) {
        const int64_t wv = ww + dw;
        if (wv < 0 || wv >= W) continue;
        acc = fmaf(to_float(wc[(dh + 1) * 3 + (dw + 1)]), to_float(x[plane + hh * sh + wv * sw]),
                   acc);
      }
    }
    y[i] = from_float<T>(acc);
  }
}

template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    bias_gelu_kernel(T* __restrict__ y, const T* __restrict__ bias, int64_t numel, int64_t C,
                     int64_t inner) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += step) {
    const float v = to_float(y[i]) + load_or(bias, (i / inner) % C, 0.0f);
    y[i] = from_float<T>(math::gelu(v));
  }
}

// out may alias y (same index read then written by one thread), so no __restrict__ on those two.
template <typename T>
__global__ void __launch_bounds__(kEltThreads)
    bias_scale_residual_kernel(T* out, const T* y, const T* __restrict__ bias,
                               const T* __restrict__ ls, const T* __restrict__ residual,
                               int64_t numel, int64_t C, int64_t inner) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += step) {
    const int64_t c = (i / inner) % C;
    float v = to_float(y[i]) + load_or(bias, c, 0.0f);
    if (ls) v *= to_float(ls[c]);
    if (residual) v += to_float(residual[i]);
    out[i] = from_float<T>(v);
  }
}

}  // namespace

cudaError_t dwconv3x3(Dtype dtype, const void* x, const void* w, const void* bias, void* y,
                      int64_t B, int64_t C, int64_t H, int64_t W, bool channels_last,
                      cudaStream_t stream) {
  const int64_t total = B * C * H * W;
  if (total == 0) return cudaSuccess;
  const unsigned blocks = elt_blocks(total);
  SK_DISPATCH_DTYPE(dtype, {
    const T* xp = static_cast<const T*>(x);
    const T* wp = static_cast<const T*>(w);
    const T* bp = static_cast<const T*>(bias);
    T* yp = static_cast<T*>(y);
    if (channels_last) {
      dwconv3x3_kernel<T, true><<<blocks, kEltThreads, 0, stream>>>(xp, wp, bp, yp, B, C, H, W);
    } else {
      dwconv3x3_kernel<T, false><<<blocks, kEltThreads, 0, stream>>>(xp, wp, bp, yp, B, C, H, W);
    }
  });
  return cudaGetLastError();
}

cudaError_t bias_gelu(Dtype dtype, void* y, const void* bias, int64_t numel, int64_t C,
                      int64_t inner, cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  if (C < 1 || inner < 1) return cudaErrorInvalidValue;
  SK_DISPATCH_DTYPE(dtype, {
    bias_gelu_kernel<T><<<elt_blocks(numel), kEltThreads, 0, stream>>>(
        static_cast<T*>(y), static_cast<const T*>(bias), numel, C, inner);
  });
  return cudaGetLastError();
}

cudaError_t bias_scale_residual(Dtype dtype, void* out, const void* y, const void* bias,
                                const void* ls, const void* residual, int64_t numel, int64_t C,
                                int64_t inner, cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  if (C < 1 || inner < 1) return cudaErrorInvalidValue;
  SK_DISPATCH_DTYPE(dtype, {
    bias_scale_residual_kernel<T><<<elt_blocks(numel), kEltThreads, 0, stream>>>(
        static_cast<T*>(out), static_cast<const T*>(y), static_cast<const T*>(bias),
        static_cast<const T*>(ls), static_cast<const T*>(residual), numel, C, inner);
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace swiftkern
