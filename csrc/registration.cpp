// Schemas of the kernel library `swiftkern_C`: the per-device implementations behind the
// user-facing `swiftkern::` ops (defined in Python with autograd and fake impls). Every op here has
// the arguments of the same-named `swiftkern::` op minus `backend`; `<op>_backward` takes
// (grad, <op args>, grad_mask) and returns one tensor per Tensor argument (empty when that
// gradient is not wanted or the argument is None). The schemas live in C++ so that a C++
// deployment (CMake + libtorch, no Python) can call the kernels through the dispatcher.
// Kernels raise NotImplementedError (TORCH_CHECK_NOT_IMPLEMENTED) for inputs they do not serve;
// Python then falls back to the reference.
#include <torch/library.h>

#include <string>
#include <vector>

namespace {
std::vector<std::string> build_info() {
  std::vector<std::string> info;
#ifdef SWIFTKERN_WITH_CUDA
  info.emplace_back("cuda");
#endif
  return info;
}

// Run-time CPU feature detection for choosing the CPU kernel library (ATen's own capability
// report is not used: it may prefer AVX2 on CPUs that do have AVX-512).
std::vector<std::string> cpu_features() {
  std::vector<std::string> f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) f.emplace_back("avx2");
  if (__builtin_cpu_supports("fma")) f.emplace_back("fma");
  if (__builtin_cpu_supports("avx512f")) f.emplace_back("avx512f");
  if (__builtin_cpu_supports("avx512bw")) f.emplace_back("avx512bw");
  if (__builtin_cpu_supports("avx512vl")) f.emplace_back("avx512vl");
  if (__builtin_cpu_supports("avx512dq")) f.emplace_back("avx512dq");
  if (__builtin_cpu_supports("avx512bf16")) f.emplace_back("avx512bf16");
#endif
  return f;
}
}  // namespace

TORCH_LIBRARY(swiftkern_C, m) {
  m.def("build_info() -> str[]", &build_info);
  m.def("cpu_features() -> str[]", &cpu_features);
#define SK_ATTN "Tensor x, Tensor w_qk, Tensor? b_qk, Tensor w_g, float scale, Tensor w_proj, " \
                "Tensor? b_proj, Tensor? w_final, Tensor? b_final, str pool"
#define SK_CORE "Tensor q, Tensor k, Tensor w_g, float scale, str pool"
#define SK_DW "Tensor x, Tensor dw_w, Tensor? dw_b"
#define SK_DWT "Tensor x, Tensor dw_w, Tensor? dw_b, Tensor? bn_weight, Tensor? bn_bias, float eps"
#define SK_PW "Tensor pw1_w, Tensor? pw1_b, Tensor pw2_w, Tensor? pw2_b, Tensor? ls"
#define SK_MLP "Tensor fc1_w, Tensor? fc1_b, Tensor fc2_w, Tensor? fc2_b, Tensor? ls, Tensor? residual"
#define SK_PAIR(name, args, ret)                                  \
  m.def(name "(" args ") -> " ret);                               \
  m.def(name "_backward(Tensor grad, " args ", bool[] grad_mask) -> Tensor[]");
  SK_PAIR("additive_attention", SK_ATTN, "Tensor")
  SK_PAIR("additive_attention_core", SK_CORE, "(Tensor, Tensor)")
  SK_PAIR("dwconv_bn", SK_DW, "Tensor")
  SK_PAIR("dwconv_bn_train", SK_DWT, "(Tensor, Tensor, Tensor)")
  SK_PAIR("conv_block", SK_DW ", " SK_PW, "Tensor")
  SK_PAIR("conv_block_train", SK_DWT ", " SK_PW, "(Tensor, Tensor, Tensor)")
  SK_PAIR("mlp", "Tensor x, " SK_MLP, "Tensor")
  SK_PAIR("mlp_train", "Tensor x, Tensor? bn_weight, Tensor? bn_bias, float eps, " SK_MLP,
          "(Tensor, Tensor, Tensor)")
#undef SK_PAIR
  // CPU-only, eval, fp32 weights: conv_block / mlp / additive_attention with MKL-packed weights
  // (packed by the caller for the call's rows), and whether a conv_block / mlp shape runs the
  // GEMMs those serve. Called by swiftkern's fused modules on plain eager calls; no autograd,
  // not part of the public ops.
  m.def("conv_block_packed(" SK_DW ", " SK_PW ", Tensor pw1_packed, Tensor pw2_packed) -> Tensor");
  m.def("mlp_packed(Tensor x, " SK_MLP ", Tensor fc1_packed, Tensor fc2_packed) -> Tensor");
  m.def("pointwise_packable(Tensor x, Tensor w1, Tensor w2) -> bool");
  // rows of the image per tile when the fp32 eval conv_block / mlp on x runs the tile strategy,
  // 0 when it runs whole-tensor GEMMs (tests and benchmarks)
  m.def("pointwise_tile_rows(Tensor x, Tensor w1, Tensor w2) -> int");
  m.def("additive_attention_packed(" SK_ATTN
        ", Tensor w_qk_packed, Tensor? w_final_packed) -> Tensor");
}
