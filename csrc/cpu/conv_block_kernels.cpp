// CPU kernels of the conv-style ops: dwconv_bn, conv_block, mlp (eval forms) and their train forms
// and backwards. See SPEC.md section 2 and swiftkern/ops/reference.py for the math.
//
// Layouts: x arrives NCHW or channels_last; the output keeps it. Nothing is transposed: a
// channels_last tile is pixel-major [T, C] and a GEMM computes tile @ W^T; an NCHW tile is
// channel-major [C, T] (rows strided by H*W) and a GEMM computes W @ tile.
//
// Fused forward ("tile" strategy): per tile of whole image rows, dwconv -> pw1 -> +bias, GELU ->
// pw2 -> +bias, *ls, +residual, all in per-thread buffers; the hidden activation never leaves
// cache. Tiles run in parallel with single-threaded GEMMs (fp32: ATen's cpublas::brgemm entry;
// fp64: at::mm_out on the tile; SWIFTKERN_CPU_BRGEMM=0 takes mm_out for fp32 too). When there
// are too few tiles to feed every thread (small images at batch 1), the "unfused" strategy runs
// one multi-threaded GEMM per pointwise layer with the same fused epilogues instead.
// With few pixels (7x7 at batch 1) and fp32/fp64, the "split" strategy cuts the hidden units
// into one slice per thread instead (pointwise_split).
// SWIFTKERN_CPU_CONV_STRATEGY=tile|unfused|split forces one (benchmarks).
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <memory>
#include <queue>
#include <type_traits>
#include <vector>

#include "cpu_common.h"

namespace swiftkern::cpu {
namespace {

using swiftkern::math::gelu;

// bf16 / fp16 storage of x and the output around fp32 arithmetic (the tile strategy converts per
// tile, in cache, instead of whole-tensor passes before and after the kernel). ATen's vectorized
// conversions: the same round-to-nearest-even as Tensor.to(), so outputs are bit-identical to
// converting the whole tensors.
template <typename S>
inline void load_as_float(const S* src, float* dst, int64_t n) {
  at::vec::convert<S, float>(src, dst, n);
}
template <typename S>
inline void store_from_float(const float* src, S* dst, int64_t n) {
  at::vec::convert<float, S>(src, dst, n);
}
// SWIFTKERN_CPU_HALF_TILES=0: whole-tensor conversions on the tile strategy too (A/Bs).
inline bool half_tiles_on() { return env_str("SWIFTKERN_CPU_HALF_TILES") != "0"; }

// ------------------------------------------------------------------------------------------
// Depthwise 3x3, stride 1, padding 1
// ------------------------------------------------------------------------------------------

// channels_last: x is one image [H, W, C] from its row xrow0 on (x points at that row); w9 is
// tap-major [9, C]; rows [h0, h1) are written pixel-major to out (row stride ldo >= C).
template <typename T>
void dw_rows_nhwc(const T* x, const T* w9, const T* bias, int64_t H, int64_t W, int64_t C,
                  int64_t h0, int64_t h1, T* out, int64_t ldo, int64_t xrow0 = 0) {
  constexpr int64_t VS = Vec<T>::size();
  for (int64_t h = h0; h < h1; ++h) {
    const int64_t dh_lo = h == 0 ? 0 : -1, dh_hi = h == H - 1 ? 0 : 1;
    for (int64_t w = 0; w < W; ++w) {
      const int64_t dw_lo = w == 0 ? 0 : -1, dw_hi = w == W - 1 ? 0 : 1;
      T* o = out + ((h - h0) * W + w) * ldo;
      int64_t c0 = 0;
      for (; c0 + VS <= C; c0 += VS) {
        Vec<T> acc = bias ? Vec<T>::loadu(bias + c0) : Vec<T>(T(0));
        for (int64_t dh = dh_lo; dh <= dh_hi; ++dh) {
          for (int64_t dw = dw_lo; dw <= dw_hi; ++dw) {
            const int64_t tap = (dh + 1) * 3 + (dw + 1);
            acc = at::vec::fmadd(Vec<T>::loadu(w9 + tap * C + c0),
                                 Vec<T>::loadu(x + ((h + dh - xrow0) * W + (w + dw)) * C + c0),
                                 acc);
          }
        }
        acc.store(o + c0);
      }
      // scalar channel tail (C = 220, 33...): partial Vectorized loads go through a stack copy
      for (; c0 < C; ++c0) {
        T acc = bias ? bias[c0] : T(0);
        for (int64_t dh = dh_lo; dh <= dh_hi; ++dh)
          for (int64_t dw = dw_lo; dw <= dw_hi; ++dw)
            acc += w9[((dh + 1) * 3 + (dw + 1)) * C + c0] *
                   x[((h + dh - xrow0) * W + (w + dw)) * C + c0];
        o[c0] = acc;
      }
    }
  }
}

// NCHW: xc is one plane [H, W] from its row xrow0 on; rows [h0, h1) are written contiguously to
// out.
template <typename T>
void dw_rows_plane(const T* xc, const T* w9, T bias, int64_t H, int64_t W, int64_t h0, int64_t h1,
                   T* out, int64_t xrow0 = 0) {
  constexpr int64_t VS = Vec<T>::size();
  for (int64_t h = h0; h < h1; ++h) {
    T* o = out + (h - h0) * W;
    for (int64_t w = 0; w < W; ++w) o[w] = bias;
    for (int64_t dh = -1; dh <= 1; ++dh) {
      const int64_t hh = h + dh;
      if (hh < 0 || hh >= H) continue;
      const T* r = xc + (hh - xrow0) * W;
      const T wl = w9[(dh + 1) * 3], wc = w9[(dh + 1) * 3 + 1], wr = w9[(dh + 1) * 3 + 2];
      if (W == 1) {
        o[0] += wc * r[0];
        continue;
      }
      o[0] += wc * r[0] + wr * r[1];
      const Vec<T> vl(wl), vc(wc), vr(wr);
      int64_t w = 1;
      for (; w + VS <= W - 1; w += VS) {
        Vec<T> acc = Vec<T>::loadu(o + w);
        acc = at::vec::fmadd(vl, Vec<T>::loadu(r + w - 1), acc);
        acc = at::vec::fmadd(vc, Vec<T>::loadu(r + w), acc);
        acc = at::vec::fmadd(vr, Vec<T>::loadu(r + w + 1), acc);
        acc.store(o + w);
      }
      // scalar tail: partial Vectorized loads go through a stack copy and cost more (7x7 maps)
      for (; w < W - 1; ++w) o[w] += wl * r[w - 1] + wc * r[w] + wr * r[w + 1];
      o[W - 1] += wl * r[W - 2] + wc * r[W - 1];
    }
  }
}

// Depthwise weights in the order the layout's loop wants: [9, C] (tap-major) for channels_last,
// [C, 9] else; flip: the kernel rotated by 180 degrees (tap t -> 8 - t, the dwconv backward's
// correlation). A plain loop: this runs on every call, and the ATen transpose + clone it replaces
// cost ~13 us of dispatch each (16 calls per SwiftFormer-XS forward).
template <typename T>
std::vector<T> dw_taps(const Tensor& dw_w, bool cl, bool flip = false) {
  const int64_t C = dw_w.size(0);
  const Tensor w = dw_w.contiguous();  // no copy for a contiguous weight
  TORCH_CHECK(w.numel() == 9 * C, "depthwise weight must be [C, 1, 3, 3], got ", dw_w.sizes());
  const T* p = w.data_ptr<T>();
  std::vector<T> out(9 * C);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t tap = 0; tap < 9; ++tap)
      out[cl ? tap * C + c : c * 9 + tap] = p[c * 9 + (flip ? 8 - tap : tap)];
  return out;
}

// Full dwconv of x (already contiguous in its layout) into out (same layout).
template <typename T>
void dwconv_full(const Tensor& x, const T* w9, const T* bias, bool cl, Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  if (cl) {
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / H, h = i % H;
        dw_rows_nhwc<T>(xp + b * HW * C, w9, bias, H, W, C, h, h + 1, op + (b * HW + h * W) * C,
                        C);
      }
    });
  } else {
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t c = i % C;
        dw_rows_plane<T>(xp + i * HW, w9 + c * 9, bias ? bias[c] : T(0), H, W, 0, H, op + i * HW);
      }
    });
  }
}

// ------------------------------------------------------------------------------------------
// Epilogues
// ------------------------------------------------------------------------------------------

// h[r, :] = GELU(h[r, :] + bias) with bias along columns (pixel-major hidden [T, Hd]).
template <typename T>
void bias_gelu_cols(T* h, int64_t rows, int64_t cols, const T* bias) {
  constexpr int64_t VS = Vec<T>::size();
  for (int64_t r = 0; r < rows; ++r) {
    T* p = h + r * cols;
    for (int64_t c = 0; c < cols; c += VS) {
      const int n = static_cast<int>(std::min<int64_t>(VS, cols - c));
      Vec<T> v = Vec<T>::loadu(p + c, n);
      if (bias) v = v + Vec<T>::loadu(bias + c, n);
      gelu_vec<T>(v).store(p + c, n);
    }
  }
}

// h[r, :] = GELU(h[r, :] + bias[r]) (channel-major hidden [Hd, T]).
template <typename T>
void bias_gelu_rows(T* h, int64_t rows, int64_t cols, const T* bias) {
  constexpr int64_t VS = Vec<T>::size();
  for (int64_t r = 0; r < rows; ++r) {
    T* p = h + r * cols;
    const Vec<T> bv(bias ? bias[r] : T(0));
    for (int64_t c = 0; c < cols; c += VS) {
      const int n = static_cast<int>(std::min<int64_t>(VS, cols - c));
      gelu_vec<T>(Vec<T>::loadu(p + c, n) + bv).store(p + c, n);
    }
  }
}

// out[t, c] = res[t, c] + ls[c] * (y[t, c] + b[c]) for a pixel-major tile (rows contiguous).
template <typename T>
void out_epilogue_pixels(const T* y, int64_t rows, int64_t C, const T* b, const T* ls,
                         const T* res, T* out) {
  constexpr int64_t VS = Vec<T>::size();
  for (int64_t r = 0; r < rows; ++r) {
    const T* yr = y + r * C;
    T* orow = out + r * C;
    const T* rr = res ? res + r * C : nullptr;
    for (int64_t c = 0; c < C; c += VS) {
      const int n = static_cast<int>(std::min<int64_t>(VS, C - c));
      Vec<T> v = Vec<T>::loadu(yr + c, n);
      if (b) v = v + Vec<T>::loadu(b + c, n);
      if (ls) v = v * Vec<T>::loadu(ls + c, n);
      if (rr) v = v + Vec<T>::loadu(rr + c, n);
      v.store(orow + c, n);
    }
  }
}

// Channel-major tile: y is [C, cols] (ld cols); out/res rows have stride ld_out.
template <typename T>
void out_epilogue_channels(const T* y, int64_t C, int64_t cols, const T* b, const T* ls,
                           const T* res, T* out, int64_t ld_out) {
  constexpr int64_t VS = Vec<T>::size();
  for (int64_t c = 0; c < C; ++c) {
    const T* yr = y + c * cols;
    T* orow = out + c * ld_out;
    const T* rr = res ? res + c * ld_out : nullptr;
    const Vec<T> bv(b ? b[c] : T(0)), lv(ls ? ls[c] : T(1));
    for (int64_t t = 0; t < cols; t += VS) {
      const int n = static_cast<int>(std::min<int64_t>(VS, cols - t));
      Vec<T> v = (Vec<T>::loadu(yr + t, n) + bv) * lv;
      if (rr) v = v + Vec<T>::loadu(rr + t, n);
      v.store(orow + t, n);
    }
  }
}

// ------------------------------------------------------------------------------------------
// Pointwise part: y = res + ls * (W2 GELU(W1 d + b1) + b2)
// ------------------------------------------------------------------------------------------

struct PwArgs {
  Tensor w1, w2;  // [Hd, C], [Co, Hd], contiguous
  OptTensor b1, b2, ls;
  // MKL-packed copies of w1 / w2 for exactly P = B*H*W rows (mkl::_mkl_reorder_linear_weight),
  // or undefined. Only the pixel-major fp32 whole-tensor GEMMs use them (pointwise_unfused).
  Tensor p1, p2;
};

// Rows of the image per tile: the hidden tile (rows * W * Hd values) should stay in L2 (512 KiB
// per core on the Zen3 this was tuned on; 64K floats = 256 KiB leaves room for the other tiles).
inline int64_t rows_per_tile(int64_t H, int64_t W, int64_t Hd, int64_t elem) {
  const int64_t budget = (256 * 1024) / elem;
  const int64_t px = std::max<int64_t>(budget / std::max<int64_t>(Hd, 1), 1);
  return std::clamp<int64_t>(px / std::max<int64_t>(W, 1), 1, H);
}

// Tile scheduling. The tile strategy's threads take tiles in order from a shared counter, each
// the next one when it finishes its last (run_tiles), so a thread on a slower core (a shared VM:
// one vCPU losing time to a neighbour) takes fewer. With equal cores that deals the tiles out in
// turn, and with the largest R that fits the budget the threads' rows can still differ by up to
// a tile: SwiftFormer-XS stage 1 at batch 1 (56 rows, Rmax = 6) runs as tiles of 6 x 9 + 2, 30
// and 26 rows. balanced_rows takes the R in [ceil(Rmax / 2), Rmax] whose busiest thread has the
// fewest rows under that schedule (+ 1/4 row per tile for the per-tile calls; the larger R on
// ties): R = 4 there, 28 rows each. From 8 tiles per thread on, a tile's worth of imbalance is
// small and Rmax stays. pick_strategy counts the balanced tiles: XS stage 2 at batch 1 (C = 56,
// 28 rows: 3 tiles of <= 10 rows, so the unfused GEMMs) runs as 4 tiles of 7.
// SWIFTKERN_CPU_TILE_BALANCE=0: Rmax and one fixed chunk of tiles per thread, as before (A/Bs;
// benchmarks/tile_balance_ab.py).
inline bool tile_balance_on() { return env_str("SWIFTKERN_CPU_TILE_BALANCE") != "0"; }

inline int64_t balanced_rows(int64_t B, int64_t H, int64_t Rmax, int64_t nt) {
  if (nt <= 1 || Rmax <= 1 || B * ((H + Rmax - 1) / Rmax) >= 8 * nt) return Rmax;
  int64_t best_r = Rmax, best_cost = -1;
  for (int64_t r = Rmax; r >= (Rmax + 1) / 2; --r) {
    const int64_t per_img = (H + r - 1) / r, n = B * per_img;
    // each thread's load in quarter rows; the next tile goes to the least loaded (free first)
    std::priority_queue<int64_t, std::vector<int64_t>, std::greater<int64_t>> load(
        std::greater<int64_t>(), std::vector<int64_t>(static_cast<size_t>(nt), 0));
    int64_t worst = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t h0 = (i % per_img) * r;
      const int64_t l = load.top() + 4 * (std::min(H, h0 + r) - h0) + 1;
      load.pop();
      load.push(l);
      worst = std::max(worst, l);
    }
    if (best_cost < 0 || worst < best_cost) {
      best_cost = worst;
      best_r = r;
    }
  }
  return best_r;
}

// body(begin, end, next) on the intra-op threads, once per thread (its scratch set up once):
// dynamic, every thread gets [0, n) and the shared counter next, and takes tile indices from it
// until they run past n; static (next = nullptr), one contiguous chunk [begin, end) per thread.
template <typename Body>
void run_tiles(int64_t n, bool dynamic, const Body& body) {
  if (!dynamic) {
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) { body(begin, end, nullptr); });
    return;
  }
  std::atomic<int64_t> next{0};
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, slots, 1, [&](int64_t, int64_t) { body(0, n, &next); });
}

enum class Strategy { kTile, kUnfused };

// Pointwise weights (w1 + w2 bytes) from which channels_last inputs run the unfused strategy
// with 2+ threads. Session 10, Intel Xeon (AVX-512, 2 MiB L2 per core), 2 threads, tile vs
// unfused (+ MKL-packed weights where packable), per op: the multi-threaded GEMMs won from
// C = 96 (295 KB) up: 1.2-1.5x at 96 / 128 @ 28x28 batch 1, 1.2x at 128 @ 28x28 batch 8, 1.1x at
// 112-192 @ 14x14 batch 8, 1.2-1.3x at 220 @ 7x7 batch 8; tiles won at C = 64 (131 KB: 1.7x at
// 28x28 batch 8, 1.2x at 56x56 batch 8). SWIFTKERN_CPU_UNFUSED_BYTES overrides it (A/Bs).
constexpr int64_t kUnfusedWeightBytesCl = 256 << 10;

inline Strategy pick_strategy(int64_t n_tiles, int64_t weight_bytes, bool cl) {
  const std::string s = env_str("SWIFTKERN_CPU_CONV_STRATEGY");
  if (s == "tile") return Strategy::kTile;
  if (s == "unfused") return Strategy::kUnfused;
  // Every tile streams both pointwise weights through its core; past ~2 MB (C >= 320 with a 4C
  // hidden) they no longer stay in cache and the tiles ran 0.35-0.8x of eager, while the big
  // GEMMs ran 1.0-1.3x (swiftkern bench ops, C=320/384/512, 2 threads, Zen 3). At C=192 (1.2 MB)
  // tiles still won there (1.35x vs 1.08x).
  if (weight_bytes > (2 << 20)) return Strategy::kUnfused;
  const int64_t nt = at::get_num_threads();
  if (cl && nt >= 2) {
    const std::string lim = env_str("SWIFTKERN_CPU_UNFUSED_BYTES");
    const int64_t limit = lim.empty() ? kUnfusedWeightBytesCl : std::atoll(lim.c_str());
    if (weight_bytes > limit) return Strategy::kUnfused;
  }
  // Tiles run one per thread with single-threaded GEMMs; with fewer tiles than ~2 per thread
  // the multi-threaded big GEMMs win (measured: benchmarks/cpu_kernels_bench.py).
  return (nt == 1 || n_tiles >= 2 * nt) ? Strategy::kTile : Strategy::kUnfused;
}

// c[M, N] = a[M, K] @ b[K, N] on the calling thread: a row-major with leading dimension lda,
// b with strides (ldb, b_col), c contiguous. bg (fp32 only): through ATen's cpublas::brgemm,
// which needs b row-major (b_col == 1); otherwise at::mm_out. Raw pointers: the brgemm path
// builds no tensor per tile.
template <typename T>
void tile_mm(bool bg, int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* b,
             int64_t ldb, int64_t b_col, T* c) {
  if constexpr (std::is_same_v<T, float>) {
    if (bg) {
      TORCH_INTERNAL_ASSERT(b_col == 1);
      at::native::cpublas::brgemm(M, N, K, lda, ldb, N, false, a, b, c);
      return;
    }
  }
  Tensor out = blob<T>(c, {M, N}, {N, 1});
  at::mm_out(out, blob<T>(const_cast<T*>(a), {M, K}, {lda, 1}),
             blob<T>(const_cast<T*>(b), {K, N}, {ldb, b_col}));
}

// w^T of a contiguous 2-D w, contiguous: a blocked loop on the calling thread. ATen's copy of
// the transposed view took ~12 us per weight at SwiftFormer-XS stage 1 (48 x 192), two per
// tile-strategy call, 16 per XS forward at batch 1; this takes a few.
template <typename T>
Tensor transposed(const Tensor& w) {
  const int64_t R = w.size(0), C = w.size(1);
  Tensor out = at::empty({C, R}, w.options());
  const T* src = w.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  constexpr int64_t kB = 16;
  for (int64_t r0 = 0; r0 < R; r0 += kB)
    for (int64_t c0 = 0; c0 < C; c0 += kB)
      for (int64_t r = r0; r < std::min(R, r0 + kB); ++r)
        for (int64_t c = c0; c < std::min(C, c0 + kB); ++c) dst[c * R + r] = src[r * C + c];
  return out;
}

// Tile strategy. produce(b, h0, h1, buf) fills/returns the tile input d: pixel-major [T, C] or
// channel-major [C, T], returning {pointer, leading dimension}. res (optional) and out have the
// output's layout; C_out = w2.size(0). S: their storage type (bf16 / fp16 around T = float: the
// epilogue runs in T on the tile, res converted in and the result converted out per tile).
template <typename T, typename S = T, typename Produce>
void pointwise_tiles(const Produce& produce, bool cl, int64_t B, int64_t C, int64_t H, int64_t W,
                     const PwArgs& a, const S* res, S* out, int64_t R) {
  constexpr bool kSame = std::is_same_v<S, T>;
  const int64_t Hd = a.w1.size(0), Co = a.w2.size(0), HW = H * W;
  const int64_t n_tiles_img = (H + R - 1) / R;
  const T* b1 = ptr_or_null<T>(a.b1);
  const T* b2 = ptr_or_null<T>(a.b2);
  const T* ls = ptr_or_null<T>(a.ls);
  // fp32: the tile GEMMs through ATen's brgemm micro-kernel entry (see tile_mm), which takes the
  // right-hand side row-major: W^T copies for pixel-major tiles (C x Hd + Hd x Co values per
  // call), nothing for channel-major ones. SWIFTKERN_CPU_BRGEMM=0: at::mm_out (A/Bs).
  const bool bg = std::is_same_v<T, float> && env_str("SWIFTKERN_CPU_BRGEMM") != "0";
  const Tensor w1t = bg && cl ? transposed<T>(a.w1) : a.w1.t();  // [C, Hd]
  const Tensor w2t = bg && cl ? transposed<T>(a.w2) : a.w2.t();  // [Hd, Co]
  const T* w1p = w1t.data_ptr<T>();
  const T* w2p = w2t.data_ptr<T>();
  run_tiles(B * n_tiles_img, tile_balance_on(), [&](int64_t begin, int64_t end,
                                                    std::atomic<int64_t>* next) {
    // grad mode is thread-local: worker threads would see it on and reject mm(out=) on tensors
    // that require grad
    at::NoGradGuard no_grad;
    const int64_t tmax = R * W;
    // scratch, fully written before it is read: not zero-filled (up to 256 KiB per call)
    std::unique_ptr<T[]> dbuf(new T[tmax * C]), hbuf(new T[tmax * Hd]), ybuf(new T[tmax * Co]);
    std::unique_ptr<T[]> rbuf(!kSame && res ? new T[tmax * Co] : nullptr);  // res tile in T
    for (int64_t i = next ? next->fetch_add(1) : begin; i < end;
         i = next ? next->fetch_add(1) : i + 1) {
      const int64_t b = i / n_tiles_img, h0 = (i % n_tiles_img) * R, h1 = std::min(H, h0 + R);
      const int64_t tn = (h1 - h0) * W, p0 = h0 * W;
      const auto [dptr, ldd] = produce(b, h0, h1, dbuf.get());
      if (cl) {  // h[tn, Hd] = d[tn, C] W1^T;  y[tn, Co] = h W2^T
        tile_mm<T>(bg, tn, Hd, C, dptr, ldd, w1p, w1t.stride(0), w1t.stride(1), hbuf.get());
        bias_gelu_cols<T>(hbuf.get(), tn, Hd, b1);
        tile_mm<T>(bg, tn, Co, Hd, hbuf.get(), Hd, w2p, w2t.stride(0), w2t.stride(1), ybuf.get());
        if constexpr (kSame) {
          out_epilogue_pixels<T>(ybuf.get(), tn, Co, b2, ls,
                                 res ? res + (b * HW + p0) * Co : nullptr, out + (b * HW + p0) * Co);
        } else {  // in place on the tile, then stored as S
          if (res) load_as_float<S>(res + (b * HW + p0) * Co, rbuf.get(), tn * Co);
          out_epilogue_pixels<T>(ybuf.get(), tn, Co, b2, ls, rbuf.get(), ybuf.get());
          store_from_float<S>(ybuf.get(), out + (b * HW + p0) * Co, tn * Co);
        }
      } else {  // h[Hd, tn] = W1 d[C, tn];  y[Co, tn] = W2 h  (W1, W2 contiguous)
        tile_mm<T>(bg, Hd, tn, C, a.w1.data_ptr<T>(), C, dptr, ldd, 1, hbuf.get());
        bias_gelu_rows<T>(hbuf.get(), Hd, tn, b1);
        tile_mm<T>(bg, Co, tn, Hd, a.w2.data_ptr<T>(), Hd, hbuf.get(), tn, 1, ybuf.get());
        if constexpr (kSame) {
          out_epilogue_channels<T>(ybuf.get(), Co, tn, b2, ls,
                                   res ? res + b * Co * HW + p0 : nullptr, out + b * Co * HW + p0,
                                   HW);
        } else {  // in place on the [Co, tn] tile (row stride tn), then stored as S
          if (res)
            for (int64_t c = 0; c < Co; ++c)
              load_as_float<S>(res + (b * Co + c) * HW + p0, rbuf.get() + c * tn, tn);
          out_epilogue_channels<T>(ybuf.get(), Co, tn, b2, ls, rbuf.get(), ybuf.get(), tn);
          for (int64_t c = 0; c < Co; ++c)
            store_from_float<S>(ybuf.get() + c * tn, out + (b * Co + c) * HW + p0, tn);
        }
      }
    }
    if (bg) at::native::cpublas::brgemm_release(false);
  });
}

// Hidden-split strategy (few pixels, pixel-major d [P, C]): the hidden units are cut into one
// slice per thread, and each thread runs single-threaded GEMMs on its own rows of W1 / columns of
// W2 only: y_t = GELU(d W1_t^T + b1_t) W2_t^T, a partial sum over its slice. One parallel region
// instead of four (two multi-threaded GEMMs, the GELU and the epilogue passes); each weight is
// read by one thread; the [P, Hd / threads] hidden slice stays in that thread's cache. The
// epilogue then adds the partials: y = sum_t y_t (fp32 / fp64 only, where a split sum is as exact
// as the GEMM's own blocking).
template <typename T>
void pointwise_split(const T* dp, int64_t P, int64_t C, const PwArgs& a, const T* res, T* out,
                     int64_t n_parts) {
  const int64_t Hd = a.w1.size(0), Co = a.w2.size(0);
  const T* b1 = ptr_or_null<T>(a.b1);
  const T* b2 = ptr_or_null<T>(a.b2);
  const T* ls = ptr_or_null<T>(a.ls);
  // slices of whole vectors, so every thread's GELU runs on full-width loads
  const int64_t VS = Vec<T>::size();
  const int64_t step = (Hd + n_parts * VS - 1) / (n_parts * VS) * VS;
  const int64_t parts = (Hd + step - 1) / step;
  std::unique_ptr<T[]> partial(new T[parts * P * Co]);  // every element written by a GEMM
  const Tensor d = blob<T>(const_cast<T*>(dp), {P, C}, {C, 1});
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    at::NoGradGuard no_grad;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t h0 = i * step, hc = std::min(Hd, h0 + step) - h0;
      std::unique_ptr<T[]> hbuf(new T[P * hc]);
      Tensor hh = blob<T>(hbuf.get(), {P, hc}, {hc, 1});
      at::mm_out(hh, d, a.w1.narrow(0, h0, hc).t());
      bias_gelu_cols<T>(hbuf.get(), P, hc, b1 ? b1 + h0 : nullptr);
      Tensor y = blob<T>(partial.get() + i * P * Co, {P, Co}, {Co, 1});
      at::mm_out(y, hh, a.w2.narrow(1, h0, hc).t());
    }
  });
  at::parallel_for(0, P, 16, [&](int64_t begin, int64_t end) {
    T* acc = partial.get() + begin * Co;
    const int64_t n = (end - begin) * Co;
    for (int64_t i = 1; i < parts; ++i) {
      const T* add = partial.get() + i * P * Co + begin * Co;
      int64_t k = 0;
      for (; k + VS <= n; k += VS) (Vec<T>::loadu(acc + k) + Vec<T>::loadu(add + k)).store(acc + k);
      for (; k < n; ++k) acc[k] += add[k];
    }
    out_epilogue_pixels<T>(acc, end - begin, Co, b2, ls, res ? res + begin * Co : nullptr,
                           out + begin * Co);
  });
}

// The hidden-split strategy serves pixel-major inputs with at most this many pixels. Against the
// unfused strategy, chains of conv_block calls with distinct weights, fp32, 2 threads: 1.10-1.13x
// at 7x7 batch 1 (C = 220, 224, 384, 512), 1.04x at 7x7 batch 2, 0.96-1.01x at 14x14 batch 1,
// 0.94x at 7x7 batch 4. SWIFTKERN_CPU_CONV_STRATEGY=split forces it on; =nosplit leaves the
// choice between tile and unfused as by default but never splits (A/B benchmarks).
constexpr int64_t kSplitMaxPixels = 128;

template <typename T>
bool use_split(bool cl, int64_t P) {
  if (!cl || !(std::is_same_v<T, float> || std::is_same_v<T, double>)) return false;
  const int64_t nt = at::get_num_threads();
  if (nt < 2) return false;
  const std::string s = env_str("SWIFTKERN_CPU_CONV_STRATEGY");
  if (s == "split") return true;
  if (s == "unfused" || s == "tile" || s == "nosplit") return false;
  return P <= kSplitMaxPixels;
}

// Unfused strategy: d is the whole pointwise input (x's layout, contiguous in it).
template <typename T>
void pointwise_unfused(const Tensor& d, bool cl, const PwArgs& a, const T* res, T* out) {
  const int64_t B = d.size(0), C = d.size(1), HW = d.size(2) * d.size(3);
  const int64_t Hd = a.w1.size(0), Co = a.w2.size(0);
  const T* b1 = ptr_or_null<T>(a.b1);
  const T* b2 = ptr_or_null<T>(a.b2);
  const T* ls = ptr_or_null<T>(a.ls);
  const bool packed = cl && a.p1.defined() && a.p2.defined() && std::is_same_v<T, float>;
  if (use_split<T>(cl, B * HW) && !(packed && env_str("SWIFTKERN_CPU_CONV_STRATEGY") != "split")) {
    pointwise_split<T>(d.data_ptr<T>(), B * HW, C, a, res, out, at::get_num_threads());
    return;
  }
  if (cl) {
    const int64_t P = B * HW;
    Tensor d2 = blob<T>(d.data_ptr<T>(), {P, C}, {C, 1});
    Tensor hh = packed ? packed_linear(d2, a.p1, a.w1) : at::mm(d2, a.w1.t());
    T* hp = hh.data_ptr<T>();
    at::parallel_for(0, P, 16, [&](int64_t begin, int64_t end) {
      bias_gelu_cols<T>(hp + begin * Hd, end - begin, Hd, b1);
    });
    Tensor y = packed ? packed_linear(hh, a.p2, a.w2) : at::mm(hh, a.w2.t());
    const T* yp = y.data_ptr<T>();
    at::parallel_for(0, P, 16, [&](int64_t begin, int64_t end) {
      out_epilogue_pixels<T>(yp + begin * Co, end - begin, Co, b2, ls,
                             res ? res + begin * Co : nullptr, out + begin * Co);
    });
  } else {
    Tensor d3 = blob<T>(d.data_ptr<T>(), {B, C, HW}, {C * HW, HW, 1});
    // One multi-threaded mm per image: at::matmul broadcast the weight into a bmm, which ran
    // 3-4x slower per image than B=1 at C=384, 7x7 (bench ops, 2 threads).
    Tensor hh = at::empty({B, Hd, HW}, d.options());
    for (int64_t b = 0; b < B; ++b) {
      Tensor o = hh[b];
      at::mm_out(o, a.w1, d3[b]);
    }
    T* hp = hh.data_ptr<T>();
    at::parallel_for(0, B * Hd, 4, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) bias_gelu_rows<T>(hp + r * HW, 1, HW, b1 ? b1 + r % Hd : nullptr);
    });
    Tensor y = at::empty({B, Co, HW}, d.options());
    for (int64_t b = 0; b < B; ++b) {
      Tensor o = y[b];
      at::mm_out(o, a.w2, hh[b]);
    }
    const T* yp = y.data_ptr<T>();
    at::parallel_for(0, B * Co, 4, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t c = r % Co;
        out_epilogue_channels<T>(yp + r * HW, 1, HW, b2 ? b2 + c : nullptr, ls ? ls + c : nullptr,
                                 res ? res + r * HW : nullptr, out + r * HW, HW);
      }
    });
  }
}

inline at::MemoryFormat fmt(bool cl) {
  return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// ------------------------------------------------------------------------------------------
// Eval forwards
// ------------------------------------------------------------------------------------------

template <typename T>
Tensor dwconv_bn_impl(const Tensor& x_in, const Tensor& dw_w, const OptTensor& dw_b) {
  const bool cl = is_channels_last(x_in);
  const Tensor x = x_in.contiguous(fmt(cl));
  const std::vector<T> w9 = dw_taps<T>(dw_w, cl);
  const OptTensor b = contig(dw_b);
  Tensor out = at::empty(x.sizes(), x.options().memory_format(fmt(cl)));
  dwconv_full<T>(x, w9.data(), ptr_or_null<T>(b), cl, out);
  return out;
}

// Rows per tile when x (contiguous in its layout) runs the tile strategy with pointwise weights
// w1, w2; 0 when it runs the whole-tensor GEMMs (unfused / split) or is empty.
template <typename T>
int64_t tile_strategy_rows(const Tensor& x, const Tensor& w1, const Tensor& w2, bool cl) {
  if (x.numel() == 0) return 0;
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  const int64_t Rmax = rows_per_tile(H, W, w1.size(0), sizeof(T));
  const int64_t R =
      tile_balance_on() ? balanced_rows(B, H, Rmax, at::get_num_threads()) : Rmax;
  const int64_t n_tiles = B * ((H + R - 1) / R);
  return pick_strategy(n_tiles, (w1.numel() + w2.numel()) * int64_t(sizeof(T)), cl) ==
                 Strategy::kTile
             ? R
             : 0;
}

// S: the storage type of x, the residual and the output; T the arithmetic (S = bf16 / fp16 with
// T = float: the tile strategy converts per tile, the others convert the whole tensors around
// the T kernel). A residual of another dtype than x is converted like x.
template <typename T, typename S = T>
Tensor mlp_impl(const Tensor& x_in, const PwArgs& a, const OptTensor& residual) {
  const bool cl = is_channels_last(x_in);
  const Tensor x = x_in.contiguous(fmt(cl));
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t Co = a.w2.size(0);
  TORCH_CHECK(!has(residual) || residual->sizes() == c10::IntArrayRef({B, Co, H, W}),
              "mlp: residual must have shape ", c10::IntArrayRef({B, Co, H, W}), ", got ",
              has(residual) ? residual->sizes() : c10::IntArrayRef());
  const int64_t R = tile_strategy_rows<T>(x, a.w1, a.w2, cl);
  const bool tiles = R > 0;
  if constexpr (!std::is_same_v<S, T>) {
    if (!tiles || !half_tiles_on() ||
        (has(residual) && residual->scalar_type() != x.scalar_type())) {
      const Tensor xf = x.to(c10::CppTypeToScalarType<T>::value);
      return mlp_impl<T>(xf, a, residual_to_float(residual, x_in, xf)).to(x.scalar_type());
    }
  }
  Tensor out = at::empty({B, Co, H, W}, x.options().memory_format(fmt(cl)));
  Tensor res;
  if (has(residual)) res = residual->contiguous(fmt(cl));
  const S* rp = res.defined() ? res.data_ptr<S>() : nullptr;
  if (out.numel() == 0) return out;
  if (!tiles) {  // (S != T returned above)
    if constexpr (std::is_same_v<S, T>) pointwise_unfused<T>(x, cl, a, rp, out.data_ptr<T>());
    return out;
  }
  const S* xp = x.data_ptr<S>();
  auto produce = [&](int64_t b, int64_t h0, int64_t h1, T* buf) -> std::pair<const T*, int64_t> {
    if constexpr (std::is_same_v<S, T>) {
      (void)h1;
      (void)buf;
      if (cl) return {xp + (b * HW + h0 * W) * C, C};
      return {xp + b * C * HW + h0 * W, HW};
    } else {  // the tile's pixels converted into buf
      const int64_t tn = (h1 - h0) * W;
      if (cl) {
        load_as_float<S>(xp + (b * HW + h0 * W) * C, buf, tn * C);
        return {buf, C};
      }
      for (int64_t c = 0; c < C; ++c)
        load_as_float<S>(xp + (b * C + c) * HW + h0 * W, buf + c * tn, tn);
      return {buf, tn};
    }
  };
  pointwise_tiles<T, S>(produce, cl, B, C, H, W, a, rp, out.data_ptr<S>(), R);
  return out;
}

// S: the storage type of x and the output, T the arithmetic (see mlp_impl).
template <typename T, typename S = T>
Tensor conv_block_impl(const Tensor& x_in, const Tensor& dw_w, const OptTensor& dw_b,
                       const PwArgs& a) {
  const bool cl = is_channels_last(x_in);
  const Tensor x = x_in.contiguous(fmt(cl));
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t R = tile_strategy_rows<T>(x, a.w1, a.w2, cl);
  const bool tiles = R > 0;
  if constexpr (!std::is_same_v<S, T>) {
    if (!tiles || !half_tiles_on())
      return conv_block_impl<T>(x.to(c10::CppTypeToScalarType<T>::value), dw_w, dw_b, a)
          .to(x.scalar_type());
  }
  Tensor out = at::empty(x.sizes(), x.options().memory_format(fmt(cl)));
  if (out.numel() == 0) return out;
  const std::vector<T> w9v = dw_taps<T>(dw_w, cl);
  const OptTensor bt = contig(dw_b);
  const T* w9 = w9v.data();
  const T* bias = ptr_or_null<T>(bt);
  if (!tiles) {  // (S != T returned above)
    if constexpr (std::is_same_v<S, T>) {
      Tensor d = at::empty(x.sizes(), x.options().memory_format(fmt(cl)));
      dwconv_full<T>(x, w9, bias, cl, d);
      pointwise_unfused<T>(d, cl, a, x.data_ptr<T>(), out.data_ptr<T>());
    }
    return out;
  }
  const S* xp = x.data_ptr<S>();
  auto produce = [&](int64_t b, int64_t h0, int64_t h1, T* buf) -> std::pair<const T*, int64_t> {
    const int64_t tn = (h1 - h0) * W;
    if constexpr (std::is_same_v<S, T>) {
      if (cl) {
        dw_rows_nhwc<T>(xp + b * HW * C, w9, bias, H, W, C, h0, h1, buf, C);
        return {buf, C};
      }
      for (int64_t c = 0; c < C; ++c)
        dw_rows_plane<T>(xp + (b * C + c) * HW, w9 + c * 9, bias ? bias[c] : T(0), H, W, h0, h1,
                         buf + c * tn);
      return {buf, tn};
    } else {  // the tile's input rows and their halo converted to T first (in cache)
      const int64_t lo = std::max<int64_t>(h0 - 1, 0), hi = std::min<int64_t>(h1 + 1, H);
      if (cl) {
        std::unique_ptr<T[]> xs(new T[(hi - lo) * W * C]);
        load_as_float<S>(xp + (b * HW + lo * W) * C, xs.get(), (hi - lo) * W * C);
        dw_rows_nhwc<T>(xs.get(), w9, bias, H, W, C, h0, h1, buf, C, lo);
        return {buf, C};
      }
      std::unique_ptr<T[]> xs(new T[(hi - lo) * W]);
      for (int64_t c = 0; c < C; ++c) {
        load_as_float<S>(xp + (b * C + c) * HW + lo * W, xs.get(), (hi - lo) * W);
        dw_rows_plane<T>(xs.get(), w9 + c * 9, bias ? bias[c] : T(0), H, W, h0, h1, buf + c * tn,
                         lo);
      }
      return {buf, tn};
    }
  };
  pointwise_tiles<T, S>(produce, cl, B, C, H, W, a, xp, out.data_ptr<S>(), R);
  return out;
}

PwArgs pw_args(const Tensor& w1, const OptTensor& b1, const Tensor& w2, const OptTensor& b2,
               const OptTensor& ls) {
  return PwArgs{w1.contiguous(), w2.contiguous(), contig(b1), contig(b2), contig(ls)};
}

// ------------------------------------------------------------------------------------------
// Backward (eval forms). Computed pixel-major ([P = B*H*W, C], channels_last memory): the
// forward is recomputed per call (u = W1 d + b1 and, when ls needs a gradient, y2), GEMMs through
// ATen, GELU and GELU' in one fused pass, dwconv backward as a vectorized NHWC stencil.
// ------------------------------------------------------------------------------------------

inline Tensor empty_grad(const Tensor& g) { return g.new_empty({0}); }

// [B, C, H, W] channels_last-contiguous tensor viewed as the [P, C] matrix it stores.
inline Tensor as_pixels(const Tensor& t4) {
  return t4.permute({0, 2, 3, 1}).reshape({-1, t4.size(1)});
}
// [P, C] contiguous matrix viewed as a channels_last [B, C, H, W] tensor.
inline Tensor from_pixels(const Tensor& m, int64_t B, int64_t H, int64_t W) {
  return m.view({B, H, W, m.size(1)}).permute({0, 3, 1, 2});
}

struct PwGrads {
  Tensor gin, gw1, gb1, gw2, gb2, gls;
};

// d: [P, C] input of pw1; g: [P, Co] gradient of the block output (before the residual).
template <typename T>
PwGrads pw_backward(const Tensor& d, const Tensor& g, const PwArgs& a, bool need_in, bool need_w1,
                    bool need_b1, bool need_w2, bool need_b2, bool need_ls) {
  PwGrads r;
  const int64_t P = d.size(0), Hd = a.w1.size(0);
  Tensor u = has(a.b1) ? at::addmm(*a.b1, d, a.w1.t()) : at::mm(d, a.w1.t());
  if (!u.is_contiguous()) u = u.contiguous();
  Tensor h = at::empty_like(u);
  T* up = u.data_ptr<T>();
  T* hp = h.data_ptr<T>();
  constexpr int64_t VS = Vec<T>::size();
  at::parallel_for(0, P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin * Hd; i < end * Hd; i += VS) {
      const int n = static_cast<int>(std::min<int64_t>(VS, end * Hd - i));
      const Vec<T> v = Vec<T>::loadu(up + i, n);
      gelu_vec<T>(v).store(hp + i, n);
      gelu_grad_vec<T>(v).store(up + i, n);  // u now holds GELU'(u)
    }
  });
  if (need_ls) {
    Tensor y2 = has(a.b2) ? at::addmm(*a.b2, h, a.w2.t()) : at::mm(h, a.w2.t());
    r.gls = (g * y2).sum(0);
  }
  const Tensor gy2 = has(a.ls) ? g * *a.ls : g;
  if (need_b2) r.gb2 = gy2.sum(0);
  if (need_w2) r.gw2 = at::mm(gy2.t(), h);
  if (need_in || need_w1 || need_b1) {
    Tensor gu = at::mm(gy2, a.w2);
    gu.mul_(u);
    if (need_b1) r.gb1 = gu.sum(0);
    if (need_w1) r.gw1 = at::mm(gu.t(), d);
    if (need_in) r.gin = at::mm(gu, a.w1);
  }
  return r;
}

// Gradients of d = dwconv(x) + b given gd (channels_last [B, C, H, W] contiguous) and x (same).
template <typename T>
void dw_backward(const Tensor& x, const Tensor& gd, const Tensor& dw_w, bool need_x, bool need_w,
                 bool need_b, Tensor& gx, Tensor& gw, Tensor& gb) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  if (need_x) {
    // gx = correlation of gd with the 180-degree rotated kernel
    const std::vector<T> w9f = dw_taps<T>(dw_w, /*cl=*/true, /*flip=*/true);
    gx = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
    dwconv_full<T>(gd, w9f.data(), nullptr, true, gx);
  }
  if (need_b) gb = as_pixels(gd).sum(0);
  if (need_w) {
    const int nt = at::get_num_threads();
    std::vector<T> acc(static_cast<size_t>(nt) * 9 * C, T(0));
    const T* xp = x.data_ptr<T>();
    const T* gp = gd.data_ptr<T>();
    constexpr int64_t VS = Vec<T>::size();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      T* ac = acc.data() + static_cast<size_t>(at::get_thread_num()) * 9 * C;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / H, h = i % H;
        const T* xb = xp + b * HW * C;
        for (int64_t w = 0; w < W; ++w) {
          const T* g = gp + (b * HW + h * W + w) * C;
          for (int64_t dh = -1; dh <= 1; ++dh) {
            if (h + dh < 0 || h + dh >= H) continue;
            for (int64_t dw = -1; dw <= 1; ++dw) {
              if (w + dw < 0 || w + dw >= W) continue;
              const T* xs = xb + ((h + dh) * W + (w + dw)) * C;
              T* at_ = ac + ((dh + 1) * 3 + (dw + 1)) * C;
              for (int64_t c = 0; c < C; c += VS) {
                const int n = static_cast<int>(std::min<int64_t>(VS, C - c));
                at::vec::fmadd(Vec<T>::loadu(g + c, n), Vec<T>::loadu(xs + c, n),
                               Vec<T>::loadu(at_ + c, n))
                    .store(at_ + c, n);
              }
            }
          }
        }
      }
    });
    Tensor tot = at::zeros({9, C}, x.options().memory_format(at::MemoryFormat::Contiguous));
    T* tp = tot.data_ptr<T>();
    for (int t = 0; t < nt; ++t)
      for (int64_t j = 0; j < 9 * C; ++j) tp[j] += acc[static_cast<size_t>(t) * 9 * C + j];
    gw = tot.t().reshape({C, 1, 3, 3}).contiguous();
  }
}

inline at::MemoryFormat kCL() { return at::MemoryFormat::ChannelsLast; }

template <typename T>
std::vector<Tensor> dwconv_bn_backward_impl(const Tensor& grad, const Tensor& x_in,
                                            const Tensor& dw_w, const OptTensor& dw_b,
                                            const std::vector<bool>& mask) {
  const Tensor x = x_in.contiguous(kCL());
  const Tensor g = grad.contiguous(kCL());
  Tensor gx, gw, gb;
  dw_backward<T>(x, g, dw_w, mask[0], mask[1], mask[2] && has(dw_b), gx, gw, gb);
  return {gx.defined() ? gx : empty_grad(grad), gw.defined() ? gw : empty_grad(grad),
          gb.defined() ? gb : empty_grad(grad)};
}

template <typename T>
std::vector<Tensor> mlp_backward_impl(const Tensor& grad, const Tensor& x_in, const PwArgs& a,
                                      const OptTensor& residual, const std::vector<bool>& mask,
                                      int64_t mask_off, const OptTensor& b1o, const OptTensor& b2o,
                                      const OptTensor& lso) {
  // mask order (mlp): x, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual
  const int64_t B = x_in.size(0), H = x_in.size(2), W = x_in.size(3);
  const Tensor x = x_in.contiguous(kCL());
  const Tensor g = grad.contiguous(kCL());
  PwGrads r = pw_backward<T>(as_pixels(x), as_pixels(g), a, mask[0], mask[1], mask[2] && has(b1o),
                             mask[3], mask[4] && has(b2o), mask[5] && has(lso));
  std::vector<Tensor> out;
  out.push_back(r.gin.defined() ? from_pixels(r.gin, B, H, W) : empty_grad(grad));
  out.push_back(r.gw1.defined() ? r.gw1 : empty_grad(grad));
  out.push_back(r.gb1.defined() ? r.gb1 : empty_grad(grad));
  out.push_back(r.gw2.defined() ? r.gw2 : empty_grad(grad));
  out.push_back(r.gb2.defined() ? r.gb2 : empty_grad(grad));
  out.push_back(r.gls.defined() ? r.gls : empty_grad(grad));
  (void)mask_off;
  out.push_back(has(residual) && mask[6] ? grad.clone() : empty_grad(grad));
  return out;
}

template <typename T>
std::vector<Tensor> conv_block_backward_impl(const Tensor& grad, const Tensor& x_in,
                                             const Tensor& dw_w, const OptTensor& dw_b,
                                             const PwArgs& a, const std::vector<bool>& mask) {
  // mask order: x, dw_w, dw_b, pw1_w, pw1_b, pw2_w, pw2_b, ls
  const Tensor x = x_in.contiguous(kCL());
  const Tensor g = grad.contiguous(kCL());
  Tensor d = at::empty(x.sizes(), x.options().memory_format(kCL()));
  const std::vector<T> w9 = dw_taps<T>(dw_w, true);
  const OptTensor bt = contig(dw_b);
  dwconv_full<T>(x, w9.data(), ptr_or_null<T>(bt), true, d);
  const bool need_dw = mask[0] || mask[1] || (mask[2] && has(dw_b));
  PwGrads r = pw_backward<T>(as_pixels(d), as_pixels(g), a, need_dw, mask[3],
                             mask[4] && has(a.b1), mask[5], mask[6] && has(a.b2),
                             mask[7] && has(a.ls));
  Tensor gx, gw, gb;
  if (need_dw) {
    const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
    const Tensor gd = from_pixels(r.gin, B, H, W);
    dw_backward<T>(x, gd, dw_w, mask[0], mask[1], mask[2] && has(dw_b), gx, gw, gb);
    if (gx.defined()) gx.add_(g);
  }
  auto or_empty = [&](const Tensor& t) { return t.defined() ? t : empty_grad(grad); };
  return {or_empty(gx),    or_empty(gw),    or_empty(gb),    or_empty(r.gw1),
          or_empty(r.gb1), or_empty(r.gw2), or_empty(r.gb2), or_empty(r.gls)};
}

// ------------------------------------------------------------------------------------------
// Train forms: BN with batch statistics (biased variance), returned as (y, mean, var). The
// statistics are exact per call; the normalization is then folded into the neighbouring layer so
// the fused eval kernels do the rest (conv_block: into the dwconv, recomputed per tile; mlp: into
// fc1). Backward: pointwise backward as in eval, then BN's batch-statistics backward.
// ------------------------------------------------------------------------------------------

struct BnFold {
  Tensor mean, var, scale, shift;  // [C]; y = z * scale + shift
};

// Biased batch variance and mean over `dims` (channel dim 1). For an empty batch both are NaN,
// as the mean of nothing is, without var_mean's "degrees of freedom <= 0" warning (nn.BatchNorm2d
// gives none; the running statistics are left alone by the caller).
inline std::tuple<Tensor, Tensor> batch_var_mean(const Tensor& z, at::IntArrayRef dims) {
  if (z.numel() == 0) {
    Tensor nan = at::full({z.size(1)}, std::numeric_limits<double>::quiet_NaN(), z.options());
    return {nan, nan.clone()};
  }
  return at::var_mean(z, dims, /*correction=*/0, /*keepdim=*/false);
}

inline BnFold bn_fold(const Tensor& z, const OptTensor& bn_w, const OptTensor& bn_b, double eps) {
  auto [var, mean] = batch_var_mean(z, {0, 2, 3});
  Tensor scale = at::rsqrt(var + eps);
  if (has(bn_w)) scale = scale * *bn_w;
  Tensor shift = -mean * scale;
  if (has(bn_b)) shift = shift + *bn_b;
  return {mean, var, scale.contiguous(), shift.contiguous()};
}

template <typename T>
Tensor dwconv_raw(const Tensor& x, const Tensor& dw_w, const OptTensor& dw_b, bool cl) {
  Tensor z = at::empty(x.sizes(), x.options().memory_format(fmt(cl)));
  const std::vector<T> w9 = dw_taps<T>(dw_w, cl);
  const OptTensor b = contig(dw_b);
  dwconv_full<T>(x, w9.data(), ptr_or_null<T>(b), cl, z);
  return z;
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor> dwconv_bn_train_impl(const Tensor& x_in, const Tensor& dw_w,
                                                        const OptTensor& dw_b,
                                                        const OptTensor& bn_w,
                                                        const OptTensor& bn_b, double eps) {
  const bool cl = is_channels_last(x_in);
  const Tensor x = x_in.contiguous(fmt(cl));
  Tensor z = dwconv_raw<T>(x, dw_w, dw_b, cl);
  BnFold f = bn_fold(z, bn_w, bn_b, eps);
  const int64_t C = x.size(1);
  z.mul_(f.scale.view({1, C, 1, 1})).add_(f.shift.view({1, C, 1, 1}));
  return {z, f.mean, f.var};
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor> conv_block_train_impl(const Tensor& x_in, const Tensor& dw_w,
                                                         const OptTensor& dw_b,
                                                         const OptTensor& bn_w,
                                                         const OptTensor& bn_b, double eps,
                                                         const PwArgs& a) {
  const bool cl = is_channels_last(x_in);
  const Tensor x = x_in.contiguous(fmt(cl));
  BnFold f = bn_fold(dwconv_raw<T>(x, dw_w, dw_b, cl), bn_w, bn_b, eps);
  const int64_t C = x.size(1);
  const Tensor w_f = dw_w * f.scale.view({C, 1, 1, 1});
  Tensor b_f = has(dw_b) ? (*dw_b * f.scale + f.shift) : f.shift;
  return {conv_block_impl<T>(x, w_f, OptTensor(b_f), a), f.mean, f.var};
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor> mlp_train_impl(const Tensor& x_in, const OptTensor& bn_w,
                                                  const OptTensor& bn_b, double eps,
                                                  const PwArgs& a, const OptTensor& residual) {
  BnFold f = bn_fold(x_in, bn_w, bn_b, eps);
  // fc1(z * s + t) = (W1 diag(s)) z + (W1 t + b1)
  const Tensor w1f = (a.w1 * f.scale.unsqueeze(0)).contiguous();
  Tensor b1f = at::mv(a.w1, f.shift);
  if (has(a.b1)) b1f = b1f + *a.b1;
  PwArgs af{w1f, a.w2, OptTensor(b1f.contiguous()), a.b2, a.ls};
  return {mlp_impl<T>(x_in, af, residual), f.mean, f.var};
}

// BN (batch statistics) backward on pixel-major z [P, C]; gy: gradient of the BN output.
struct BnGrads {
  Tensor gz, gw, gb;
};
inline BnGrads bn_train_backward(const Tensor& z, const Tensor& gy, const OptTensor& bn_w,
                                 double eps, bool need_z, bool need_w, bool need_b) {
  BnGrads r;
  auto [var, mean] = batch_var_mean(z, {0});
  const Tensor rstd = at::rsqrt(var + eps);
  const Tensor xhat = (z - mean) * rstd;
  if (need_b) r.gb = gy.sum(0);
  if (need_w) r.gw = (gy * xhat).sum(0);
  if (need_z) {
    const Tensor gx = has(bn_w) ? gy * *bn_w : gy;
    r.gz = (gx - gx.mean(0) - xhat * (gx * xhat).mean(0)) * rstd;
  }
  return r;
}

template <typename T>
std::vector<Tensor> dwconv_bn_train_backward_impl(const Tensor& grad, const Tensor& x_in,
                                                  const Tensor& dw_w, const OptTensor& dw_b,
                                                  const OptTensor& bn_w, const OptTensor& bn_b,
                                                  double eps, const std::vector<bool>& mask) {
  // mask: x, dw_w, dw_b, bn_weight, bn_bias
  const Tensor x = x_in.contiguous(kCL());
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  const Tensor z = dwconv_raw<T>(x, dw_w, dw_b, true);
  const bool need_dw = mask[0] || mask[1] || (mask[2] && has(dw_b));
  BnGrads bg = bn_train_backward(as_pixels(z), as_pixels(grad.contiguous(kCL())), bn_w, eps,
                                 need_dw, mask[3] && has(bn_w), mask[4] && has(bn_b));
  Tensor gx, gw, gb;
  if (need_dw) {
    const Tensor gz = from_pixels(bg.gz.contiguous(), B, H, W);
    dw_backward<T>(x, gz, dw_w, mask[0], mask[1], mask[2] && has(dw_b), gx, gw, gb);
  }
  auto or_empty = [&](const Tensor& t) { return t.defined() ? t : empty_grad(grad); };
  return {or_empty(gx), or_empty(gw), or_empty(gb), or_empty(bg.gw), or_empty(bg.gb)};
}

template <typename T>
std::vector<Tensor> conv_block_train_backward_impl(const Tensor& grad, const Tensor& x_in,
                                                   const Tensor& dw_w, const OptTensor& dw_b,
                                                   const OptTensor& bn_w, const OptTensor& bn_b,
                                                   double eps, const PwArgs& a,
                                                   const std::vector<bool>& mask) {
  // mask: x, dw_w, dw_b, bn_weight, bn_bias, pw1_w, pw1_b, pw2_w, pw2_b, ls
  const Tensor x = x_in.contiguous(kCL());
  const Tensor g = grad.contiguous(kCL());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const Tensor z = dwconv_raw<T>(x, dw_w, dw_b, true);
  const Tensor zp = as_pixels(z);
  BnFold f = bn_fold(z, bn_w, bn_b, eps);
  const Tensor y = (zp * f.scale + f.shift).contiguous();  // BN output [P, C]
  const bool need_dw = mask[0] || mask[1] || (mask[2] && has(dw_b));
  const bool need_bn_in = need_dw || (mask[3] && has(bn_w)) || (mask[4] && has(bn_b));
  PwGrads r = pw_backward<T>(y, as_pixels(g), a, need_bn_in, mask[5], mask[6] && has(a.b1),
                             mask[7], mask[8] && has(a.b2), mask[9] && has(a.ls));
  BnGrads bg;
  Tensor gx, gw, gb;
  if (need_bn_in) {
    bg = bn_train_backward(zp, r.gin, bn_w, eps, need_dw, mask[3] && has(bn_w),
                           mask[4] && has(bn_b));
    if (need_dw) {
      const Tensor gz = from_pixels(bg.gz.contiguous(), B, H, W);
      dw_backward<T>(x, gz, dw_w, mask[0], mask[1], mask[2] && has(dw_b), gx, gw, gb);
      if (gx.defined()) gx.add_(g);
    }
  }
  (void)C;
  auto or_empty = [&](const Tensor& t) { return t.defined() ? t : empty_grad(grad); };
  return {or_empty(gx),    or_empty(gw),    or_empty(gb),    or_empty(bg.gw), or_empty(bg.gb),
          or_empty(r.gw1), or_empty(r.gb1), or_empty(r.gw2), or_empty(r.gb2), or_empty(r.gls)};
}

template <typename T>
std::vector<Tensor> mlp_train_backward_impl(const Tensor& grad, const Tensor& x_in,
                                            const OptTensor& bn_w, const OptTensor& bn_b,
                                            double eps, const PwArgs& a,
                                            const OptTensor& residual,
                                            const std::vector<bool>& mask) {
  // mask: x, bn_weight, bn_bias, fc1_w, fc1_b, fc2_w, fc2_b, ls, residual
  const Tensor x = x_in.contiguous(kCL());
  const Tensor g = grad.contiguous(kCL());
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  const Tensor xp = as_pixels(x);
  BnFold f = bn_fold(x, bn_w, bn_b, eps);
  const Tensor y = (xp * f.scale + f.shift).contiguous();
  const bool need_in = mask[0] || (mask[1] && has(bn_w)) || (mask[2] && has(bn_b));
  PwGrads r = pw_backward<T>(y, as_pixels(g), a, need_in, mask[3], mask[4] && has(a.b1), mask[5],
                             mask[6] && has(a.b2), mask[7] && has(a.ls));
  BnGrads bg;
  if (need_in)
    bg = bn_train_backward(xp, r.gin, bn_w, eps, mask[0], mask[1] && has(bn_w),
                           mask[2] && has(bn_b));
  auto or_empty = [&](const Tensor& t) { return t.defined() ? t : empty_grad(grad); };
  Tensor gx = bg.gz.defined() ? from_pixels(bg.gz.contiguous(), B, H, W) : Tensor();
  return {or_empty(gx),    or_empty(bg.gw), or_empty(bg.gb), or_empty(r.gw1), or_empty(r.gb1),
          or_empty(r.gw2), or_empty(r.gb2), or_empty(r.gls),
          has(residual) && mask[8] ? grad.clone() : empty_grad(grad)};
}

// ------------------------------------------------------------------------------------------
// Argument shapes, checked at every op entry: the kernels index raw pointers, so a parameter of
// the wrong size would be read past its end. (The Python ops validate too; the swiftkern_C
// schemas are also callable on their own, from C++ or torch.ops.swiftkern_C.)
// ------------------------------------------------------------------------------------------

void check_x(const char* op, const Tensor& x) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D [B, C, H, W], got ", x.sizes());
}

// The train forms' BatchNorm affine parameters: C values each, when given.
void check_bn(const char* op, const Tensor& x, const OptTensor& bn_w, const OptTensor& bn_b) {
  check_numel(op, "bn_weight", bn_w, x.size(1));
  check_numel(op, "bn_bias", bn_b, x.size(1));
}

void check_dw(const char* op, const Tensor& x, const Tensor& dw_w, const OptTensor& dw_b,
              const OptTensor& bn_w = std::nullopt, const OptTensor& bn_b = std::nullopt) {
  check_x(op, x);
  const int64_t C = x.size(1);
  TORCH_CHECK(dw_w.numel() == 9 * C, op, ": dw_w must be [", C, ", 1, 3, 3], got ",
              dw_w.sizes());
  check_numel(op, "dw_b", dw_b, C);
  check_bn(op, x, bn_w, bn_b);
}

// out_is_x: the output is added to x (conv_block), so it has x's channels.
void check_pw(const char* op, const Tensor& x, const Tensor& w1, const OptTensor& b1,
              const Tensor& w2, const OptTensor& b2, const OptTensor& ls, bool out_is_x) {
  check_x(op, x);
  const int64_t C = x.size(1);
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == C, op,
              ": the first pointwise weight must be [hidden, ", C, "], got ", w1.sizes());
  const int64_t Hd = w1.size(0);
  TORCH_CHECK(w2.dim() == 2 && w2.size(1) == Hd, op,
              ": the second pointwise weight must be [C_out, ", Hd, "], got ", w2.sizes());
  const int64_t Co = w2.size(0);
  TORCH_CHECK(!out_is_x || Co == C, op, ": the second pointwise weight must have ", C,
              " output channels (the residual is x), got ", Co);
  check_numel(op, "the first pointwise bias", b1, Hd);
  check_numel(op, "the second pointwise bias", b2, Co);
  check_numel(op, "ls", ls, Co);
}

// grad has the forward output's shape: x's, with the second weight's channels when w2 is given.
void check_grad(const char* op, const Tensor& grad, const Tensor& x, const Tensor* w2 = nullptr) {
  const int64_t Co = w2 ? w2->size(0) : x.size(1);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == x.size(0) && grad.size(1) == Co &&
                  grad.size(2) == x.size(2) && grad.size(3) == x.size(3),
              op, ": grad must be [", x.size(0), ", ", Co, ", ", x.size(2), ", ", x.size(3),
              "], got ", grad.sizes());
}

// ------------------------------------------------------------------------------------------
// Op entry points (dtype routing)
// ------------------------------------------------------------------------------------------

Tensor dwconv_bn(const Tensor& x, const Tensor& dw_w, const OptTensor& dw_b) {
  check_dw("dwconv_bn", x, dw_w, dw_b);
  switch (route_dtype(x, "dwconv_bn")) {
    case DtypeRoute::kFloat:
      return dwconv_bn_impl<float>(x, dw_w, dw_b);
    case DtypeRoute::kDouble:
      return dwconv_bn_impl<double>(x, dw_w, dw_b);
    default:
      return dwconv_bn_impl<float>(to_float(x), to_float(dw_w), to_float(dw_b)).to(x.scalar_type());
  }
}

Tensor conv_block(const Tensor& x, const Tensor& dw_w, const OptTensor& dw_b, const Tensor& pw1_w,
                  const OptTensor& pw1_b, const Tensor& pw2_w, const OptTensor& pw2_b,
                  const OptTensor& ls) {
  check_dw("conv_block", x, dw_w, dw_b);
  check_pw("conv_block", x, pw1_w, pw1_b, pw2_w, pw2_b, ls, true);
  switch (route_dtype(x, "conv_block")) {
    case DtypeRoute::kFloat:
      return conv_block_impl<float>(x, dw_w, dw_b, pw_args(pw1_w, pw1_b, pw2_w, pw2_b, ls));
    case DtypeRoute::kDouble:
      return conv_block_impl<double>(x, dw_w, dw_b, pw_args(pw1_w, pw1_b, pw2_w, pw2_b, ls));
    default: {  // bf16 / fp16 x, fp32 arithmetic
      const PwArgs a = pw_args(to_float(pw1_w), to_float(pw1_b), to_float(pw2_w),
                               to_float(pw2_b), to_float(ls));
      if (x.scalar_type() == at::kBFloat16)
        return conv_block_impl<float, c10::BFloat16>(x, to_float(dw_w), to_float(dw_b), a);
      return conv_block_impl<float, c10::Half>(x, to_float(dw_w), to_float(dw_b), a);
    }
  }
}

Tensor mlp(const Tensor& x, const Tensor& fc1_w, const OptTensor& fc1_b, const Tensor& fc2_w,
           const OptTensor& fc2_b, const OptTensor& ls, const OptTensor& residual) {
  check_pw("mlp", x, fc1_w, fc1_b, fc2_w, fc2_b, ls, false);
  switch (route_dtype(x, "mlp")) {
    case DtypeRoute::kFloat:
      return mlp_impl<float>(x, pw_args(fc1_w, fc1_b, fc2_w, fc2_b, ls), residual);
    case DtypeRoute::kDouble:
      return mlp_impl<double>(x, pw_args(fc1_w, fc1_b, fc2_w, fc2_b, ls), residual);
    default: {  // bf16 / fp16 x, fp32 arithmetic
      const PwArgs a = pw_args(to_float(fc1_w), to_float(fc1_b), to_float(fc2_w),
                               to_float(fc2_b), to_float(ls));
      if (x.scalar_type() == at::kBFloat16) return mlp_impl<float, c10::BFloat16>(x, a, residual);
      return mlp_impl<float, c10::Half>(x, a, residual);
    }
  }
}


// Whether the eval forward of conv_block / mlp on x runs the whole-tensor pointwise GEMMs
// (unfused or hidden-split strategy) on pixel-major fp32 data with weights large enough for
// MKL's packed sgemm to pay: the calls the *_packed ops serve. Callers ask once per input shape
// and pack for P = B*H*W rows. Against the unpacked kernels (interleaved per call, 2 threads,
// batch 1): 1.03-1.13x at C = 112-192 (14x14), 1.14-1.20x at C = 320 (14x14), 1.28-1.83x at
// C = 220-512 (7x7, where they replace the hidden-split strategy); 1.05-1.13x at batch 8 for
// C = 320-512. At C = 56 (28x28, a 50 KB pw1 weight) 0.96x: not packed below 128 KiB.
// bf16 / fp16 x count as fp32: their kernels compute in fp32 (given fp32 weights, see below).
bool pointwise_packable(const Tensor& x, const Tensor& w1, const Tensor& w2) {
  check_pw("pointwise_packable", x, w1, std::nullopt, w2, std::nullopt, std::nullopt, false);
  if (!computed_in_fp32(x.scalar_type()) || !is_channels_last(x) || x.numel() == 0) return false;
  if (w1.numel() * int64_t(sizeof(float)) < (128 << 10)) return false;
  return tile_strategy_rows<float>(x, w1, w2, /*cl=*/true) == 0;
}

int64_t pointwise_tile_rows(const Tensor& x, const Tensor& w1, const Tensor& w2) {
  check_pw("pointwise_tile_rows", x, w1, std::nullopt, w2, std::nullopt, std::nullopt, false);
  TORCH_CHECK(x.scalar_type() == at::kFloat, "pointwise_tile_rows: fp32 x, got ",
              x.scalar_type());
  return tile_strategy_rows<float>(x, w1, w2, is_channels_last(x));
}

PwArgs with_packed(PwArgs a, const Tensor& p1, const Tensor& p2) {
  a.p1 = p1;
  a.p2 = p2;
  return a;
}

// fp32 weights (those MKL packed); x fp32, or bf16 / fp16 computed in fp32 between conversions
// (the dtype route of the plain ops, with the parameters already fp32).
inline bool packed_dtypes_ok(const Tensor& x, const Tensor& w) {
  return w.scalar_type() == at::kFloat && computed_in_fp32(x.scalar_type());
}

Tensor conv_block_packed(const Tensor& x, const Tensor& dw_w, const OptTensor& dw_b,
                         const Tensor& pw1_w, const OptTensor& pw1_b, const Tensor& pw2_w,
                         const OptTensor& pw2_b, const OptTensor& ls, const Tensor& pw1_packed,
                         const Tensor& pw2_packed) {
  check_dw("conv_block_packed", x, dw_w, dw_b);
  check_pw("conv_block_packed", x, pw1_w, pw1_b, pw2_w, pw2_b, ls, true);
  TORCH_CHECK_NOT_IMPLEMENTED(packed_dtypes_ok(x, pw1_w),
                              "swiftkern cpu conv_block_packed: fp32 weights, fp32/bf16/fp16 x");
  return conv_block_impl<float>(to_float(x), to_float(dw_w), to_float(dw_b),
                                with_packed(pw_args(pw1_w, to_float(pw1_b), pw2_w,
                                                    to_float(pw2_b), to_float(ls)),
                                            pw1_packed, pw2_packed))
      .to(x.scalar_type());
}

Tensor mlp_packed(const Tensor& x, const Tensor& fc1_w, const OptTensor& fc1_b,
                  const Tensor& fc2_w, const OptTensor& fc2_b, const OptTensor& ls,
                  const OptTensor& residual, const Tensor& fc1_packed, const Tensor& fc2_packed) {
  check_pw("mlp_packed", x, fc1_w, fc1_b, fc2_w, fc2_b, ls, false);
  TORCH_CHECK_NOT_IMPLEMENTED(packed_dtypes_ok(x, fc1_w),
                              "swiftkern cpu mlp_packed: fp32 weights, fp32/bf16/fp16 x");
  const Tensor xf = to_float(x);
  return mlp_impl<float>(xf,
                         with_packed(pw_args(fc1_w, to_float(fc1_b), fc2_w, to_float(fc2_b),
                                             to_float(ls)),
                                     fc1_packed, fc2_packed),
                         residual_to_float(residual, x, xf))
      .to(x.scalar_type());
}

std::vector<Tensor> dwconv_bn_backward(const Tensor& grad, const Tensor& x, const Tensor& dw_w,
                                       const OptTensor& dw_b, const c10::List<bool>& mask_list) {
  check_dw("dwconv_bn_backward", x, dw_w, dw_b);
  check_grad("dwconv_bn_backward", grad, x);
  const std::vector<bool> mask = mask_list.vec();
  switch (route_dtype(x, "dwconv_bn_backward")) {
    case DtypeRoute::kFloat:
      return dwconv_bn_backward_impl<float>(grad, x, dw_w, dw_b, mask);
    case DtypeRoute::kDouble:
      return dwconv_bn_backward_impl<double>(grad, x, dw_w, dw_b, mask);
    default: {
      auto r = dwconv_bn_backward_impl<float>(to_float(grad), to_float(x), to_float(dw_w),
                                              to_float(dw_b), mask);
      for (auto& t : r) t = t.to(x.scalar_type());
      return r;
    }
  }
}

std::vector<Tensor> conv_block_backward(const Tensor& grad, const Tensor& x, const Tensor& dw_w,
                                        const OptTensor& dw_b, const Tensor& pw1_w,
                                        const OptTensor& pw1_b, const Tensor& pw2_w,
                                        const OptTensor& pw2_b, const OptTensor& ls,
                                        const c10::List<bool>& mask_list) {
  check_dw("conv_block_backward", x, dw_w, dw_b);
  check_pw("conv_block_backward", x, pw1_w, pw1_b, pw2_w, pw2_b, ls, true);
  check_grad("conv_block_backward", grad, x);
  const std::vector<bool> mask = mask_list.vec();
  TORCH_CHECK(mask.size() == 8, "conv_block_backward: grad_mask must have 8 entries");
  switch (route_dtype(x, "conv_block_backward")) {
    case DtypeRoute::kFloat:
      return conv_block_backward_impl<float>(grad, x, dw_w, dw_b,
                                             pw_args(pw1_w, pw1_b, pw2_w, pw2_b, ls), mask);
    case DtypeRoute::kDouble:
      return conv_block_backward_impl<double>(grad, x, dw_w, dw_b,
                                              pw_args(pw1_w, pw1_b, pw2_w, pw2_b, ls), mask);
    default: {
      auto r = conv_block_backward_impl<float>(
          to_float(grad), to_float(x), to_float(dw_w), to_float(dw_b),
          pw_args(to_float(pw1_w), to_float(pw1_b), to_float(pw2_w), to_float(pw2_b),
                  to_float(ls)),
          mask);
      for (auto& t : r) t = t.to(x.scalar_type());
      return r;
    }
  }
}

std::vector<Tensor> mlp_backward(const Tensor& grad, const Tensor& x, const Tensor& fc1_w,
                                 const OptTensor& fc1_b, const Tensor& fc2_w,
                                 const OptTensor& fc2_b, const OptTensor& ls,
                                 const OptTensor& residual, const c10::List<bool>& mask_list) {
  check_pw("mlp_backward", x, fc1_w, fc1_b, fc2_w, fc2_b, ls, false);
  check_grad("mlp_backward", grad, x, &fc2_w);
  const std::vector<bool> mask = mask_list.vec();
  TORCH_CHECK(mask.size() == 7, "mlp_backward: grad_mask must have 7 entries");
  switch (route_dtype(x, "mlp_backward")) {
    case DtypeRoute::kFloat:
      return mlp_backward_impl<float>(grad, x, pw_args(fc1_w, fc1_b, fc2_w, fc2_b, ls), residual,
                                      mask, 0, fc1_b, fc2_b, ls);
    case DtypeRoute::kDouble:
      return mlp_backward_impl<double>(grad, x, pw_args(fc1_w, fc1_b, fc2_w, fc2_b, ls), residual,
                                       mask, 0, fc1_b, fc2_b, ls);
    default: {
      const Tensor xf = to_float(x);
      auto r = mlp_backward_impl<float>(
          to_float(grad), xf,
          pw_args(to_float(fc1_w), to_float(fc1_b), to_float(fc2_w), to_float(fc2_b),
                  to_float(ls)),
          residual_to_float(residual, x, xf), mask, 0, fc1_b, fc2_b, ls);
      for (auto& t : r) t = t.to(x.scalar_type());
      return r;
    }
  }
}


// bf16 route for the train forms and their backwards: fp32 compute, outputs cast back.
template <typename Tuple>
Tuple cast_tuple(Tuple t, at::ScalarType st) {
  std::get<0>(t) = std::get<0>(t).to(st);
  std::get<1>(t) = std::get<1>(t).to(st);
  std::get<2>(t) = std::get<2>(t).to(st);
  return t;
}
inline std::vector<Tensor> cast_all(std::vector<Tensor> v, at::ScalarType st) {
  for (auto& t : v) t = t.to(st);
  return v;
}

std::tuple<Tensor, Tensor, Tensor> dwconv_bn_train(const Tensor& x, const Tensor& dw_w,
                                                   const OptTensor& dw_b, const OptTensor& bn_w,
                                                   const OptTensor& bn_b, double eps) {
  check_dw("dwconv_bn_train", x, dw_w, dw_b, bn_w, bn_b);
  switch (route_dtype(x, "dwconv_bn_train")) {
    case DtypeRoute::kFloat:
      return dwconv_bn_train_impl<float>(x, dw_w, dw_b, bn_w, bn_b, eps);
    case DtypeRoute::kDouble:
      return dwconv_bn_train_impl<double>(x, dw_w, dw_b, bn_w, bn_b, eps);
    default:
      return cast_tuple(dwconv_bn_train_impl<float>(to_float(x), to_float(dw_w), to_float(dw_b),
                                                    to_float(bn_w), to_float(bn_b), eps),
                        x.scalar_type());
  }
}

std::tuple<Tensor, Tensor, Tensor> conv_block_train(
    const Tensor& x, const Tensor& dw_w, const OptTensor& dw_b, const OptTensor& bn_w,
    const OptTensor& bn_b, double eps, const Tensor& pw1_w, const OptTensor& pw1_b,
    const Tensor& pw2_w, const OptTensor& pw2_b, const OptTensor& ls) {
  check_dw("conv_block_train", x, dw_w, dw_b, bn_w, bn_b);
  check_pw("conv_block_train", x, pw1_w, pw1_b, pw2_w, pw2_b, ls, true);
  switch (route_dtype(x, "conv_block_train")) {
    case DtypeRoute::kFloat:
      return conv_block_train_impl<float>(x, dw_w, dw_b, bn_w, bn_b, eps,
                                          pw_args(pw1_w, pw1_b, pw2_w, pw2_b, ls));
    case DtypeRoute::kDouble:
      return conv_block_train_impl<double>(x, dw_w, dw_b, bn_w, bn_b, eps,
                                           pw_args(pw1_w, pw1_b, pw2_w, pw2_b, ls));
    default:
      return cast_tuple(
          conv_block_train_impl<float>(to_float(x), to_float(dw_w), to_float(dw_b),
                                       to_float(bn_w), to_float(bn_b), eps,
                                       pw_args(to_float(pw1_w), to_float(pw1_b), to_float(pw2_w),
                                               to_float(pw2_b), to_float(ls))),
          x.scalar_type());
  }
}

std::tuple<Tensor, Tensor, Tensor> mlp_train(const Tensor& x, const OptTensor& bn_w,
                                             const OptTensor& bn_b, double eps,
                                             const Tensor& fc1_w, const OptTensor& fc1_b,
                                             const Tensor& fc2_w, const OptTensor& fc2_b,
                                             const OptTensor& ls, const OptTensor& residual) {
  check_pw("mlp_train", x, fc1_w, fc1_b, fc2_w, fc2_b, ls, false);
  check_bn("mlp_train", x, bn_w, bn_b);
  switch (route_dtype(x, "mlp_train")) {
    case DtypeRoute::kFloat:
      return mlp_train_impl<float>(x, bn_w, bn_b, eps, pw_args(fc1_w, fc1_b, fc2_w, fc2_b, ls),
                                   residual);
    case DtypeRoute::kDouble:
      return mlp_train_impl<double>(x, bn_w, bn_b, eps, pw_args(fc1_w, fc1_b, fc2_w, fc2_b, ls),
                                    residual);
    default: {
      const Tensor xf = to_float(x);
      return cast_tuple(
          mlp_train_impl<float>(xf, to_float(bn_w), to_float(bn_b), eps,
                                pw_args(to_float(fc1_w), to_float(fc1_b), to_float(fc2_w),
                                        to_float(fc2_b), to_float(ls)),
                                residual_to_float(residual, x, xf)),
          x.scalar_type());
    }
  }
}

std::vector<Tensor> dwconv_bn_train_backward(const Tensor& grad, const Tensor& x,
                                             const Tensor& dw_w, const OptTensor& dw_b,
                                             const OptTensor& bn_w, const OptTensor& bn_b,
                                             double eps, const c10::List<bool>& mask_list) {
  check_dw("dwconv_bn_train_backward", x, dw_w, dw_b, bn_w, bn_b);
  check_grad("dwconv_bn_train_backward", grad, x);
  const std::vector<bool> mask = mask_list.vec();
  TORCH_CHECK(mask.size() == 5, "dwconv_bn_train_backward: grad_mask must have 5 entries");
  switch (route_dtype(x, "dwconv_bn_train_backward")) {
    case DtypeRoute::kFloat:
      return dwconv_bn_train_backward_impl<float>(grad, x, dw_w, dw_b, bn_w, bn_b, eps, mask);
    case DtypeRoute::kDouble:
      return dwconv_bn_train_backward_impl<double>(grad, x, dw_w, dw_b, bn_w, bn_b, eps, mask);
    default:
      return cast_all(dwconv_bn_train_backward_impl<float>(to_float(grad), to_float(x),
                                                           to_float(dw_w), to_float(dw_b),
                                                           to_float(bn_w), to_float(bn_b), eps,
                                                           mask),
                      x.scalar_type());
  }
}

std::vector<Tensor> conv_block_train_backward(
    const Tensor& grad, const Tensor& x, const Tensor& dw_w, const OptTensor& dw_b,
    const OptTensor& bn_w, const OptTensor& bn_b, double eps, const Tensor& pw1_w,
    const OptTensor& pw1_b, const Tensor& pw2_w, const OptTensor& pw2_b, const OptTensor& ls,
    const c10::List<bool>& mask_list) {
  check_dw("conv_block_train_backward", x, dw_w, dw_b, bn_w, bn_b);
  check_pw("conv_block_train_backward", x, pw1_w, pw1_b, pw2_w, pw2_b, ls, true);
  check_grad("conv_block_train_backward", grad, x);
  const std::vector<bool> mask = mask_list.vec();
  TORCH_CHECK(mask.size() == 10, "conv_block_train_backward: grad_mask must have 10 entries");
  switch (route_dtype(x, "conv_block_train_backward")) {
    case DtypeRoute::kFloat:
      return conv_block_train_backward_impl<float>(grad, x, dw_w, dw_b, bn_w, bn_b, eps,
                                                   pw_args(pw1_w, pw1_b, pw2_w, pw2_b, ls), mask);
    case DtypeRoute::kDouble:
      return conv_block_train_backward_impl<double>(grad, x, dw_w, dw_b, bn_w, bn_b, eps,
                                                    pw_args(pw1_w, pw1_b, pw2_w, pw2_b, ls), mask);
    default:
      return cast_all(
          conv_block_train_backward_impl<float>(
              to_float(grad), to_float(x), to_float(dw_w), to_float(dw_b), to_float(bn_w),
              to_float(bn_b), eps,
              pw_args(to_float(pw1_w), to_float(pw1_b), to_float(pw2_w), to_float(pw2_b),
                      to_float(ls)),
              mask),
          x.scalar_type());
  }
}

std::vector<Tensor> mlp_train_backward(const Tensor& grad, const Tensor& x, const OptTensor& bn_w,
                                       const OptTensor& bn_b, double eps, const Tensor& fc1_w,
                                       const OptTensor& fc1_b, const Tensor& fc2_w,
                                       const OptTensor& fc2_b, const OptTensor& ls,
                                       const OptTensor& residual,
                                       const c10::List<bool>& mask_list) {
  check_pw("mlp_train_backward", x, fc1_w, fc1_b, fc2_w, fc2_b, ls, false);
  check_bn("mlp_train_backward", x, bn_w, bn_b);
  check_grad("mlp_train_backward", grad, x, &fc2_w);
  const std::vector<bool> mask = mask_list.vec();
  TORCH_CHECK(mask.size() == 9, "mlp_train_backward: grad_mask must have 9 entries");
  switch (route_dtype(x, "mlp_train_backward")) {
    case DtypeRoute::kFloat:
      return mlp_train_backward_impl<float>(grad, x, bn_w, bn_b, eps,
                                            pw_args(fc1_w, fc1_b, fc2_w, fc2_b, ls), residual,
                                            mask);
    case DtypeRoute::kDouble:
      return mlp_train_backward_impl<double>(grad, x, bn_w, bn_b, eps,
                                             pw_args(fc1_w, fc1_b, fc2_w, fc2_b, ls), residual,
                                             mask);
    default: {
      const Tensor xf = to_float(x);
      return cast_all(
          mlp_train_backward_impl<float>(
              to_float(grad), xf, to_float(bn_w), to_float(bn_b), eps,
              pw_args(to_float(fc1_w), to_float(fc1_b), to_float(fc2_w), to_float(fc2_b),
                      to_float(ls)),
              residual_to_float(residual, x, xf), mask),
          x.scalar_type());
    }
  }
}

}  // namespace
}  // namespace swiftkern::cpu

TORCH_LIBRARY_IMPL(swiftkern_C, CPU, m) {
  m.impl("dwconv_bn", &swiftkern::cpu::dwconv_bn);
  m.impl("conv_block", &swiftkern::cpu::conv_block);
  m.impl("mlp", &swiftkern::cpu::mlp);
  m.impl("dwconv_bn_backward", &swiftkern::cpu::dwconv_bn_backward);
  m.impl("conv_block_backward", &swiftkern::cpu::conv_block_backward);
  m.impl("mlp_backward", &swiftkern::cpu::mlp_backward);
  m.impl("dwconv_bn_train", &swiftkern::cpu::dwconv_bn_train);
  m.impl("conv_block_train", &swiftkern::cpu::conv_block_train);
  m.impl("mlp_train", &swiftkern::cpu::mlp_train);
  m.impl("dwconv_bn_train_backward", &swiftkern::cpu::dwconv_bn_train_backward);
  m.impl("conv_block_train_backward", &swiftkern::cpu::conv_block_train_backward);
  m.impl("mlp_train_backward", &swiftkern::cpu::mlp_train_backward);
  m.impl("conv_block_packed", &swiftkern::cpu::conv_block_packed);
  m.impl("mlp_packed", &swiftkern::cpu::mlp_packed);
  m.impl("pointwise_packable", &swiftkern::cpu::pointwise_packable);
  m.impl("pointwise_tile_rows", &swiftkern::cpu::pointwise_tile_rows);
}

// MKL-packed weights are MKLDNN-layout tensors, so the dispatcher picks this key for the
// *_packed ops (x itself is a dense CPU tensor).
TORCH_LIBRARY_IMPL(swiftkern_C, MkldnnCPU, m) {
  m.impl("conv_block_packed", &swiftkern::cpu::conv_block_packed);
  m.impl("mlp_packed", &swiftkern::cpu::mlp_packed);
}
