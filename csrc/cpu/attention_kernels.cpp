// CPU kernels of efficient additive attention (SPEC.md section 1): the whole module
// (additive_attention) and its core (additive_attention_core), forward and backward.
//
// Forward of the whole module:
//   qk = x @ w_qk^T + b_qk                    one GEMM for both projections ([B*N, 2D])
//   one pass per token row: q, k normalized in place, s = (qn . w_g) * scale, r = qn + b_proj
//   a = POOL(s) per batch; G = sum_n a_n qn_n
//   r += kn @ (diag(G) W_proj^T)              proj(G * kn) as one batched GEMM with G folded in
//   out = final(r)
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cpu_common.h"

namespace swiftkern::cpu {
namespace {

enum class Pool { kSum, kL2, kSoftmax };

Pool parse_pool(const std::string& pool) {
  if (pool == "sum") return Pool::kSum;
  if (pool == "l2") return Pool::kL2;
  TORCH_CHECK(pool == "softmax", "pool must be one of sum, l2, softmax, got ", pool);
  return Pool::kSoftmax;
}

template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  return at::vec::map2_reduce_all<T>([](Vec<T> x, Vec<T> y) { return x * y; },
                                     [](Vec<T> x, Vec<T> y) { return x + y; }, a, b, n);
}

template <typename T>
T sumsq(const T* a, int64_t n) {
  return at::vec::map_reduce_all<T>([](Vec<T> x) { return x * x; },
                                    [](Vec<T> x, Vec<T> y) { return x + y; }, a, n);
}

template <typename T>
void scale_to(const T* src, T s, T* dst, int64_t n) {
  at::vec::map<T>([s](Vec<T> x) { return x * Vec<T>(s); }, dst, src, n);
}

// s[0..N) -> a[0..N) in place, per POOL (reference.pool_weights).
template <typename T>
void pool_weights(T* s, int64_t N, Pool pool) {
  if (pool == Pool::kSum) {
    // softmax over a size-1 dim: exactly 1 for finite s, NaN otherwise (as torch.softmax).
    for (int64_t n = 0; n < N; ++n)
      s[n] = std::isfinite(s[n]) ? T(1) : std::numeric_limits<T>::quiet_NaN();
  } else if (pool == Pool::kL2) {
    const T inv = swiftkern::math::l2_inv_norm(sumsq<T>(s, N));
    for (int64_t n = 0; n < N; ++n) s[n] *= inv;
  } else {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t n = 0; n < N; ++n) m = std::max(m, s[n]);
    T tot = 0;
    for (int64_t n = 0; n < N; ++n) {
      s[n] = std::exp(s[n] - m);
      tot += s[n];
    }
    const T inv = T(1) / tot;
    for (int64_t n = 0; n < N; ++n) s[n] *= inv;
  }
}

// G[b] = sum_n a[b, n] * qn[b, n, :] with qn rows of stride ldq.
template <typename T>
void global_query(const T* qn, int64_t ldq, const T* a, int64_t B, int64_t N, int64_t D, T* G) {
  constexpr int64_t VS = Vec<T>::size();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* g = G + b * D;
      std::fill(g, g + D, T(0));
      for (int64_t n = 0; n < N; ++n) {
        const T* q = qn + (b * N + n) * ldq;
        const Vec<T> av(a[b * N + n]);
        for (int64_t d = 0; d < D; d += VS) {
          const int c = static_cast<int>(std::min<int64_t>(VS, D - d));
          at::vec::fmadd(av, Vec<T>::loadu(q + d, c), Vec<T>::loadu(g + d, c)).store(g + d, c);
        }
      }
    }
  });
}

// Normalizes q rows (stride ldq) and k rows (stride ldk) in place or into qn_out/kn_out, and
// computes s = (qn . w_g) * scale. Returns nothing; rows are independent.
template <typename T>
void normalize_rows(int64_t rows, int64_t D, const T* q, int64_t ldq, const T* k, int64_t ldk,
                    T* qn, int64_t ldqn, T* kn, int64_t ldkn, const T* w_g, T scale, T* s,
                    const T* b_res, T* res, int64_t ldres, const T* b_q = nullptr,
                    const T* b_k = nullptr, bool need_s = true) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* qi = q + i * ldq;
      const T* ki = k + i * ldk;
      T* qo = qn + i * ldqn;
      T* ko = kn + i * ldkn;
      // projection biases are added here rather than by addmm (saves a pass over [B*N, 2D])
      if (b_q) {
        at::vec::map2<T>([](Vec<T> x, Vec<T> y) { return x + y; }, qo, qi, b_q, D);
        qi = qo;
      }
      if (b_k) {
        at::vec::map2<T>([](Vec<T> x, Vec<T> y) { return x + y; }, ko, ki, b_k, D);
        ki = ko;
      }
      const T iq = swiftkern::math::l2_inv_norm(sumsq<T>(qi, D));
      const T ik = swiftkern::math::l2_inv_norm(sumsq<T>(ki, D));
      scale_to<T>(qi, iq, qo, D);
      scale_to<T>(ki, ik, ko, D);
      // "sum" pooling ignores s except for NaN propagation, which G carries anyway
      s[i] = need_s ? dot<T>(qo, w_g, D) * scale : T(0);
      if (res) {
        T* r = res + i * ldres;
        if (b_res)
          at::vec::map2<T>([](Vec<T> x, Vec<T> y) { return x + y; }, r, qo, b_res, D);
        else
          std::memcpy(r, qo, D * sizeof(T));
      }
    }
  });
}

template <typename T>
Tensor additive_attention_impl(const Tensor& x_in, const Tensor& w_qk, const OptTensor& b_qk,
                               const Tensor& w_g_in, double scale, const Tensor& w_proj,
                               const OptTensor& b_proj, const OptTensor& w_final,
                               const OptTensor& b_final, Pool pool,
                               const Tensor& qk_packed = Tensor(),
                               const OptTensor& final_packed = std::nullopt) {
  const Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  const Tensor x2 = x.view({B * N, D});
  // [B*N, 2D]; bias added in the normalize pass
  Tensor qk = qk_packed.defined() ? packed_linear(x2, qk_packed, w_qk.contiguous())
                                  : at::mm(x2, w_qk.t());
  if (!qk.is_contiguous()) qk = qk.contiguous();
  Tensor r = at::empty({B, N, D}, x.options());
  Tensor kn = at::empty({B, N, D}, x.options());
  Tensor s = at::empty({B, N}, x.options());
  const Tensor w_g = w_g_in.reshape({D}).contiguous();
  const OptTensor bp = contig(b_proj);
  const OptTensor bqk = contig(b_qk);
  const T* bqkp = ptr_or_null<T>(bqk);
  T* qkp = qk.data_ptr<T>();
  if (B * N > 0) {
    normalize_rows<T>(B * N, D, qkp, 2 * D, qkp + D, 2 * D, qkp, 2 * D, kn.data_ptr<T>(), D,
                      w_g.data_ptr<T>(), static_cast<T>(scale), s.data_ptr<T>(),
                      ptr_or_null<T>(bp), r.data_ptr<T>(), D, bqkp, bqkp ? bqkp + D : nullptr,
                      pool != Pool::kSum);
    T* sp = s.data_ptr<T>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) pool_weights<T>(sp + b * N, N, pool);
    });
  }
  Tensor G = at::empty({B, D}, x.options());
  global_query<T>(qkp, 2 * D, s.data_ptr<T>(), B, N, D, G.data_ptr<T>());
  // Wg[b, o, i] = Wp[o, i] * G[b, i]; r += kn @ Wg^T
  const Tensor wg = w_proj.unsqueeze(0) * G.unsqueeze(1);
  r.baddbmm_(kn, wg.transpose(1, 2));
  if (!has(w_final)) return r;
  const Tensor r2 = r.view({B * N, D});
  const int64_t Tdim = w_final->size(0);
  Tensor out = has(final_packed)
                   ? packed_linear(r2, *final_packed, w_final->contiguous(), b_final)
                   : (has(b_final) ? at::addmm(*b_final, r2, w_final->t())
                                   : at::mm(r2, w_final->t()));
  return out.view({B, N, Tdim});
}

template <typename T>
std::tuple<Tensor, Tensor> additive_attention_core_impl(const Tensor& q_in, const Tensor& k_in,
                                                        const Tensor& w_g_in, double scale,
                                                        Pool pool) {
  const Tensor q = q_in.contiguous(), k = k_in.contiguous();
  const int64_t B = q.size(0), N = q.size(1), D = q.size(2);
  Tensor qn = at::empty({B, N, D}, q.options());
  Tensor gk = at::empty({B, N, D}, q.options());
  Tensor s = at::empty({B, N}, q.options());
  const Tensor w_g = w_g_in.reshape({D}).contiguous();
  if (B * N == 0) return {gk, qn};
  T* qnp = qn.data_ptr<T>();
  T* gkp = gk.data_ptr<T>();
  T* sp = s.data_ptr<T>();
  normalize_rows<T>(B * N, D, q.data_ptr<T>(), D, k.data_ptr<T>(), D, qnp, D, gkp, D,
                    w_g.data_ptr<T>(), static_cast<T>(scale), sp, nullptr, nullptr, 0);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) pool_weights<T>(sp + b * N, N, pool);
  });
  std::vector<T> G(B * D);
  global_query<T>(qnp, D, sp, B, N, D, G.data());
  at::parallel_for(0, B * N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T* row = gkp + i * D;
      at::vec::map2<T>([](Vec<T> x, Vec<T> g) { return x * g; }, row, row, G.data() + (i / N) * D,
                       D);
    }
  });
  return {gk, qn};
}


// ------------------------------------------------------------------------------------------
// Backward. The forward of the core is recomputed (cheap: one pass), then
//   gkn = gm * G,  gG = sum_n gm_n * kn_n,  ga_n = gG . qn_n,  gs = POOL'(ga),
//   gqn = gres + a_n gG + gs_n scale w_g,  gq/gk through F.normalize's backward,
//   gw_g = scale * sum_n gs_n qn_n.
// ------------------------------------------------------------------------------------------

struct CoreState {
  Tensor qn, kn;      // [B*N, D]
  Tensor ssq, ssk;    // [B*N] sums of squares of the raw rows
  Tensor a;           // [B, N] pool weights
  Tensor G;           // [B, D]
};

template <typename T>
CoreState core_recompute(int64_t B, int64_t N, int64_t D, const T* q, int64_t ldq, const T* k,
                            int64_t ldk, const T* w_g, T scale, Pool pool) {
  const auto o = opts_of<T>();
  CoreState st{at::empty({B * N, D}, o), at::empty({B * N, D}, o), at::empty({B * N}, o),
                  at::empty({B * N}, o),    at::empty({B, N}, o),     at::empty({B, D}, o)};
  T* qn = st.qn.data_ptr<T>();
  T* kn = st.kn.data_ptr<T>();
  T* ssq = st.ssq.data_ptr<T>();
  T* ssk = st.ssk.data_ptr<T>();
  T* a = st.a.data_ptr<T>();
  at::parallel_for(0, B * N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      ssq[i] = sumsq<T>(q + i * ldq, D);
      ssk[i] = sumsq<T>(k + i * ldk, D);
      scale_to<T>(q + i * ldq, swiftkern::math::l2_inv_norm(ssq[i]), qn + i * D, D);
      scale_to<T>(k + i * ldk, swiftkern::math::l2_inv_norm(ssk[i]), kn + i * D, D);
      a[i] = dot<T>(qn + i * D, w_g, D) * scale;
    }
  });
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) pool_weights<T>(a + b * N, N, pool);
  });
  global_query<T>(qn, D, a, B, N, D, st.G.data_ptr<T>());
  return st;
}

// Backward of F.normalize for one row: dx = (gy - y (y.gy)) / n, or gy / eps when clamped.
template <typename T>
void normalize_backward_row(const T* gy, const T* y, T ss, int64_t D, T* dx) {
  const T inv = swiftkern::math::l2_inv_norm(ss);
  if (swiftkern::math::l2_clamped(ss)) {
    scale_to<T>(gy, inv, dx, D);
    return;
  }
  const T d = dot<T>(gy, y, D);
  at::vec::map2<T>([inv, d](Vec<T> g, Vec<T> yy) { return (g - yy * Vec<T>(d)) * Vec<T>(inv); },
                   dx, gy, y, D);
}

// gm: [B*N, D] gradient w.r.t. G * kn; gres: optional [B*N, D] extra gradient on qn.
// Writes gq / gk rows (strides ldgq / ldgk) and returns gw_g [D] (undefined unless need_wg).
template <typename T>
Tensor core_backward(const CoreState& st, int64_t B, int64_t N, int64_t D, const T* gm,
                     const T* gres, const T* w_g, T scale, Pool pool, T* gq, int64_t ldgq, T* gk,
                     int64_t ldgk, bool need_wg) {
  const auto o = opts_of<T>();
  const T* qn = st.qn.data_ptr<T>();
  const T* kn = st.kn.data_ptr<T>();
  const T* ssq = st.ssq.data_ptr<T>();
  const T* ssk = st.ssk.data_ptr<T>();
  const T* a = st.a.data_ptr<T>();
  const T* G = st.G.data_ptr<T>();
  Tensor gG_t = at::empty({B, D}, o);
  T* gG = gG_t.data_ptr<T>();
  // gG[b] = sum_n gm_n * kn_n  (G-weighted sum, same shape as global_query with gm as weights)
  constexpr int64_t VS = Vec<T>::size();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* g = gG + b * D;
      std::fill(g, g + D, T(0));
      for (int64_t n = 0; n < N; ++n) {
        const T* gmr = gm + (b * N + n) * D;
        const T* knr = kn + (b * N + n) * D;
        for (int64_t d = 0; d < D; d += VS) {
          const int c = static_cast<int>(std::min<int64_t>(VS, D - d));
          at::vec::fmadd(Vec<T>::loadu(gmr + d, c), Vec<T>::loadu(knr + d, c),
                         Vec<T>::loadu(g + d, c))
              .store(g + d, c);
        }
      }
    }
  });
  Tensor gs_t = at::empty({B, N}, o);
  T* gs = gs_t.data_ptr<T>();
  at::parallel_for(0, B * N, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> tmp(D);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / N;
      at::vec::map2<T>([](Vec<T> x, Vec<T> y) { return x * y; }, tmp.data(), gm + i * D, G + b * D,
                       D);
      normalize_backward_row<T>(tmp.data(), kn + i * D, ssk[i], D, gk + i * ldgk);
      gs[i] = dot<T>(gG + b * D, qn + i * D, D);  // ga for now
    }
  });
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* g = gs + b * N;
      const T* ab = a + b * N;
      if (pool == Pool::kSum) {
        for (int64_t n = 0; n < N; ++n) g[n] = g[n] - g[n];  // softmax over a size-1 dim
      } else if (pool == Pool::kSoftmax) {
        const T d = dot<T>(ab, g, N);
        for (int64_t n = 0; n < N; ++n) g[n] = ab[n] * (g[n] - d);
      } else {
        // a = s / max(||s||, eps): recover ||s||^2 from a is not possible when clamped, so
        // recompute s = a * denom is avoided: s itself is a * denom, denom = ||s|| unless clamped.
        // Here we need ss = sum s^2; with a = s / denom, ss = denom^2 * sum a^2.
        // Recompute s from qn instead (exact, cheap).
        std::vector<T> sv(N);
        for (int64_t n = 0; n < N; ++n) sv[n] = dot<T>(qn + (b * N + n) * D, w_g, D) * scale;
        const T ss = sumsq<T>(sv.data(), N);
        std::vector<T> dx(N);
        normalize_backward_row<T>(g, ab, ss, N, dx.data());
        std::copy(dx.begin(), dx.end(), g);
      }
    }
  });
  at::parallel_for(0, B * N, 16, [&](int64_t begin, int64_t end) {
    std::vector<T> tmp(D);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / N;
      const Vec<T> av(a[i]), sv(gs[i] * scale);
      const T* gr = gres ? gres + i * D : nullptr;
      const T* gGb = gG + b * D;
      for (int64_t d = 0; d < D; d += VS) {
        const int c = static_cast<int>(std::min<int64_t>(VS, D - d));
        Vec<T> v = av * Vec<T>::loadu(gGb + d, c) + sv * Vec<T>::loadu(w_g + d, c);
        if (gr) v = v + Vec<T>::loadu(gr + d, c);
        v.store(tmp.data() + d, c);
      }
      normalize_backward_row<T>(tmp.data(), qn + i * D, ssq[i], D, gq + i * ldgq);
    }
  });
  if (!need_wg) return Tensor();
  return at::mv(st.qn.t(), gs_t.view({B * N})).mul_(scale);
}

template <typename T>
std::vector<Tensor> additive_attention_backward_impl(
    const Tensor& grad, const Tensor& x_in, const Tensor& w_qk, const OptTensor& b_qk,
    const Tensor& w_g_in, double scale_d, const Tensor& w_proj, const OptTensor& b_proj,
    const OptTensor& w_final, const OptTensor& b_final, Pool pool, const std::vector<bool>& mask) {
  // mask order: x, w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final
  const Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2);
  const T scale = static_cast<T>(scale_d);
  const Tensor x2 = x.view({B * N, D});
  Tensor qk = has(b_qk) ? at::addmm(*b_qk, x2, w_qk.t()) : at::mm(x2, w_qk.t());
  if (!qk.is_contiguous()) qk = qk.contiguous();
  const Tensor w_g = w_g_in.reshape({D}).contiguous();
  const T* qkp = qk.data_ptr<T>();
  CoreState st = core_recompute<T>(B, N, D, qkp, 2 * D, qkp + D, 2 * D, w_g.data_ptr<T>(),
                                      scale, pool);
  const Tensor m = st.kn.view({B, N, D}).mul(st.G.unsqueeze(1)).view({B * N, D});  // G * kn
  const Tensor gO = grad.contiguous().view({B * N, grad.size(-1)});  // explicit: B * N may be 0
  auto empty = [&]() { return grad.new_empty({0}); };
  std::vector<Tensor> out(8);
  Tensor gr = gO;
  if (has(w_final)) {
    if (mask[6]) {
      Tensor r = at::mm(m, w_proj.t()).add_(st.qn);
      if (has(b_proj)) r.add_(*b_proj);
      out[6] = at::mm(gO.t(), r);
    }
    if (mask[7] && has(b_final)) out[7] = gO.sum(0);
    gr = at::mm(gO, *w_final);
  }
  if (mask[5] && has(b_proj)) out[5] = gr.sum(0);
  if (mask[4]) out[4] = at::mm(gr.t(), m);
  const bool need_core = mask[0] || mask[1] || (mask[2] && has(b_qk)) || mask[3];
  if (need_core) {
    Tensor gm = at::mm(gr, w_proj);
    if (!gr.is_contiguous()) gr = gr.contiguous();
    Tensor gqk = at::empty({B * N, 2 * D}, x.options());
    T* gp = gqk.data_ptr<T>();
    Tensor gwg = core_backward<T>(st, B, N, D, gm.data_ptr<T>(), gr.data_ptr<T>(),
                                  w_g.data_ptr<T>(), scale, pool, gp, 2 * D, gp + D, 2 * D, mask[3]);
    if (mask[3]) out[3] = gwg;
    if (mask[0]) out[0] = at::mm(gqk, w_qk).view({B, N, D});
    if (mask[1]) out[1] = at::mm(gqk.t(), x2);
    if (mask[2] && has(b_qk)) out[2] = gqk.sum(0);
  }
  for (auto& t : out)
    if (!t.defined()) t = empty();
  return out;
}

template <typename T>
std::vector<Tensor> additive_attention_core_backward_impl(const Tensor& grad, const Tensor& q_in,
                                                          const Tensor& k_in, const Tensor& w_g_in,
                                                          double scale_d, Pool pool,
                                                          const std::vector<bool>& mask) {
  const Tensor q = q_in.contiguous(), k = k_in.contiguous();
  const int64_t B = q.size(0), N = q.size(1), D = q.size(2);
  const T scale = static_cast<T>(scale_d);
  const Tensor w_g = w_g_in.reshape({D}).contiguous();
  CoreState st = core_recompute<T>(B, N, D, q.data_ptr<T>(), D, k.data_ptr<T>(), D,
                                      w_g.data_ptr<T>(), scale, pool);
  const Tensor gm = grad.contiguous();
  Tensor gq = at::empty({B, N, D}, q.options()), gk = at::empty({B, N, D}, q.options());
  Tensor gwg = core_backward<T>(st, B, N, D, gm.data_ptr<T>(), nullptr, w_g.data_ptr<T>(), scale,
                                pool, gq.data_ptr<T>(), D, gk.data_ptr<T>(), D, mask[2]);
  auto empty = [&]() { return grad.new_empty({0}); };
  return {mask[0] ? gq : empty(), mask[1] ? gk : empty(),
          mask[2] ? gwg.reshape(w_g_in.sizes()) : empty()};
}

// Argument shapes, checked at every op entry: the kernels index raw pointers, so a weight or bias
// of the wrong size would be read past its end (the swiftkern_C schemas are callable without the
// Python ops' validation).
void check_mat(const char* op, const char* name, const Tensor& w, int64_t rows, int64_t cols) {
  TORCH_CHECK(w.dim() == 2 && (rows < 0 || w.size(0) == rows) && w.size(1) == cols, op, ": ",
              name, " must be [", rows < 0 ? std::string("T") : std::to_string(rows), ", ", cols,
              "], got ", w.sizes());
}

// The module's arguments; grad (backward) must have the output's shape [B, N, T or D].
void check_attention(const char* op, const Tensor& x, const Tensor& w_qk, const OptTensor& b_qk,
                     const Tensor& w_g, const Tensor& w_proj, const OptTensor& b_proj,
                     const OptTensor& w_final, const OptTensor& b_final,
                     const Tensor* grad = nullptr) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be [B, N, D], got ", x.sizes());
  const int64_t D = x.size(2);
  check_mat(op, "w_qk", w_qk, 2 * D, D);
  check_numel(op, "b_qk", b_qk, 2 * D);
  check_numel(op, "w_g", w_g, D);
  check_mat(op, "w_proj", w_proj, D, D);
  check_numel(op, "b_proj", b_proj, D);
  int64_t t_out = D;
  if (has(w_final)) {
    check_mat(op, "w_final", *w_final, -1, D);
    t_out = w_final->size(0);
    check_numel(op, "b_final", b_final, t_out);
  }
  if (grad)
    TORCH_CHECK(grad->dim() == 3 && grad->size(0) == x.size(0) && grad->size(1) == x.size(1) &&
                    grad->size(2) == t_out,
                op, ": grad must be [", x.size(0), ", ", x.size(1), ", ", t_out, "], got ",
                grad->sizes());
}

// The core's arguments: q and k [B, N, D] alike, w_g D values; grad (backward) like q.
void check_core(const char* op, const Tensor& q, const Tensor& k, const Tensor& w_g,
                const Tensor* grad = nullptr) {
  TORCH_CHECK(q.dim() == 3, op, ": q must be [B, N, D], got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes(), op, ": k must have q's shape ", q.sizes(), ", got ",
              k.sizes());
  check_numel(op, "w_g", w_g, q.size(2));
  if (grad)
    TORCH_CHECK(grad->sizes() == q.sizes(), op, ": grad must have q's shape ", q.sizes(),
                ", got ", grad->sizes());
}

Tensor additive_attention(const Tensor& x, const Tensor& w_qk, const OptTensor& b_qk,
                          const Tensor& w_g, double scale, const Tensor& w_proj,
                          const OptTensor& b_proj, const OptTensor& w_final,
                          const OptTensor& b_final, c10::string_view pool_s) {
  check_attention("additive_attention", x, w_qk, b_qk, w_g, w_proj, b_proj, w_final, b_final);
  const Pool pool = parse_pool(std::string(pool_s));
  switch (route_dtype(x, "additive_attention")) {
    case DtypeRoute::kFloat:
      return additive_attention_impl<float>(x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final,
                                            b_final, pool);
    case DtypeRoute::kDouble:
      return additive_attention_impl<double>(x, w_qk, b_qk, w_g, scale, w_proj, b_proj, w_final,
                                             b_final, pool);
    default:
      return additive_attention_impl<float>(to_float(x), to_float(w_qk), to_float(b_qk),
                                            to_float(w_g), scale, to_float(w_proj),
                                            to_float(b_proj), to_float(w_final), to_float(b_final),
                                            pool)
          .to(x.scalar_type());
  }
}

// fp32 weights packed by the caller for B*N rows (w_final_packed undefined without w_final);
// x fp32, or bf16 / fp16 computed in fp32 between conversions.
Tensor additive_attention_packed(const Tensor& x, const Tensor& w_qk, const OptTensor& b_qk,
                                 const Tensor& w_g, double scale, const Tensor& w_proj,
                                 const OptTensor& b_proj, const OptTensor& w_final,
                                 const OptTensor& b_final, c10::string_view pool_s,
                                 const Tensor& w_qk_packed, const OptTensor& w_final_packed) {
  check_attention("additive_attention_packed", x, w_qk, b_qk, w_g, w_proj, b_proj, w_final,
                  b_final);
  const auto st = x.scalar_type();
  TORCH_CHECK_NOT_IMPLEMENTED(
      w_qk.scalar_type() == at::kFloat && computed_in_fp32(st) && x.device().is_cpu(),
      "swiftkern cpu additive_attention_packed: fp32 weights, fp32/bf16/fp16 x");
  TORCH_CHECK(has(w_final) == has(w_final_packed),
              "additive_attention_packed: w_final_packed must be given exactly with w_final");
  return additive_attention_impl<float>(to_float(x), w_qk, to_float(b_qk), to_float(w_g), scale,
                                        to_float(w_proj), to_float(b_proj), to_float(w_final),
                                        to_float(b_final), parse_pool(std::string(pool_s)),
                                        w_qk_packed, w_final_packed)
      .to(st);
}

std::tuple<Tensor, Tensor> additive_attention_core(const Tensor& q, const Tensor& k,
                                                   const Tensor& w_g, double scale,
                                                   c10::string_view pool_s) {
  check_core("additive_attention_core", q, k, w_g);
  const Pool pool = parse_pool(std::string(pool_s));
  switch (route_dtype(q, "additive_attention_core")) {
    case DtypeRoute::kFloat:
      return additive_attention_core_impl<float>(q, k, w_g, scale, pool);
    case DtypeRoute::kDouble:
      return additive_attention_core_impl<double>(q, k, w_g, scale, pool);
    default: {
      auto [gk, qn] = additive_attention_core_impl<float>(to_float(q), to_float(k), to_float(w_g),
                                                          scale, pool);
      return {gk.to(q.scalar_type()), qn.to(q.scalar_type())};
    }
  }
}


std::vector<Tensor> additive_attention_backward(
    const Tensor& grad, const Tensor& x, const Tensor& w_qk, const OptTensor& b_qk,
    const Tensor& w_g, double scale, const Tensor& w_proj, const OptTensor& b_proj,
    const OptTensor& w_final, const OptTensor& b_final, c10::string_view pool_s,
    const c10::List<bool>& mask_list) {
  const std::vector<bool> mask = mask_list.vec();
  TORCH_CHECK(mask.size() == 8, "additive_attention_backward: grad_mask must have 8 entries");
  check_attention("additive_attention_backward", x, w_qk, b_qk, w_g, w_proj, b_proj, w_final,
                  b_final, &grad);
  const Pool pool = parse_pool(std::string(pool_s));
  switch (route_dtype(x, "additive_attention_backward")) {
    case DtypeRoute::kFloat:
      return additive_attention_backward_impl<float>(grad, x, w_qk, b_qk, w_g, scale, w_proj,
                                                     b_proj, w_final, b_final, pool, mask);
    case DtypeRoute::kDouble:
      return additive_attention_backward_impl<double>(grad, x, w_qk, b_qk, w_g, scale, w_proj,
                                                      b_proj, w_final, b_final, pool, mask);
    default: {
      auto r = additive_attention_backward_impl<float>(
          to_float(grad), to_float(x), to_float(w_qk), to_float(b_qk), to_float(w_g), scale,
          to_float(w_proj), to_float(b_proj), to_float(w_final), to_float(b_final), pool, mask);
      for (auto& t : r) t = t.to(x.scalar_type());
      return r;
    }
  }
}

std::vector<Tensor> additive_attention_core_backward(const Tensor& grad, const Tensor& q,
                                                     const Tensor& k, const Tensor& w_g,
                                                     double scale, c10::string_view pool_s,
                                                     const c10::List<bool>& mask_list) {
  const std::vector<bool> mask = mask_list.vec();
  TORCH_CHECK(mask.size() == 3, "additive_attention_core_backward: grad_mask must have 3 entries");
  check_core("additive_attention_core_backward", q, k, w_g, &grad);
  const Pool pool = parse_pool(std::string(pool_s));
  switch (route_dtype(q, "additive_attention_core_backward")) {
    case DtypeRoute::kFloat:
      return additive_attention_core_backward_impl<float>(grad, q, k, w_g, scale, pool, mask);
    case DtypeRoute::kDouble:
      return additive_attention_core_backward_impl<double>(grad, q, k, w_g, scale, pool, mask);
    default: {
      auto r = additive_attention_core_backward_impl<float>(to_float(grad), to_float(q),
                                                            to_float(k), to_float(w_g), scale,
                                                            pool, mask);
      for (auto& t : r) t = t.to(q.scalar_type());
      return r;
    }
  }
}

}  // namespace
}  // namespace swiftkern::cpu

TORCH_LIBRARY_IMPL(swiftkern_C, CPU, m) {
  m.impl("additive_attention", &swiftkern::cpu::additive_attention);
  m.impl("additive_attention_core", &swiftkern::cpu::additive_attention_core);
  m.impl("additive_attention_backward", &swiftkern::cpu::additive_attention_backward);
  m.impl("additive_attention_core_backward", &swiftkern::cpu::additive_attention_core_backward);
  m.impl("additive_attention_packed", &swiftkern::cpu::additive_attention_packed);
}

// MKL-packed weights are MKLDNN-layout tensors: the dispatcher routes by this key.
TORCH_LIBRARY_IMPL(swiftkern_C, MkldnnCPU, m) {
  m.impl("additive_attention_packed", &swiftkern::cpu::additive_attention_packed);
}
