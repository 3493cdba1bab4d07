// Scalar math shared by the CPU (csrc/cpu) and CUDA (csrc/cuda) kernels. Header-only, free of
// torch headers so that .cu files can include it and compile in seconds.
//
// Every function exists for float and double (explicit overloads rather than templates: CUDA's
// device math library is overloaded by type, and std:: functions are not __device__).
// API is stable: other kernels depend on it; add, don't change.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SK_HOST_DEVICE __host__ __device__
#else
#define SK_HOST_DEVICE
#endif

namespace swiftkern {
namespace math {

// F.normalize's eps (SPEC.md: L2 over channels, eps 1e-12): y = x / max(||x||_2, eps).
constexpr double kNormEps = 1e-12;
constexpr double kSqrt1_2 = 0.70710678118654752440;     // 1/sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1/sqrt(2*pi)

// ---- exact GELU (erf form, as nn.GELU() / F.gelu default) ----
SK_HOST_DEVICE inline float gelu(float x) {
  return 0.5f * x * (1.0f + erff(x * static_cast<float>(kSqrt1_2)));
}
SK_HOST_DEVICE inline double gelu(double x) { return 0.5 * x * (1.0 + erf(x * kSqrt1_2)); }

// d/dx GELU(x) = Phi(x) + x * phi(x)
SK_HOST_DEVICE inline float gelu_grad(float x) {
  const float cdf = 0.5f * (1.0f + erff(x * static_cast<float>(kSqrt1_2)));
  const float pdf = static_cast<float>(kInvSqrt2Pi) * expf(-0.5f * x * x);
  return cdf + x * pdf;
}
SK_HOST_DEVICE inline double gelu_grad(double x) {
  const double cdf = 0.5 * (1.0 + erf(x * kSqrt1_2));
  const double pdf = kInvSqrt2Pi * exp(-0.5 * x * x);
  return cdf + x * pdf;
}

// ---- L2 normalize (F.normalize semantics) ----
// Denominator max(||x||, eps) from the sum of squares.
SK_HOST_DEVICE inline float l2_denom(float sumsq) {
  const float n = sqrtf(sumsq);
  return n > static_cast<float>(kNormEps) ? n : static_cast<float>(kNormEps);
}
SK_HOST_DEVICE inline double l2_denom(double sumsq) {
  const double n = sqrt(sumsq);
  return n > kNormEps ? n : kNormEps;
}
// 1 / max(||x||, eps)
SK_HOST_DEVICE inline float l2_inv_norm(float sumsq) { return 1.0f / l2_denom(sumsq); }
SK_HOST_DEVICE inline double l2_inv_norm(double sumsq) { return 1.0 / l2_denom(sumsq); }
// Whether the eps clamp is active (then y = x / eps is linear in x and the norm gets no gradient;
// matches clamp_min's backward, which passes the gradient where norm >= eps).
SK_HOST_DEVICE inline bool l2_clamped(float sumsq) {
  return sqrtf(sumsq) < static_cast<float>(kNormEps);
}
SK_HOST_DEVICE inline bool l2_clamped(double sumsq) { return sqrt(sumsq) < kNormEps; }

// Backward of y = x / max(||x||, eps) for one element: gy the incoming gradient, y the output
// element, dot = sum_j y_j * gy_j over the row, inv = 1 / max(||x||, eps).
//   not clamped: dx = (gy - y * dot) * inv        clamped: dx = gy * inv
SK_HOST_DEVICE inline float l2_normalize_grad(float gy, float y, float dot, float inv, bool clamped) {
  return clamped ? gy * inv : (gy - y * dot) * inv;
}
SK_HOST_DEVICE inline double l2_normalize_grad(double gy, double y, double dot, double inv,
                                               bool clamped) {
  return clamped ? gy * inv : (gy - y * dot) * inv;
}

}  // namespace math
}  // namespace swiftkern
