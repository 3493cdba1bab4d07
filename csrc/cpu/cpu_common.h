// Helpers shared by the CPU kernels (csrc/cpu/*.cpp). These sources are compiled twice (AVX-512
// and AVX2 flags, see setup.py); at::vec::Vectorized takes its width from those flags.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <swiftkern/math.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

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
// Argument check of the ops' entries (their kernels index raw pointers): t, when given, has n
// elements.
inline void check_numel(const char* op, const char* name, const OptTensor& t, int64_t n) {
  TORCH_CHECK(!has(t) || t->numel() == n, op, ": ", name, " must have ", n, " elements, got ",
              has(t) ? t->sizes() : c10::IntArrayRef());
}

// An MLP's residual in fp32 next to xf = to_float(x): when the residual is x itself (the encoder
// block's MLP passes x as its residual) x's copy serves both, one conversion pass fewer.
inline OptTensor residual_to_float(const OptTensor& residual, const Tensor& x, const Tensor& xf) {
  return has(residual) && residual->is_same(x) ? OptTensor(xf) : to_float(residual);
}

// d [P, K] (contiguous) @ w^T (+ bias) through oneDNN's 1x1 convolution on a weight it
// reordered once (mkldnn::_reorder_convolution_weight of w viewed [N, K, 1, 1], for an input of
// shape [1, K, 1, P]): d is that input, channels_last, and the channels_last output is [P, N]
// row-major. AMD Zen 3, 2 threads, a conv block's two GEMMs interleaved against MKL's packed
// sgemm: 1.20x [IQR 1.13-1.25] at P = 49, C = 384 (4C hidden), 1.32x [1.27-1.36] at C = 512;
// 0.77-1.06x at the other SwiftFormer shapes (swiftkern/nn/_base.py picks where it serves).
// The kernels index the result by w's shape, so the packed weight must be w's: checked.
inline Tensor onednn_linear(const Tensor& d, const Tensor& packed, const Tensor& w,
                            const OptTensor& bias) {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_convolution_pointwise", "");
  const int64_t P = d.size(0), K = d.size(1), N = w.size(0);
  TORCH_CHECK(packed.dim() == 4 && packed.size(0) == N && packed.size(1) == K && w.size(1) == K,
              "packed weight of shape ", packed.sizes(), " does not match the weight ", w.sizes(),
              " and the input's ", K, " channels");
  const Tensor d4 = d.contiguous().as_strided({1, K, 1, P}, {P * K, 1, P * K, K});
  std::vector<c10::IValue> stack{d4,
                                 packed,
                                 has(bias) ? c10::IValue(*bias) : c10::IValue(),
                                 c10::IValue(std::vector<int64_t>{0, 0}),
                                 c10::IValue(std::vector<int64_t>{1, 1}),
                                 c10::IValue(std::vector<int64_t>{1, 1}),
                                 c10::IValue(int64_t(1)),
                                 c10::IValue(std::string("none")),
                                 c10::IValue(c10::List<std::optional<at::Scalar>>()),
                                 c10::IValue(std::string(""))};
  op.callBoxed(&stack);
  // [1, N, 1, P] channels_last: its memory is [P, N] row-major (contiguous() is then a no-op)
  return stack[0].toTensor().permute({0, 2, 3, 1}).reshape({P, N}).contiguous();
}

// d [P, K] @ w^T (+ bias) on a weight the caller packed once (cached) for exactly P rows:
// - a 4-D packed weight is oneDNN's convolution format (onednn_linear above);
// - otherwise MKL's packed sgemm, via ATen's mkl::_mkl_linear (mkl::_mkl_reorder_linear_weight);
//   ATen runs its plain linear for any other P. At P = 49 (7x7, batch 1), 2 threads, Intel Xeon,
//   it ran 2.0-2.25x the speed of at::mm on the same [2048, 512] / [512, 2048] weights,
//   1.03-1.19x at P = 196 (C = 320).
inline Tensor packed_linear(const Tensor& d, const Tensor& packed, const Tensor& w,
                            const OptTensor& bias = std::nullopt) {
  if (packed.dim() == 4) return onednn_linear(d, packed, w, bias);
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkl::_mkl_linear", "")
          .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
                        int64_t)>();
  return op.call(d, packed, w, bias, d.size(0));
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

// Dtype policy: fp32 and fp64 are computed natively. bf16 and fp16 inputs are computed in fp32
// (kBFloat16ViaFloat): CPUs without AVX512-BF16/FP16 have no half-precision arithmetic, so
// computing in fp32 is both the accurate and the fast choice. The conv_block / mlp tile strategy
// converts per tile, in cache (conv_block_kernels.cpp load_as_float / store_from_float); the
// other kernels convert whole tensors around the fp32 kernel.
enum class DtypeRoute { kFloat, kDouble, kBFloat16ViaFloat };

// The dtypes the fp32 kernels serve: fp32 itself, and bf16 / fp16 between conversions.
inline bool computed_in_fp32(at::ScalarType st) {
  return st == at::kFloat || st == at::kBFloat16 || st == at::kHalf;
}

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

// fp32: erf(z) = z * P(z^2) / Q(z^2) for |z| < 4 and sign(z) beyond (erf(4) = 1 - 1.5e-8 rounds
// to 1.0f), a rational minimax fit of degree 6 / 5 in z^2 (tools/fit_gelu.py derives the
// constants and measures the error). About 24 vector operations instead of the ~85 of the
// Abramowitz-Stegun erf with an exp that ATen's GELU uses: 1.7x the throughput on this AVX2 CPU
// (a 336 x 192 hidden tile: 73 -> 42 us), and GELU was about a quarter of a stage-1 conv block's
// time. Error of the whole fp32 GELU on a dense grid of [-12, 12] against float64: max 9.1e-7
// absolute, 1.8e-7 * max(1, |x|) (ATen's fp32 GELU: 4.7e-7, 1.8e-7); far inside the fp32 policy
// (1e-4 * max(1, |ref|)). NaN stays NaN (the comparison is false for NaN), +inf -> inf,
// -inf -> NaN and large negative x -> 0, as ATen.
template <>
inline Vec<float> gelu_vec<float>(const Vec<float>& x) {
  using V = Vec<float>;
  const V z = x * V(static_cast<float>(swiftkern::math::kSqrt1_2));
  const V t = z * z;
  V p = at::vec::fmadd(t, V(-1.366648572e-08f), V(4.780462859e-06f));
  p = at::vec::fmadd(p, t, V(3.826921748e-04f));
  p = at::vec::fmadd(p, t, V(3.839623183e-03f));
  p = at::vec::fmadd(p, t, V(5.433286354e-02f));
  p = at::vec::fmadd(p, t, V(1.847127229e-01f));
  p = at::vec::fmadd(p, t, V(1.128379226e+00f));
  V q = at::vec::fmadd(t, V(6.400863640e-05f), V(1.309598680e-03f));
  q = at::vec::fmadd(q, t, V(1.545369998e-02f));
  q = at::vec::fmadd(q, t, V(1.138272509e-01f));
  q = at::vec::fmadd(q, t, V(4.970309436e-01f));
  q = at::vec::fmadd(q, t, V(1.0f));
  // |z| >= 4 (also where t or Q overflow): exactly +-1, so GELU is exactly x or 0 there
  const V saturated = (z & V(-0.0f)) | V(1.0f);
  const V erf = V::blendv(z * p / q, saturated, z.abs() >= V(4.0f));
  const V hx = x * V(0.5f);
  return at::vec::fmadd(hx, erf, hx);
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
