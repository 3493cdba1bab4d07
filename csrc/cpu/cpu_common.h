// Helpers shared by the CPU kernels (csrc/cpu/*.cpp). These sources are compiled twice (AVX-512
// and AVX2 flags, see setup.py); at::vec::Vectorized takes its width from those flags.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <swiftkern/math.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

namespace swiftkern::cpu {

using at::Tensor;
using OptTensor = std::optional<at::Tensor>;
template <typename T>
using Vec = at::vec::Vectorized<T>;

inline bool has(const OptTensor& t) { return t.has_value() && t->defined(); }

template <typename T>
inline const T* ptr_or_null(const OptTensor& t) {
  return has(t) ? t->data_ptr<T>() : nullptr;
}

// Parameters as contiguous tensors (no copy when already contiguous).
inline OptTensor contig(const OptTensor& t) {
  return has(t) ? OptTensor(t->contiguous()) : OptTensor();
}

inline Tensor to_float(const Tensor& t) { return t.to(at::kFloat); }
inline OptTensor to_float(const OptTensor& t) {
  return has(t) ? OptTensor(t->to(at::kFloat)) : OptTensor();
}

inline bool is_channels_last(const Tensor& x) {
  return x.dim() == 4 && x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

template <typename T>
inline at::TensorOptions opts_of() {
  return at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value).device(at::kCPU);
}

// A tensor over memory owned elsewhere (per-thread tile buffers).
template <typename T>
inline Tensor blob(T* p, at::IntArrayRef sizes, at::IntArrayRef strides) {
  return at::from_blob(p, sizes, strides, opts_of<T>());
}

// Dtype policy: fp32 and fp64 are computed natively. bf16 inputs run the fp32 kernel between
// conversions: the CPUs this targets without AVX512-BF16 have no bf16 arithmetic, so computing in
// fp32 is both the accurate and the fast choice. fp16 is not served (reference fallback).
enum class DtypeRoute { kFloat, kDouble, kBFloat16ViaFloat };

inline DtypeRoute route_dtype(const Tensor& x, const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(x.device().is_cpu(), "swiftkern cpu ", op, ": x must be on CPU");
  switch (x.scalar_type()) {
    case at::kFloat:
      return DtypeRoute::kFloat;
    case at::kDouble:
      return DtypeRoute::kDouble;
    case at::kBFloat16:
      return DtypeRoute::kBFloat16ViaFloat;
    default:
      TORCH_CHECK_NOT_IMPLEMENTED(false, "swiftkern cpu ", op, ": dtype ", x.scalar_type(),
                                  " not served (fp32, fp64, bf16 are)");
  }
}

// Exact GELU (erf) on a vector; ATen's own GELU kernel uses the same Vectorized::erf.
template <typename T>
inline Vec<T> gelu_vec(const Vec<T>& x) {
  const Vec<T> half(T(0.5)), one(T(1)), a(T(swiftkern::math::kSqrt1_2));
  return x * half * (one + (x * a).erf());
}

template <typename T>
inline Vec<T> gelu_grad_vec(const Vec<T>& x) {
  const Vec<T> half(T(0.5)), one(T(1)), a(T(swiftkern::math::kSqrt1_2)),
      c(T(swiftkern::math::kInvSqrt2Pi)), mhalf(T(-0.5));
  const Vec<T> cdf = half * (one + (x * a).erf());
  const Vec<T> pdf = c * (mhalf * x * x).exp();
  return cdf + x * pdf;
}

// Optional environment override, read per call (cheap) so benchmarks can switch strategies.
inline std::string env_str(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

}  // namespace swiftkern::cpu
