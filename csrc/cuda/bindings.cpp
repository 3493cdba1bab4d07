// CUDA implementations of the swiftkern_C ops: input validation, cuBLAS GEMMs through ATen, and
// launches of the torch-free kernels of csrc/cuda/*.cu on the current stream. The only translation
// unit of csrc/cuda that includes torch headers (it alone costs ~80 s of compile time).
//
// Served: every swiftkern_C op and its backward. Inputs not served (fp64, attention D > 1024,
// empty) raise NotImplementedError (TORCH_CHECK_NOT_IMPLEMENTED), so backend "auto" falls back.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <string>
#include <vector>

#include "swiftkern/cuda_kernels.h"

namespace {

namespace skc = swiftkern::cuda;
using at::Tensor;
using OptT = std::optional<Tensor>;

#define SK_LAUNCH(op, expr)                                                                  \
  do {                                                                                       \
    const cudaError_t sk_err_ = (expr);                                                      \
    TORCH_CHECK(sk_err_ == cudaSuccess, op, ": CUDA kernel launch failed: ",                 \
                cudaGetErrorString(sk_err_));                                                \
  } while (0)

skc::Dtype dtype_of(const Tensor& x, const char* op) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return skc::Dtype::kFloat32;
    case at::kHalf:
      return skc::Dtype::kFloat16;
    case at::kBFloat16:
      return skc::Dtype::kBFloat16;
    default:
      TORCH_CHECK_NOT_IMPLEMENTED(false, op, ": the CUDA kernel serves float32, float16 and bfloat16, got ",
                                  x.scalar_type());
  }
}

// x must be a CUDA tensor of a served dtype; every other tensor argument lives with x.
skc::Dtype check_x(const Tensor& x, const char* op, int64_t dim) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got device ", x.device());
  TORCH_CHECK(x.dim() == dim, op, ": x must be ", dim, "-D, got shape ", x.sizes());
  return dtype_of(x, op);
}

void check_like(const Tensor& t, const char* name, const Tensor& x, const char* op) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ",
              x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but x has dtype ", x.scalar_type());
}

// A parameter checked against x and made contiguous with `numel` elements (shape-agnostic view).
Tensor vec(const Tensor& t, const char* name, int64_t numel, const Tensor& x, const char* op) {
  check_like(t, name, x, op);
  TORCH_CHECK(t.numel() == numel, op, ": ", name, " must have ", numel, " elements, got shape ",
              t.sizes());
  return t.reshape({numel}).contiguous();
}

OptT opt_vec(const OptT& t, const char* name, int64_t numel, const Tensor& x, const char* op) {
  if (!t.has_value()) return std::nullopt;
  return vec(*t, name, numel, x, op);
}

Tensor mat(const Tensor& t, const char* name, int64_t rows, int64_t cols, const Tensor& x,
           const char* op) {
  check_like(t, name, x, op);
  TORCH_CHECK(t.numel() == rows * cols && t.dim() >= 2 && t.size(0) == rows, op, ": ", name,
              " must have shape [", rows, ", ", cols, "], got ", t.sizes());
  return t.reshape({rows, cols});
}

const void* ptr_or_null(const OptT& t) { return t.has_value() ? t->data_ptr() : nullptr; }

skc::Pool pool_of(c10::string_view pool, const char* op) {
  if (pool == "sum") return skc::Pool::kSum;
  if (pool == "l2") return skc::Pool::kL2;
  if (pool == "softmax") return skc::Pool::kSoftmax;
  TORCH_CHECK(false, op, ": pool must be one of 'sum', 'l2', 'softmax', got '", std::string(pool),
              "'");
}

bool mask_at(const c10::List<bool>& mask, size_t i) { return i < mask.size() && mask.get(i); }

Tensor empty_grad(const Tensor& like) { return at::empty({0}, like.options()); }

int num_sms() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// ------------------------------------------------------------------------------------------------
// Additive attention
// ------------------------------------------------------------------------------------------------
struct CoreFwd {
  Tensor gk, res, g, stats;
};

// q, k: [B, N, D] views with unit stride over D. want_out: write gk and res (else only G, stats).
CoreFwd core_forward(const Tensor& q, const Tensor& k, const Tensor& w_g, const OptT& bias,
                     double scale, skc::Pool pool, skc::Dtype dt, bool want_out) {
  const int64_t B = q.size(0), N = q.size(1);
  const int D = static_cast<int>(q.size(2));
  const auto f32 = q.options().dtype(at::kFloat);
  CoreFwd out;
  out.g = at::empty({B, D}, f32);
  out.stats = at::empty({B, 2}, f32);
  if (want_out) {
    out.gk = at::empty({B, N, D}, q.options());
    out.res = at::empty({B, N, D}, q.options());
  }
  const int splits = skc::attn_splits(B, N, num_sms());
  const size_t ws_n = skc::attn_fwd_workspace_floats(B, splits, D);
  Tensor ws = at::empty({static_cast<int64_t>(ws_n)}, f32);
  skc::AttnFwdParams p{};
  p.dtype = dt;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.q_sb = q.stride(0);
  p.q_sn = q.stride(1);
  p.k_sb = k.stride(0);
  p.k_sn = k.stride(1);
  p.w_g = w_g.data_ptr();
  p.bias = ptr_or_null(bias);
  p.scale = static_cast<float>(scale);
  p.pool = pool;
  p.B = B;
  p.N = N;
  p.D = D;
  p.gk = want_out ? out.gk.data_ptr() : nullptr;
  p.res = want_out ? out.res.data_ptr() : nullptr;
  p.g_out = out.g.data_ptr<float>();
  p.stats_out = out.stats.data_ptr<float>();
  p.workspace = ws_n ? ws.data_ptr<float>() : nullptr;
  p.splits = splits;
  SK_LAUNCH("additive_attention", skc::attn_fwd(p, at::cuda::getCurrentCUDAStream()));
  return out;
}

// Gradients of the core w.r.t. q, k (written into dq, dk: [B, N, D] views, unit stride over D) and
// w_g (returned as fp32 [D], undefined when not wanted). dgk, dres: contiguous [B, N, D].
Tensor core_backward(const Tensor& q, const Tensor& k, const Tensor& w_g, double scale,
                     skc::Pool pool, skc::Dtype dt, const CoreFwd& fwd, const Tensor& dgk,
                     const OptT& dres, Tensor& dq, Tensor& dk, bool want_dwg) {
  const int64_t B = q.size(0), N = q.size(1);
  const int D = static_cast<int>(q.size(2));
  const auto f32 = q.options().dtype(at::kFloat);
  const int splits = skc::attn_splits(B, N, num_sms());
  Tensor ws = at::empty({static_cast<int64_t>(skc::attn_bwd_workspace_floats(B, splits, D))}, f32);
  const bool dwg_kernel = want_dwg && pool != skc::Pool::kSum;
  Tensor dwg_part = dwg_kernel ? at::empty({B * splits, D}, f32) : Tensor();
  skc::AttnBwdParams p{};
  p.dtype = dt;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.q_sb = q.stride(0);
  p.q_sn = q.stride(1);
  p.k_sb = k.stride(0);
  p.k_sn = k.stride(1);
  p.w_g = w_g.data_ptr();
  p.scale = static_cast<float>(scale);
  p.pool = pool;
  p.B = B;
  p.N = N;
  p.D = D;
  p.g = fwd.g.data_ptr<float>();
  p.stats = fwd.stats.data_ptr<float>();
  p.dgk = dgk.data_ptr();
  p.dres = ptr_or_null(dres);
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dq_sb = dq.stride(0);
  p.dq_sn = dq.stride(1);
  p.dk_sb = dk.stride(0);
  p.dk_sn = dk.stride(1);
  p.dwg_partial = dwg_kernel ? dwg_part.data_ptr<float>() : nullptr;
  p.workspace = ws.data_ptr<float>();
  p.splits = splits;
  SK_LAUNCH("additive_attention_backward", skc::attn_bwd(p, at::cuda::getCurrentCUDAStream()));
  if (!want_dwg) return Tensor();
  return dwg_kernel ? dwg_part.sum(0) : at::zeros({D}, f32);
}

// Unit stride over the last dim (any batch / token strides are served in place).
Tensor last_dim_dense(const Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

struct AttnArgs {
  int64_t B, N, D, T;
  skc::Dtype dt;
  skc::Pool pool;
  Tensor x2d, w_qk, w_g, w_proj;
  OptT b_qk, b_proj, w_final, b_final;
};

AttnArgs attn_args(const Tensor& x, const Tensor& w_qk, const OptT& b_qk, const Tensor& w_g,
                   const Tensor& w_proj, const OptT& b_proj, const OptT& w_final,
                   const OptT& b_final, c10::string_view pool, const char* op) {
  AttnArgs a;
  a.dt = check_x(x, op, 3);
  a.pool = pool_of(pool, op);
  a.B = x.size(0);
  a.N = x.size(1);
  a.D = x.size(2);
  TORCH_CHECK_NOT_IMPLEMENTED(a.D >= 1 && a.D <= skc::kAttnMaxDim, op,
                              ": the CUDA kernel serves 1 <= D <= ", skc::kAttnMaxDim, ", got ",
                              a.D);
  TORCH_CHECK_NOT_IMPLEMENTED(a.B * a.N > 0, op, ": empty input (B * N == 0)");
  a.x2d = x.reshape({a.B * a.N, a.D});
  a.w_qk = mat(w_qk, "w_qk", 2 * a.D, a.D, x, op);
  a.b_qk = opt_vec(b_qk, "b_qk", 2 * a.D, x, op);
  a.w_g = vec(w_g, "w_g", a.D, x, op);
  a.w_proj = mat(w_proj, "w_proj", a.D, a.D, x, op);
  a.b_proj = opt_vec(b_proj, "b_proj", a.D, x, op);
  TORCH_CHECK(w_final.has_value() || !b_final.has_value(), op, ": b_final given without w_final");
  a.T = a.D;
  if (w_final.has_value()) {
    TORCH_CHECK(w_final->dim() == 2 && w_final->size(1) == a.D, op,
                ": w_final must have shape [T, ", a.D, "], got ", w_final->sizes());
    a.T = w_final->size(0);
    a.w_final = mat(*w_final, "w_final", a.T, a.D, x, op);
    a.b_final = opt_vec(b_final, "b_final", a.T, x, op);
  }
  return a;
}

Tensor linear2d(const Tensor& x2d, const Tensor& w, const OptT& b) {
  return b.has_value() ? at::addmm(*b, x2d, w.t()) : at::mm(x2d, w.t());
}

Tensor additive_attention_cuda(const Tensor& x, const Tensor& w_qk, const OptT& b_qk,
                               const Tensor& w_g, double scale, const Tensor& w_proj,
                               const OptT& b_proj, const OptT& w_final, const OptT& b_final,
                               c10::string_view pool) {
  const char* op = "swiftkern_C::additive_attention";
  const c10::cuda::CUDAGuard guard(x.device());
  AttnArgs a = attn_args(x, w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final, pool, op);
  const Tensor qk = linear2d(a.x2d, a.w_qk, a.b_qk).view({a.B, a.N, 2 * a.D});
  const Tensor q = qk.narrow(2, 0, a.D), k = qk.narrow(2, a.D, a.D);
  CoreFwd f = core_forward(q, k, a.w_g, a.b_proj, scale, a.pool, a.dt, true);
  // res = qn + b_proj; cuBLAS accumulates the projection onto it (beta = 1): residual for free.
  Tensor out = f.res.view({a.B * a.N, a.D});
  out.addmm_(f.gk.view({a.B * a.N, a.D}), a.w_proj.t());
  if (a.w_final.has_value()) out = linear2d(out, *a.w_final, a.b_final);
  return out.view({a.B, a.N, a.T});
}

std::vector<Tensor> additive_attention_backward_cuda(
    const Tensor& grad, const Tensor& x, const Tensor& w_qk, const OptT& b_qk, const Tensor& w_g,
    double scale, const Tensor& w_proj, const OptT& b_proj, const OptT& w_final,
    const OptT& b_final, c10::string_view pool, const c10::List<bool>& grad_mask) {
  const char* op = "swiftkern_C::additive_attention_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  AttnArgs a = attn_args(x, w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final, pool, op);
  check_like(grad, "grad", x, op);
  TORCH_CHECK(grad.numel() == a.B * a.N * a.T, op, ": grad must have shape [", a.B, ", ", a.N,
              ", ", a.T, "], got ", grad.sizes());
  // Order of the Tensor arguments: x, w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final.
  std::vector<Tensor> out(8);
  for (auto& t : out) t = empty_grad(x);
  auto want = [&](size_t i, const OptT& t) { return mask_at(grad_mask, i) && t.has_value(); };
  const bool need_up = mask_at(grad_mask, 0) || mask_at(grad_mask, 1) || want(2, b_qk) ||
                       mask_at(grad_mask, 3);
  const int64_t M = a.B * a.N;

  const Tensor qk = linear2d(a.x2d, a.w_qk, a.b_qk).view({a.B, a.N, 2 * a.D});
  const Tensor q = qk.narrow(2, 0, a.D), k = qk.narrow(2, a.D, a.D);
  CoreFwd f = core_forward(q, k, a.w_g, a.b_proj, scale, a.pool, a.dt, true);
  const Tensor gk2d = f.gk.view({M, a.D});
  const Tensor gy = grad.reshape({M, a.T});
  Tensor g1 = gy;  // gradient w.r.t. the attention output before `final`
  if (a.w_final.has_value()) {
    if (mask_at(grad_mask, 6)) {
      const Tensor out1 = at::addmm(f.res.view({M, a.D}), gk2d, a.w_proj.t());
      out[6] = gy.t().mm(out1).view(w_final->sizes());
    }
    if (want(7, b_final)) out[7] = gy.sum(0).view(b_final->sizes());
    g1 = gy.mm(*a.w_final);
  }
  g1 = g1.contiguous();
  if (mask_at(grad_mask, 4)) out[4] = g1.t().mm(gk2d).view(w_proj.sizes());
  if (want(5, b_proj)) out[5] = g1.sum(0).view(b_proj->sizes());
  if (!need_up) return out;

  const Tensor dgk = g1.mm(a.w_proj).view({a.B, a.N, a.D});
  Tensor dqk = at::empty({a.B, a.N, 2 * a.D}, x.options());
  Tensor dq = dqk.narrow(2, 0, a.D), dk = dqk.narrow(2, a.D, a.D);
  const Tensor dwg = core_backward(q, k, a.w_g, scale, a.pool, a.dt, f, dgk,
                                   OptT(g1.view({a.B, a.N, a.D})), dq, dk, mask_at(grad_mask, 3));
  const Tensor dqk2d = dqk.view({M, 2 * a.D});
  if (mask_at(grad_mask, 0)) out[0] = dqk2d.mm(a.w_qk).view(x.sizes());
  if (mask_at(grad_mask, 1)) out[1] = dqk2d.t().mm(a.x2d).view(w_qk.sizes());
  if (want(2, b_qk)) out[2] = dqk2d.sum(0).view(b_qk->sizes());
  if (mask_at(grad_mask, 3)) out[3] = dwg.to(x.scalar_type()).view(w_g.sizes());
  return out;
}

struct CoreArgs {
  skc::Dtype dt;
  skc::Pool pool;
  Tensor q, k, w_g;
};

CoreArgs core_args(const Tensor& q, const Tensor& k, const Tensor& w_g, c10::string_view pool,
                   const char* op) {
  CoreArgs a;
  a.dt = check_x(q, op, 3);
  a.pool = pool_of(pool, op);
  check_like(k, "k", q, op);
  TORCH_CHECK(k.sizes() == q.sizes(), op, ": k must have the shape of q ", q.sizes(), ", got ",
              k.sizes());
  const int64_t D = q.size(2);
  TORCH_CHECK_NOT_IMPLEMENTED(D >= 1 && D <= skc::kAttnMaxDim, op,
                              ": the CUDA kernel serves 1 <= D <= ", skc::kAttnMaxDim, ", got ", D);
  TORCH_CHECK_NOT_IMPLEMENTED(q.size(0) * q.size(1) > 0, op, ": empty input (B * N == 0)");
  a.q = last_dim_dense(q);
  a.k = last_dim_dense(k);
  a.w_g = vec(w_g, "w_g", D, q, op);
  return a;
}

std::tuple<Tensor, Tensor> additive_attention_core_cuda(const Tensor& q, const Tensor& k,
                                                        const Tensor& w_g, double scale,
                                                        c10::string_view pool) {
  const char* op = "swiftkern_C::additive_attention_core";
  const c10::cuda::CUDAGuard guard(q.device());
  CoreArgs a = core_args(q, k, w_g, pool, op);
  CoreFwd f = core_forward(a.q, a.k, a.w_g, std::nullopt, scale, a.pool, a.dt, true);
  return {f.gk, f.res};
}

std::vector<Tensor> additive_attention_core_backward_cuda(const Tensor& grad, const Tensor& q,
                                                          const Tensor& k, const Tensor& w_g,
                                                          double scale, c10::string_view pool,
                                                          const c10::List<bool>& grad_mask) {
  const char* op = "swiftkern_C::additive_attention_core_backward";
  const c10::cuda::CUDAGuard guard(q.device());
  CoreArgs a = core_args(q, k, w_g, pool, op);
  check_like(grad, "grad", q, op);
  TORCH_CHECK(grad.sizes() == q.sizes(), op, ": grad must have the shape of q ", q.sizes(),
              ", got ", grad.sizes());
  std::vector<Tensor> out{empty_grad(q), empty_grad(q), empty_grad(q)};
  if (!mask_at(grad_mask, 0) && !mask_at(grad_mask, 1) && !mask_at(grad_mask, 2)) return out;
  CoreFwd f = core_forward(a.q, a.k, a.w_g, std::nullopt, scale, a.pool, a.dt, false);
  Tensor dq = at::empty(q.sizes(), q.options());
  Tensor dk = at::empty(q.sizes(), q.options());
  const Tensor dwg = core_backward(a.q, a.k, a.w_g, scale, a.pool, a.dt, f, grad.contiguous(),
                                   std::nullopt, dq, dk, mask_at(grad_mask, 2));
  if (mask_at(grad_mask, 0)) out[0] = dq;
  if (mask_at(grad_mask, 1)) out[1] = dk;
  if (mask_at(grad_mask, 2)) out[2] = dwg.to(q.scalar_type()).view(w_g.sizes());
  return out;
}

// ------------------------------------------------------------------------------------------------
// Conv blocks (eval forms)
// ------------------------------------------------------------------------------------------------
struct Layout {
  bool channels_last;
  at::MemoryFormat fmt;
};

Layout layout_of(const Tensor& x) {
  const at::MemoryFormat fmt = x.suggest_memory_format();
  return {fmt == at::MemoryFormat::ChannelsLast, fmt};
}

// Channel index divisor of a dense 4-D tensor in this layout (see cuda_kernels.h).
int64_t inner_of(const Layout& l, const Tensor& t) {
  return l.channels_last ? 1 : t.size(2) * t.size(3);
}

Tensor dwconv_run(const Tensor& xc, const Tensor& dw_w, const OptT& dw_b, const Layout& l,
                  skc::Dtype dt, const char* op) {
  const int64_t C = xc.size(1);
  const Tensor w = vec(dw_w, "dw_w", C * 9, xc, op);
  TORCH_CHECK(dw_w.dim() == 4 && dw_w.size(1) == 1 && dw_w.size(2) == 3 && dw_w.size(3) == 3, op,
              ": dw_w must have shape [", C, ", 1, 3, 3], got ", dw_w.sizes());
  const OptT b = opt_vec(dw_b, "dw_b", C, xc, op);
  Tensor y = at::empty(xc.sizes(), xc.options().memory_format(l.fmt));
  SK_LAUNCH(op, skc::dwconv3x3(dt, xc.data_ptr(), w.data_ptr(), ptr_or_null(b), y.data_ptr(),
                               xc.size(0), C, xc.size(2), xc.size(3), l.channels_last,
                               at::cuda::getCurrentCUDAStream()));
  return y;
}

// 1x1 conv without bias as one cuBLAS GEMM, output dense in the same layout as the input.
Tensor pointwise(const Tensor& z, const Tensor& w2d, const Layout& l) {
  const int64_t B = z.size(0), C = z.size(1), H = z.size(2), W = z.size(3), Co = w2d.size(0);
  if (l.channels_last) {
    const Tensor z2d = z.permute({0, 2, 3, 1}).reshape({B * H * W, C});
    return z2d.mm(w2d.t()).view({B, H, W, Co}).permute({0, 3, 1, 2});
  }
  return at::matmul(w2d, z.view({B, C, H * W})).view({B, Co, H, W});
}

// y = residual + ls * (pw2(GELU(pw1(z) + b1)) + b2), all in z's layout.
Tensor pw_mlp(const Tensor& z, const Tensor& w1, const OptT& b1, const Tensor& w2, const OptT& b2,
              const OptT& ls, const OptT& residual, const Layout& l, skc::Dtype dt, const char* op) {
  const int64_t C = z.size(1);
  TORCH_CHECK(w1.dim() >= 2 && w1.numel() == w1.size(0) * C, op,
              ": the first pointwise weight must have shape [hidden, ", C, "], got ", w1.sizes());
  const int64_t Hd = w1.size(0);
  TORCH_CHECK(w2.dim() >= 2 && w2.numel() == w2.size(0) * Hd, op,
              ": the second pointwise weight must have shape [C_out, ", Hd, "], got ", w2.sizes());
  const int64_t Co = w2.size(0);
  const Tensor w1m = mat(w1, "pw1_w", Hd, C, z, op), w2m = mat(w2, "pw2_w", Co, Hd, z, op);
  const OptT b1v = opt_vec(b1, "pw1_b", Hd, z, op), b2v = opt_vec(b2, "pw2_b", Co, z, op);
  const OptT lsv = opt_vec(ls, "ls", Co, z, op);
  const auto stream = at::cuda::getCurrentCUDAStream();
  Tensor h = pointwise(z, w1m, l);
  SK_LAUNCH(op, skc::bias_gelu(dt, h.data_ptr(), ptr_or_null(b1v), h.numel(), Hd, inner_of(l, h),
                               stream));
  Tensor y = pointwise(h, w2m, l);
  OptT res;
  if (residual.has_value()) {
    check_like(*residual, "residual", z, op);
    TORCH_CHECK(residual->sizes() == y.sizes(), op, ": residual must have shape ", y.sizes(),
                ", got ", residual->sizes());
    res = residual->contiguous(l.fmt);
  }
  SK_LAUNCH(op, skc::bias_scale_residual(dt, y.data_ptr(), y.data_ptr(), ptr_or_null(b2v),
                                         ptr_or_null(lsv), ptr_or_null(res), y.numel(), Co,
                                         inner_of(l, y), stream));
  return y;
}

Tensor dwconv_bn_cuda(const Tensor& x, const Tensor& dw_w, const OptT& dw_b) {
  const char* op = "swiftkern_C::dwconv_bn";
  const c10::cuda::CUDAGuard guard(x.device());
  const skc::Dtype dt = check_x(x, op, 4);
  const Layout l = layout_of(x);
  return dwconv_run(x.contiguous(l.fmt), dw_w, dw_b, l, dt, op);
}

Tensor conv_block_cuda(const Tensor& x, const Tensor& dw_w, const OptT& dw_b, const Tensor& pw1_w,
                       const OptT& pw1_b, const Tensor& pw2_w, const OptT& pw2_b, const OptT& ls) {
  const char* op = "swiftkern_C::conv_block";
  const c10::cuda::CUDAGuard guard(x.device());
  const skc::Dtype dt = check_x(x, op, 4);
  const Layout l = layout_of(x);
  const Tensor xc = x.contiguous(l.fmt);
  const Tensor z = dwconv_run(xc, dw_w, dw_b, l, dt, op);
  TORCH_CHECK(pw2_w.size(0) == x.size(1), op, ": pw2_w must map back to C = ", x.size(1),
              " channels, got ", pw2_w.sizes());
  return pw_mlp(z, pw1_w, pw1_b, pw2_w, pw2_b, ls, OptT(xc), l, dt, op);
}

Tensor mlp_cuda(const Tensor& x, const Tensor& fc1_w, const OptT& fc1_b, const Tensor& fc2_w,
                const OptT& fc2_b, const OptT& ls, const OptT& residual) {
  const char* op = "swiftkern_C::mlp";
  const c10::cuda::CUDAGuard guard(x.device());
  const skc::Dtype dt = check_x(x, op, 4);
  const Layout l = layout_of(x);
  return pw_mlp(x.contiguous(l.fmt), fc1_w, fc1_b, fc2_w, fc2_b, ls, residual, l, dt, op);
}


// ------------------------------------------------------------------------------------------------
// Train forms: BatchNorm with batch statistics (biased variance, as nn.BatchNorm2d normalizes)
// ------------------------------------------------------------------------------------------------
std::tuple<Tensor, Tensor, Tensor> bn_train(const Tensor& z, const OptT& bn_weight,
                                            const OptT& bn_bias, double eps, const Layout& l,
                                            skc::Dtype dt, const char* op) {
  const int64_t B = z.size(0), C = z.size(1), HW = z.size(2) * z.size(3);
  TORCH_CHECK_NOT_IMPLEMENTED(B * HW > 0 && C > 0, op, ": empty input");
  const OptT gamma = opt_vec(bn_weight, "bn_weight", C, z, op);
  const OptT beta = opt_vec(bn_bias, "bn_bias", C, z, op);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto f32 = z.options().dtype(at::kFloat);
  const int splits = skc::channel_splits(B, C, HW, num_sms());
  Tensor part = at::empty({splits, C}, f32);
  const double count = static_cast<double>(B * HW);
  SK_LAUNCH(op, skc::channel_sums(dt, z.data_ptr(), nullptr, part.data_ptr<float>(), B, C, HW,
                                  l.channels_last, splits, stream));
  const Tensor mean = part.sum(0).div_(count);
  // Second pass over squared deviations (stream-ordered after the sum above consumed `part`).
  SK_LAUNCH(op, skc::channel_sums(dt, z.data_ptr(), mean.data_ptr<float>(), part.data_ptr<float>(),
                                  B, C, HW, l.channels_last, splits, stream));
  const Tensor var = part.sum(0).div_(count);
  Tensor scale = var.add(eps).rsqrt_();
  if (gamma.has_value()) scale.mul_(gamma->to(at::kFloat));
  Tensor shift = mean.neg().mul_(scale);
  if (beta.has_value()) shift.add_(beta->to(at::kFloat));
  Tensor y = at::empty(z.sizes(), z.options().memory_format(l.fmt));
  SK_LAUNCH(op, skc::channel_affine(dt, y.data_ptr(), z.data_ptr(), scale.data_ptr<float>(),
                                    shift.data_ptr<float>(), y.numel(), C, inner_of(l, y), stream));
  return {y, mean.to(z.scalar_type()), var.to(z.scalar_type())};
}

std::tuple<Tensor, Tensor, Tensor> dwconv_bn_train_cuda(const Tensor& x, const Tensor& dw_w,
                                                        const OptT& dw_b, const OptT& bn_weight,
                                                        const OptT& bn_bias, double eps) {
  const char* op = "swiftkern_C::dwconv_bn_train";
  const c10::cuda::CUDAGuard guard(x.device());
  const skc::Dtype dt = check_x(x, op, 4);
  const Layout l = layout_of(x);
  const Tensor z = dwconv_run(x.contiguous(l.fmt), dw_w, dw_b, l, dt, op);
  return bn_train(z, bn_weight, bn_bias, eps, l, dt, op);
}

std::tuple<Tensor, Tensor, Tensor> conv_block_train_cuda(
    const Tensor& x, const Tensor& dw_w, const OptT& dw_b, const OptT& bn_weight,
    const OptT& bn_bias, double eps, const Tensor& pw1_w, const OptT& pw1_b, const Tensor& pw2_w,
    const OptT& pw2_b, const OptT& ls) {
  const char* op = "swiftkern_C::conv_block_train";
  const c10::cuda::CUDAGuard guard(x.device());
  const skc::Dtype dt = check_x(x, op, 4);
  const Layout l = layout_of(x);
  const Tensor xc = x.contiguous(l.fmt);
  const Tensor z = dwconv_run(xc, dw_w, dw_b, l, dt, op);
  auto [zn, mean, var] = bn_train(z, bn_weight, bn_bias, eps, l, dt, op);
  TORCH_CHECK(pw2_w.size(0) == x.size(1), op, ": pw2_w must map back to C = ", x.size(1),
              " channels, got ", pw2_w.sizes());
  Tensor y = pw_mlp(zn, pw1_w, pw1_b, pw2_w, pw2_b, ls, OptT(xc), l, dt, op);
  return {y, mean, var};
}

std::tuple<Tensor, Tensor, Tensor> mlp_train_cuda(const Tensor& x, const OptT& bn_weight,
                                                  const OptT& bn_bias, double eps,
                                                  const Tensor& fc1_w, const OptT& fc1_b,
                                                  const Tensor& fc2_w, const OptT& fc2_b,
                                                  const OptT& ls, const OptT& residual) {
  const char* op = "swiftkern_C::mlp_train";
  const c10::cuda::CUDAGuard guard(x.device());
  const skc::Dtype dt = check_x(x, op, 4);
  const Layout l = layout_of(x);
  auto [zn, mean, var] = bn_train(x.contiguous(l.fmt), bn_weight, bn_bias, eps, l, dt, op);
  Tensor y = pw_mlp(zn, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual, l, dt, op);
  return {y, mean, var};
}

// ------------------------------------------------------------------------------------------------
// Backwards of the eval forms
// ------------------------------------------------------------------------------------------------
Tensor channel_sum(const Tensor& t) { return t.sum(at::IntArrayRef{0, 2, 3}); }

// dW [Co, Ci] = sum over positions of dy (x) z, for 1x1 convs in layout l.
Tensor pw_weight_grad(const Tensor& dy, const Tensor& z, const Layout& l) {
  const int64_t Co = dy.size(1), Ci = z.size(1);
  if (l.channels_last) {
    return dy.permute({0, 2, 3, 1}).reshape({-1, Co}).t().mm(z.permute({0, 2, 3, 1}).reshape({-1, Ci}));
  }
  return dy.transpose(0, 1).reshape({Co, -1}).mm(z.transpose(0, 1).reshape({Ci, -1}).t());
}

struct DwGrads {
  Tensor dx, dw, db;
};

// Backward of the depthwise 3x3 (stride 1, padding 1): dx is the correlation of g with the
// flipped kernel; weight and bias gradients are per-channel reductions (conv_grad.cu).
DwGrads dw_backward(const Tensor& g, const Tensor& xc, const Tensor& dw_w, bool want_dx,
                    bool want_w, bool want_b, const Layout& l, skc::Dtype dt, const char* op) {
  const int64_t B = xc.size(0), C = xc.size(1), H = xc.size(2), W = xc.size(3);
  const auto stream = at::cuda::getCurrentCUDAStream();
  DwGrads r;
  if (want_dx) {
    const Tensor wflip = vec(dw_w, "dw_w", C * 9, xc, op).view({C, 3, 3}).flip({1, 2}).contiguous();
    r.dx = at::empty(xc.sizes(), xc.options().memory_format(l.fmt));
    SK_LAUNCH(op, skc::dwconv3x3(dt, g.data_ptr(), wflip.data_ptr(), nullptr, r.dx.data_ptr(), B,
                                 C, H, W, l.channels_last, stream));
  }
  if (want_w || want_b) {
    const int splits = skc::channel_splits(B, C, H * W, num_sms());
    Tensor part = at::empty({splits, C, 10}, xc.options().dtype(at::kFloat));
    SK_LAUNCH(op, skc::dwconv3x3_weight_grad(dt, g.data_ptr(), xc.data_ptr(),
                                             part.data_ptr<float>(), B, C, H, W, l.channels_last,
                                             splits, stream));
    const Tensor tot = part.sum(0);
    if (want_w) r.dw = tot.narrow(1, 0, 9).to(xc.scalar_type()).reshape(dw_w.sizes());
    if (want_b) r.db = tot.select(1, 9).to(xc.scalar_type());
  }
  return r;
}

struct MlpGrads {
  Tensor dz, dw1, db1, dw2, db2, dls;
};

// Backward of y = [residual +] ls * (pw2(GELU(pw1(z) + b1)) + b2) w.r.t. everything but the
// residual (whose gradient is g itself). g and z dense in layout l.
MlpGrads mlp_backward(const Tensor& g, const Tensor& z, const Tensor& w1, const OptT& b1,
                      const Tensor& w2, const OptT& b2, const OptT& ls, bool want_dz,
                      bool want_w1, bool want_b1, bool want_w2, bool want_b2, bool want_ls,
                      const Layout& l, skc::Dtype dt, const char* op) {
  const int64_t C = z.size(1);
  TORCH_CHECK(w1.dim() >= 2 && w1.numel() == w1.size(0) * C, op,
              ": the first pointwise weight must have shape [hidden, ", C, "], got ", w1.sizes());
  const int64_t Hd = w1.size(0);
  TORCH_CHECK(w2.dim() >= 2 && w2.numel() == w2.size(0) * Hd, op,
              ": the second pointwise weight must have shape [C_out, ", Hd, "], got ", w2.sizes());
  const int64_t Co = w2.size(0);
  const Tensor w1m = mat(w1, "pw1_w", Hd, C, z, op), w2m = mat(w2, "pw2_w", Co, Hd, z, op);
  const OptT b1v = opt_vec(b1, "pw1_b", Hd, z, op), b2v = opt_vec(b2, "pw2_b", Co, z, op);
  const OptT lsv = opt_vec(ls, "ls", Co, z, op);
  const auto stream = at::cuda::getCurrentCUDAStream();
  MlpGrads r;
  // Recompute u = pw1(z) + b1 (pre-activation) and h = GELU(u).
  Tensor u = pointwise(z, w1m, l);
  if (b1v.has_value()) {
    SK_LAUNCH(op, skc::bias_scale_residual(dt, u.data_ptr(), u.data_ptr(), b1v->data_ptr(), nullptr,
                                           nullptr, u.numel(), Hd, inner_of(l, u), stream));
  }
  Tensor h = u.clone();
  SK_LAUNCH(op, skc::bias_gelu(dt, h.data_ptr(), nullptr, h.numel(), Hd, inner_of(l, h), stream));
  TORCH_CHECK(g.numel() == z.size(0) * Co * z.size(2) * z.size(3), op,
              ": grad must have shape [", z.size(0), ", ", Co, ", ", z.size(2), ", ", z.size(3),
              "], got ", g.sizes());
  if (want_ls && lsv.has_value()) {
    Tensor v = pointwise(h, w2m, l);
    if (b2v.has_value()) {
      SK_LAUNCH(op, skc::bias_scale_residual(dt, v.data_ptr(), v.data_ptr(), b2v->data_ptr(),
                                             nullptr, nullptr, v.numel(), Co, inner_of(l, v),
                                             stream));
    }
    // Out of place: for fp32, g.to(kFloat) is g itself, and an in-place multiply would overwrite
    // the incoming gradient (and with it dv, dz and every weight gradient below).
    r.dls = channel_sum(g.to(at::kFloat) * v).to(z.scalar_type());
  }
  Tensor dv = g;
  if (lsv.has_value()) {
    dv = at::empty(g.sizes(), g.options().memory_format(l.fmt));
    SK_LAUNCH(op, skc::bias_scale_residual(dt, dv.data_ptr(), g.data_ptr(), nullptr, lsv->data_ptr(),
                                           nullptr, g.numel(), Co, inner_of(l, g), stream));
  }
  if (want_b2) r.db2 = channel_sum(dv);
  if (want_w2) r.dw2 = pw_weight_grad(dv, h, l);
  if (!(want_dz || want_w1 || want_b1)) return r;
  Tensor du = pointwise(dv, w2m.t(), l);
  SK_LAUNCH(op, skc::gelu_backward(dt, du.data_ptr(), du.data_ptr(), u.data_ptr(), du.numel(),
                                   stream));
  if (want_b1) r.db1 = channel_sum(du);
  if (want_w1) r.dw1 = pw_weight_grad(du, z, l);
  if (want_dz) r.dz = pointwise(du, w1m.t(), l);
  return r;
}

Tensor or_empty(const Tensor& t, const Tensor& like, at::IntArrayRef sizes) {
  return t.defined() ? t.reshape(sizes) : empty_grad(like);
}

std::vector<Tensor> dwconv_bn_backward_cuda(const Tensor& grad, const Tensor& x, const Tensor& dw_w,
                                            const OptT& dw_b, const c10::List<bool>& grad_mask) {
  const char* op = "swiftkern_C::dwconv_bn_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  const skc::Dtype dt = check_x(x, op, 4);
  check_like(grad, "grad", x, op);
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad must have the shape of x ", x.sizes(),
              ", got ", grad.sizes());
  const Layout l = layout_of(x);
  const Tensor xc = x.contiguous(l.fmt);
  DwGrads d = dw_backward(grad.contiguous(l.fmt), xc, dw_w, mask_at(grad_mask, 0),
                          mask_at(grad_mask, 1), mask_at(grad_mask, 2) && dw_b.has_value(), l, dt,
                          op);
  return {d.dx.defined() ? d.dx : empty_grad(x), or_empty(d.dw, x, dw_w.sizes()),
          d.db.defined() ? d.db.reshape(dw_b->sizes()) : empty_grad(x)};
}

std::vector<Tensor> mlp_backward_cuda(const Tensor& grad, const Tensor& x, const Tensor& fc1_w,
                                      const OptT& fc1_b, const Tensor& fc2_w, const OptT& fc2_b,
                                      const OptT& ls, const OptT& residual,
                                      const c10::List<bool>& grad_mask) {
  const char* op = "swiftkern_C::mlp_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  const skc::Dtype dt = check_x(x, op, 4);
  check_like(grad, "grad", x, op);
  const Layout l = layout_of(x);
  auto want = [&](size_t i, const OptT& t) { return mask_at(grad_mask, i) && t.has_value(); };
  MlpGrads m = mlp_backward(grad.contiguous(l.fmt), x.contiguous(l.fmt), fc1_w, fc1_b, fc2_w,
                            fc2_b, ls, mask_at(grad_mask, 0), mask_at(grad_mask, 1),
                            want(2, fc1_b), mask_at(grad_mask, 3), want(4, fc2_b), want(5, ls), l,
                            dt, op);
  std::vector<Tensor> out(7);
  out[0] = m.dz.defined() ? m.dz : empty_grad(x);
  out[1] = or_empty(m.dw1, x, fc1_w.sizes());
  out[2] = m.db1.defined() ? m.db1.reshape(fc1_b->sizes()) : empty_grad(x);
  out[3] = or_empty(m.dw2, x, fc2_w.sizes());
  out[4] = m.db2.defined() ? m.db2.reshape(fc2_b->sizes()) : empty_grad(x);
  out[5] = m.dls.defined() ? m.dls.reshape(ls->sizes()) : empty_grad(x);
  out[6] = want(6, residual) ? grad.reshape(residual->sizes()).clone() : empty_grad(x);
  return out;
}

std::vector<Tensor> conv_block_backward_cuda(const Tensor& grad, const Tensor& x,
                                             const Tensor& dw_w, const OptT& dw_b,
                                             const Tensor& pw1_w, const OptT& pw1_b,
                                             const Tensor& pw2_w, const OptT& pw2_b,
                                             const OptT& ls, const c10::List<bool>& grad_mask) {
  const char* op = "swiftkern_C::conv_block_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  const skc::Dtype dt = check_x(x, op, 4);
  check_like(grad, "grad", x, op);
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad must have the shape of x ", x.sizes(),
              ", got ", grad.sizes());
  const Layout l = layout_of(x);
  const Tensor xc = x.contiguous(l.fmt);
  const Tensor gc = grad.contiguous(l.fmt);
  auto want = [&](size_t i, const OptT& t) { return mask_at(grad_mask, i) && t.has_value(); };
  const bool want_dx = mask_at(grad_mask, 0), want_dw = mask_at(grad_mask, 1);
  const bool want_db = want(2, dw_b);
  const bool want_dz = want_dx || want_dw || want_db;
  const Tensor z = dwconv_run(xc, dw_w, dw_b, l, dt, op);
  MlpGrads m = mlp_backward(gc, z, pw1_w, pw1_b, pw2_w, pw2_b, ls, want_dz, mask_at(grad_mask, 3),
                            want(4, pw1_b), mask_at(grad_mask, 5), want(6, pw2_b), want(7, ls), l,
                            dt, op);
  std::vector<Tensor> out(8);
  for (auto& t : out) t = empty_grad(x);
  if (want_dz) {
    DwGrads d = dw_backward(m.dz, xc, dw_w, want_dx, want_dw, want_db, l, dt, op);
    if (want_dx) out[0] = d.dx.add_(gc);  // + the block's residual path
    if (want_dw) out[1] = d.dw.reshape(dw_w.sizes());
    if (want_db) out[2] = d.db.reshape(dw_b->sizes());
  }
  out[3] = or_empty(m.dw1, x, pw1_w.sizes());
  if (m.db1.defined()) out[4] = m.db1.reshape(pw1_b->sizes());
  out[5] = or_empty(m.dw2, x, pw2_w.sizes());
  if (m.db2.defined()) out[6] = m.db2.reshape(pw2_b->sizes());
  if (m.dls.defined()) out[7] = m.dls.reshape(ls->sizes());
  return out;
}


// ------------------------------------------------------------------------------------------------
// Backwards of the train forms. BatchNorm with batch statistics is recomputed and differentiated
// in fp32 ATen ops (per-channel sums over B*H*W are small next to the GEMMs); the conv and MLP
// parts reuse the kernels above.
// ------------------------------------------------------------------------------------------------
struct BnFwd {
  Tensor zn;               // BN output in z's dtype and layout
  Tensor xhat, rstd, gam;  // fp32: normalized z, 1/sqrt(var + eps) and gamma as [1, C, 1, 1]
};

BnFwd bn_recompute(const Tensor& z, const OptT& bn_weight, const OptT& bn_bias, double eps,
                   const Layout& l, const char* op) {
  const int64_t C = z.size(1);
  TORCH_CHECK_NOT_IMPLEMENTED(z.size(0) * z.size(2) * z.size(3) > 0, op, ": empty input");
  const OptT gamma = opt_vec(bn_weight, "bn_weight", C, z, op);
  const OptT beta = opt_vec(bn_bias, "bn_bias", C, z, op);
  BnFwd f;
  const Tensor zf = z.to(at::kFloat);
  auto [var, mean] = at::var_mean(zf, at::IntArrayRef{0, 2, 3}, c10::Scalar(0), true);
  f.rstd = var.add(eps).rsqrt_();
  f.xhat = (zf - mean).mul_(f.rstd);
  f.gam = gamma.has_value() ? gamma->to(at::kFloat).view({1, C, 1, 1}) : at::ones({1, C, 1, 1}, zf.options());
  Tensor zn = f.xhat * f.gam;
  if (beta.has_value()) zn.add_(beta->to(at::kFloat).view({1, C, 1, 1}));
  f.zn = zn.to(z.scalar_type()).contiguous(l.fmt);
  return f;
}

struct BnGrads {
  Tensor dz, dgamma, dbeta, dsum;
};

// dz = gamma * rstd * (g - mean(g) - xhat * mean(g * xhat)); dgamma = sum(g * xhat); dbeta = sum(g).
// dsum (want_dsum): the per-channel sum of dz over (B, H, W), i.e. the gradient of a bias added
// before the BN. It is zero in exact arithmetic, so summing the stored fp32 dz would return only
// cancellation error (measured 1.07e-4 at 1x48x56x56 on an H100, over the fp32 bound); it is formed
// instead from the same identity with every sum in fp64:
// gamma * rstd * (sum g - N mean(g) - sum(xhat) mean(g * xhat)).
BnGrads bn_backward(const Tensor& dzn, const BnFwd& f, const Tensor& z, bool want_dz,
                    bool want_gamma, bool want_beta, const Layout& l, bool want_dsum = false) {
  const double count = static_cast<double>(z.size(0) * z.size(2) * z.size(3));
  const Tensor g = dzn.to(at::kFloat);
  const Tensor sum_g = g.sum(at::IntArrayRef{0, 2, 3}, true);
  const Tensor sum_gx = (g * f.xhat).sum(at::IntArrayRef{0, 2, 3}, true);
  BnGrads r;
  if (want_gamma) r.dgamma = sum_gx.flatten().to(z.scalar_type());
  if (want_beta) r.dbeta = sum_g.flatten().to(z.scalar_type());
  if (want_dz) {
    const Tensor dz = (g - sum_g.div(count) - f.xhat * sum_gx.div(count)).mul_(f.gam * f.rstd);
    r.dz = dz.to(z.scalar_type()).contiguous(l.fmt);
  }
  if (want_dsum) {
    const at::IntArrayRef dims{0, 2, 3};
    const Tensor gd = dzn.to(at::kDouble), xd = f.xhat.to(at::kDouble);
    const Tensor sg = gd.sum(dims), sgx = (gd * xd).sum(dims), sx = xd.sum(dims);
    const Tensor fac = (f.gam * f.rstd).to(at::kDouble).flatten();
    r.dsum = ((sg - sg.div(count).mul(count)) - sx * sgx.div(count)).mul(fac).to(z.scalar_type());
  }
  return r;
}

Tensor opt_grad(const Tensor& t, const OptT& like_arg, const Tensor& x) {
  return t.defined() && like_arg.has_value() ? t.reshape(like_arg->sizes()) : empty_grad(x);
}

std::vector<Tensor> dwconv_bn_train_backward_cuda(const Tensor& grad, const Tensor& x,
                                                  const Tensor& dw_w, const OptT& dw_b,
                                                  const OptT& bn_weight, const OptT& bn_bias,
                                                  double eps, const c10::List<bool>& grad_mask) {
  const char* op = "swiftkern_C::dwconv_bn_train_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  const skc::Dtype dt = check_x(x, op, 4);
  check_like(grad, "grad", x, op);
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad must have the shape of x ", x.sizes(),
              ", got ", grad.sizes());
  auto want = [&](size_t i, const OptT& t) { return mask_at(grad_mask, i) && t.has_value(); };
  const Layout l = layout_of(x);
  const Tensor xc = x.contiguous(l.fmt);
  const Tensor z = dwconv_run(xc, dw_w, dw_b, l, dt, op);
  const BnFwd f = bn_recompute(z, bn_weight, bn_bias, eps, l, op);
  const bool want_dx = mask_at(grad_mask, 0), want_dw = mask_at(grad_mask, 1);
  const bool want_db = want(2, dw_b);
  BnGrads bg = bn_backward(grad, f, z, want_dx || want_dw, want(3, bn_weight), want(4, bn_bias),
                           l, want_db);
  std::vector<Tensor> out(5);
  for (auto& t : out) t = empty_grad(x);
  if (want_dx || want_dw) {
    DwGrads d = dw_backward(bg.dz, xc, dw_w, want_dx, want_dw, false, l, dt, op);
    if (want_dx) out[0] = d.dx;
    if (want_dw) out[1] = d.dw.reshape(dw_w.sizes());
  }
  if (want_db) out[2] = bg.dsum.reshape(dw_b->sizes());
  out[3] = opt_grad(bg.dgamma, bn_weight, x);
  out[4] = opt_grad(bg.dbeta, bn_bias, x);
  return out;
}

std::vector<Tensor> conv_block_train_backward_cuda(
    const Tensor& grad, const Tensor& x, const Tensor& dw_w, const OptT& dw_b,
    const OptT& bn_weight, const OptT& bn_bias, double eps, const Tensor& pw1_w,
    const OptT& pw1_b, const Tensor& pw2_w, const OptT& pw2_b, const OptT& ls,
    const c10::List<bool>& grad_mask) {
  const char* op = "swiftkern_C::conv_block_train_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  const skc::Dtype dt = check_x(x, op, 4);
  check_like(grad, "grad", x, op);
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad must have the shape of x ", x.sizes(),
              ", got ", grad.sizes());
  // Tensor arguments: x, dw_w, dw_b, bn_weight, bn_bias, pw1_w, pw1_b, pw2_w, pw2_b, ls.
  auto want = [&](size_t i, const OptT& t) { return mask_at(grad_mask, i) && t.has_value(); };
  const Layout l = layout_of(x);
  const Tensor xc = x.contiguous(l.fmt);
  const Tensor gc = grad.contiguous(l.fmt);
  const Tensor z = dwconv_run(xc, dw_w, dw_b, l, dt, op);
  const BnFwd f = bn_recompute(z, bn_weight, bn_bias, eps, l, op);
  const bool want_dx = mask_at(grad_mask, 0), want_dw = mask_at(grad_mask, 1);
  const bool want_db = want(2, dw_b);
  const bool want_dz = want_dx || want_dw || want_db;
  const bool want_bn = want(3, bn_weight) || want(4, bn_bias);
  MlpGrads m = mlp_backward(gc, f.zn, pw1_w, pw1_b, pw2_w, pw2_b, ls, want_dz || want_bn,
                            mask_at(grad_mask, 5), want(6, pw1_b), mask_at(grad_mask, 7),
                            want(8, pw2_b), want(9, ls), l, dt, op);
  std::vector<Tensor> out(10);
  for (auto& t : out) t = empty_grad(x);
  if (want_dz || want_bn) {
    BnGrads bg = bn_backward(m.dz, f, z, want_dx || want_dw, want(3, bn_weight),
                             want(4, bn_bias), l, want_db);
    out[3] = opt_grad(bg.dgamma, bn_weight, x);
    out[4] = opt_grad(bg.dbeta, bn_bias, x);
    if (want_dx || want_dw) {
      DwGrads d = dw_backward(bg.dz, xc, dw_w, want_dx, want_dw, false, l, dt, op);
      if (want_dx) out[0] = d.dx.add_(gc);  // + the block's residual path
      if (want_dw) out[1] = d.dw.reshape(dw_w.sizes());
    }
    if (want_db) out[2] = bg.dsum.reshape(dw_b->sizes());
  }
  out[5] = or_empty(m.dw1, x, pw1_w.sizes());
  out[6] = opt_grad(m.db1, pw1_b, x);
  out[7] = or_empty(m.dw2, x, pw2_w.sizes());
  out[8] = opt_grad(m.db2, pw2_b, x);
  out[9] = opt_grad(m.dls, ls, x);
  return out;
}

std::vector<Tensor> mlp_train_backward_cuda(const Tensor& grad, const Tensor& x,
                                            const OptT& bn_weight, const OptT& bn_bias, double eps,
                                            const Tensor& fc1_w, const OptT& fc1_b,
                                            const Tensor& fc2_w, const OptT& fc2_b, const OptT& ls,
                                            const OptT& residual, const c10::List<bool>& grad_mask) {
  const char* op = "swiftkern_C::mlp_train_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  const skc::Dtype dt = check_x(x, op, 4);
  check_like(grad, "grad", x, op);
  // Tensor arguments: x, bn_weight, bn_bias, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual.
  auto want = [&](size_t i, const OptT& t) { return mask_at(grad_mask, i) && t.has_value(); };
  const Layout l = layout_of(x);
  const Tensor xc = x.contiguous(l.fmt);
  const BnFwd f = bn_recompute(xc, bn_weight, bn_bias, eps, l, op);
  const bool want_dx = mask_at(grad_mask, 0);
  const bool want_bn = want(1, bn_weight) || want(2, bn_bias);
  MlpGrads m = mlp_backward(grad.contiguous(l.fmt), f.zn, fc1_w, fc1_b, fc2_w, fc2_b, ls,
                            want_dx || want_bn, mask_at(grad_mask, 3), want(4, fc1_b),
                            mask_at(grad_mask, 5), want(6, fc2_b), want(7, ls), l, dt, op);
  std::vector<Tensor> out(9);
  for (auto& t : out) t = empty_grad(x);
  if (want_dx || want_bn) {
    BnGrads bg = bn_backward(m.dz, f, xc, want_dx, want(1, bn_weight), want(2, bn_bias), l);
    if (want_dx) out[0] = bg.dz;
    out[1] = opt_grad(bg.dgamma, bn_weight, x);
    out[2] = opt_grad(bg.dbeta, bn_bias, x);
  }
  out[3] = or_empty(m.dw1, x, fc1_w.sizes());
  out[4] = opt_grad(m.db1, fc1_b, x);
  out[5] = or_empty(m.dw2, x, fc2_w.sizes());
  out[6] = opt_grad(m.db2, fc2_b, x);
  out[7] = opt_grad(m.dls, ls, x);
  out[8] = want(8, residual) ? grad.reshape(residual->sizes()).clone() : empty_grad(x);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(swiftkern_C, CUDA, m) {
  m.impl("additive_attention", &additive_attention_cuda);
  m.impl("additive_attention_backward", &additive_attention_backward_cuda);
  m.impl("additive_attention_core", &additive_attention_core_cuda);
  m.impl("additive_attention_core_backward", &additive_attention_core_backward_cuda);
  m.impl("dwconv_bn", &dwconv_bn_cuda);
  m.impl("conv_block", &conv_block_cuda);
  m.impl("mlp", &mlp_cuda);
  m.impl("dwconv_bn_train", &dwconv_bn_train_cuda);
  m.impl("conv_block_train", &conv_block_train_cuda);
  m.impl("mlp_train", &mlp_train_cuda);
  m.impl("dwconv_bn_backward", &dwconv_bn_backward_cuda);
  m.impl("conv_block_backward", &conv_block_backward_cuda);
  m.impl("mlp_backward", &mlp_backward_cuda);
  m.impl("dwconv_bn_train_backward", &dwconv_bn_train_backward_cuda);
  m.impl("conv_block_train_backward", &conv_block_train_backward_cuda);
  m.impl("mlp_train_backward", &mlp_train_backward_cuda);
}
