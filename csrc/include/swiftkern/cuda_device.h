// Device-side helpers shared by the swiftkern .cu files (include only from nvcc translation units).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "swiftkern/cuda_kernels.h"
#include "swiftkern/math.h"

namespace swiftkern {
namespace cuda {

// fp32 math for every storage type: convert right after each load, round once at each store.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Optional per-channel parameter: `fallback` when the pointer is null.
template <typename T>
__device__ __forceinline__ float load_or(const T* p, int64_t i, float fallback) {
  return p ? to_float(p[i]) : fallback;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Elementwise launch geometry: grid-stride loops, at most this many blocks.
constexpr int kEltThreads = 256;
inline unsigned elt_blocks(int64_t n) {
  const int64_t b = (n + kEltThreads - 1) / kEltThreads;
  const int64_t cap = int64_t(1) << 20;
  return static_cast<unsigned>(b < 1 ? 1 : (b > cap ? cap : b));
}

}  // namespace cuda
}  // namespace swiftkern

// Instantiates `body` with `T` bound to the storage type of a runtime Dtype.
#define SK_DISPATCH_DTYPE(dtype, ...)                  \
  switch (dtype) {                                     \
    case ::swiftkern::cuda::Dtype::kFloat32: {         \
      using T = float;                                 \
      __VA_ARGS__;                                     \
      break;                                           \
    }                                                  \
    case ::swiftkern::cuda::Dtype::kFloat16: {         \
      using T = __half;                                \
      __VA_ARGS__;                                     \
      break;                                           \
    }                                                  \
    case ::swiftkern::cuda::Dtype::kBFloat16: {        \
      using T = __nv_bfloat16;                         \
      __VA_ARGS__;                                     \
      break;                                           \
    }                                                  \
    default:                                           \
      return cudaErrorInvalidValue;                    \
  }
