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

// Dtype policy: fp32 and fp64 are computed natively. bf16 and fp16 inputs run the fp32 kernel
// between conversions (kBFloat16ViaFloat): CPUs without AVX512-BF16/FP16 have no half-precision
// arithmetic, so computing in fp32 is both the accurate and the fast choice.
enum class DtypeRoute { kFloat, kDouble, kBFloat16ViaFloat };

inline DtypeRoute route_dtype(const Tensor& x, const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(x.device().is_cpu(), "swiftkern cpu ", op, ": x must be on CPU");
  switch (x.scalar_type()) {
    case at::kFloat:
      return DtypeRoute::kFloat;
    case at::kDouble:
      return DtypeRoute::kDouble;
    case at::kBFloat16:
    case at::kHalf:
      return DtypeRoute::kBFloat16ViaFloat;
    default:
      TORCH_CHECK_NOT_IMPLEMENTED(false, "swiftkern cpu ", op, ": dtype ", x.scalar_type(),
                                  " not served (fp32, fp64, bf16, fp16 are)");
  }
}

// Exact GELU (erf) on a vector; ATen's own GELU kernel uses the same Vectorized::erf.
template <typename T>
inline Vec<T> gelu_vec(const Vec<T>& x) {
  const Vec<T> half(T(0.5)), one(T(1)), a(T(swiftkern::math::kSqrt1_2));
  return x * half * (one + (x * a).erf());
}

// fp32: the same erf formula as ATen's Vectorized<float>::erf (Abramowitz-Stegun 7.1.26, abs
// error 1.5e-7) with the inline exp_u20 instead of the out-of-line Sleef exp: GELU costs about as
// much as one of the block's GEMMs otherwise. exp_u20's extra error (<= 20 ulp of exp(-z^2))
// moves erf by < 3e-6 * exp(-z^2) absolute, far inside the fp32 tolerance (1e-4 relative).
template <>
inline Vec<float> gelu_vec<float>(const Vec<float>& x) {
  const Vec<float> one(1.0f), half(0.5f), zero(0.0f);
  const Vec<float> z = x * Vec<float>(static_cast<float>(swiftkern::math::kSqrt1_2));
  const Vec<float> az = z.abs();
  const Vec<float> t = one / at::vec::fmadd(Vec<float>(0.3275911f), az, one);
  Vec<float> r = at::vec::fmadd(Vec<float>(1.061405429f), t, Vec<float>(-1.453152027f));
  r = at::vec::fmadd(r, t, Vec<float>(1.421413741f));
  r = at::vec::fmadd(r, t, Vec<float>(-0.284496736f));
  r = at::vec::fmadd(r, t, Vec<float>(0.254829592f));
  const Vec<float> e = (zero - z * z).exp_u20();
  const Vec<float> erf_abs = one - r * t * e;
  const Vec<float> erf = Vec<float>::blendv(erf_abs, zero - erf_abs, z < zero);
  return half * x * (one + erf);
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
