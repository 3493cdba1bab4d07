// Host-side API of the swiftkern CUDA kernels (csrc/cuda/*.cu). Free of torch headers: the kernel
// translation units compile with nvcc in seconds, and only csrc/cuda/bindings.cpp includes torch.
//
// Conventions for every launcher:
//  * tensors are raw pointers of the element type named by `dtype`; all math is fp32 inside;
//  * sizes and strides are int64 (element units), so tensors over 2^31 elements index correctly;
//  * the kernel is launched on `stream` (the binding passes the current PyTorch stream) and the
//    launcher returns cudaGetLastError() (launch errors; faults surface at the next sync);
//  * pointers documented as "may be null" select optional work (bias absent, output not wanted).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace swiftkern {
namespace cuda {

enum class Dtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// POOL variants of SPEC.md section 1.
enum class Pool : int { kSum = 0, kL2 = 1, kSoftmax = 2 };

// ------------------------------------------------------------------------------------------
// Additive attention core (csrc/cuda/additive_attention.cu)
// ------------------------------------------------------------------------------------------
// Largest D served (shared memory holds ~11 fp32 rows of D per block).
constexpr int kAttnMaxDim = 1024;
// Threads per block of the attention kernels (one warp per token at a time).
constexpr int kAttnThreads = 256;

struct AttnFwdParams {
  Dtype dtype;
  // q, k: [B, N, D] with unit stride over D; (sb, sn) are the batch and token strides.
  const void* q;
  const void* k;
  int64_t q_sb, q_sn, k_sb, k_sn;
  const void* w_g;   // [D]
  const void* bias;  // [D] added to the residual output (b_proj of the full module); may be null
  float scale;
  Pool pool;
  int64_t B, N;
  int D;
  void* gk;          // out [B, N, D] contiguous: G * normalize(k); may be null (not wanted)
  void* res;         // out [B, N, D] contiguous: normalize(q) + bias; may be null
  float* g_out;      // out [B, D]: the global query G; may be null
  float* stats_out;  // out [B, 2]: softmax (max s, sum exp(s - max)); l2 (sum s^2, 0); sum (0, 0)
  float* workspace;  // [B, splits, D + 2] when splits > 1 (see attn_fwd_workspace_floats)
  int splits;        // token splits per batch row (attn_splits); 1 = one fused kernel
};

struct AttnBwdParams {
  Dtype dtype;
  const void* q;
  const void* k;
  int64_t q_sb, q_sn, k_sb, k_sn;
  const void* w_g;
  float scale;
  Pool pool;
  int64_t B, N;
  int D;
  const float* g;      // [B, D] from the forward (AttnFwdParams::g_out)
  const float* stats;  // [B, 2] from the forward (AttnFwdParams::stats_out)
  const void* dgk;     // [B, N, D] contiguous: gradient w.r.t. gk
  const void* dres;    // [B, N, D] contiguous: gradient w.r.t. normalize(q) directly; may be null
  // dq, dk: out [B, N, D] with unit stride over D and (sb, sn) strides (may alias one [B,N,2D]).
  void* dq;
  void* dk;
  int64_t dq_sb, dq_sn, dk_sb, dk_sn;
  float* dwg_partial;  // out [B * splits, D]: per-block partial sums of dL/dw_g (sum them);
                       // may be null (not wanted); never written for Pool::kSum (zero gradient)
  float* workspace;    // [B, splits, D]
  int splits;
};

// Token splits per batch row: enough blocks to fill `num_sms` SMs, chunks of >= 64 tokens.
int attn_splits(int64_t B, int64_t N, int num_sms);
size_t attn_fwd_workspace_floats(int64_t B, int splits, int D);
size_t attn_bwd_workspace_floats(int64_t B, int splits, int D);
cudaError_t attn_fwd(const AttnFwdParams& p, cudaStream_t stream);
cudaError_t attn_bwd(const AttnBwdParams& p, cudaStream_t stream);

// ------------------------------------------------------------------------------------------
// Conv-block pieces (csrc/cuda/conv.cu)
// ------------------------------------------------------------------------------------------
// Depthwise 3x3, stride 1, padding 1, with bias (BN folded in). x and y are [B, C, H, W] tensors
// dense in NCHW (channels_last = false) or NHWC (channels_last = true) memory order.
// w: [C, 9]; bias: [C] or null.
cudaError_t dwconv3x3(Dtype dtype, const void* x, const void* w, const void* bias, void* y,
                      int64_t B, int64_t C, int64_t H, int64_t W, bool channels_last,
                      cudaStream_t stream);

// Elementwise epilogues on a dense tensor of `numel` elements whose channel index is
// (i / inner) % C: inner = H*W for NCHW, 1 for NHWC or a [M, C] matrix.
// In place: y = GELU(y + bias)   (exact erf GELU; bias may be null)
cudaError_t bias_gelu(Dtype dtype, void* y, const void* bias, int64_t numel, int64_t C,
                      int64_t inner, cudaStream_t stream);
// out = residual + ls * (y + bias)   (bias, ls, residual may each be null; out may alias y)
cudaError_t bias_scale_residual(Dtype dtype, void* out, const void* y, const void* bias,
                                const void* ls, const void* residual, int64_t numel, int64_t C,
                                int64_t inner, cudaStream_t stream);

// ---- BatchNorm with batch statistics (train forms) and conv-block backwards ----
// Per-channel partial sums over the B*H*W elements of channel c of a dense tensor z (layout as
// dwconv3x3): partial[s * C + c] = sum over split s of (z - mean[c])^2 when `mean` is given,
// else of z. The caller sums the `splits` rows (fp32). splits from channel_splits().
int channel_splits(int64_t B, int64_t C, int64_t HW, int num_sms);
cudaError_t channel_sums(Dtype dtype, const void* z, const float* mean, float* partial, int64_t B,
                         int64_t C, int64_t HW, bool channels_last, int splits,
                         cudaStream_t stream);
// out = z * scale[c] + shift[c] (fp32 per-channel affine; out may alias z).
cudaError_t channel_affine(Dtype dtype, void* out, const void* z, const float* scale,
                           const float* shift, int64_t numel, int64_t C, int64_t inner,
                           cudaStream_t stream);
// dx = grad * GELU'(u) (exact erf GELU; dx may alias grad).
cudaError_t gelu_backward(Dtype dtype, void* dx, const void* grad, const void* u, int64_t numel,
                          cudaStream_t stream);
// Depthwise 3x3 weight and bias gradients: partial[(s * C + c) * 10 + t] for tap t < 9
// (row-major 3x3) and t = 9 the bias, summed by the caller over the `splits` rows.
// g and x dense in the same layout. splits from channel_splits().
cudaError_t dwconv3x3_weight_grad(Dtype dtype, const void* g, const void* x, float* partial,
                                  int64_t B, int64_t C, int64_t H, int64_t W, bool channels_last,
                                  int splits, cudaStream_t stream);

}  // namespace cuda
}  // namespace swiftkern
