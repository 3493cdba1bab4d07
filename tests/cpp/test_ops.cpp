// C++ deployment test of the swiftkern kernel library: no Python. Links swiftkern_ops (the schemas
// of csrc/registration.cpp + the CPU kernels of csrc/cpu) through libtorch and calls every
// `swiftkern_C::` op that has a CPU kernel through the dispatcher, the way a C++ deployment would.
//
// Each op is checked two ways:
//   1. hand-computable inputs against values worked out on paper (closed forms in the comments);
//   2. random inputs (odd channel counts, channels_last, H = W = 1, optional arguments None, fp64)
//      against a plain libtorch composition of the same math (at::conv2d, at::gelu, at::linear...,
//      mirroring swiftkern/ops/reference.py); backward ops against torch::autograd::grad through
//      that composition, for the full gradient mask and for partial masks.
// Tolerance (shared/SPEC.md section 3): fp32 max|out - ref| <= 1e-4 * max(1, max|ref|); fp64 1e-9.
// bf16 (served by the CPU kernels through fp32): error vs the fp32 reference <= 2x the error of the
// libtorch composition run in bf16, plus a floor of 1e-3 * max(1, max|ref|).
//
// An op without a CPU kernel prints SKIP; an op with a CPU kernel that this program does not know
// fails (every served op must be tested). Exit status 0 only when every check passed.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <numbers>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

using at::Tensor;
using Args = std::vector<c10::IValue>;
using OptTensor = std::optional<Tensor>;

int g_failures = 0;
int g_passes = 0;

void fail(const std::string& what) {
  ++g_failures;
  std::printf("FAIL %s\n", what.c_str());
  std::fflush(stdout);
}

void pass(const std::string& what) {
  ++g_passes;
  std::printf("PASS %s\n", what.c_str());
  std::fflush(stdout);
}

c10::OperatorHandle op_handle(const std::string& name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(("swiftkern_C::" + name).c_str(), "");
}

bool has_cpu_kernel(const std::string& name) {
  return op_handle(name).hasKernelForDispatchKey(c10::DispatchKey::CPU);
}

// Boxed call through the dispatcher; returns the outputs as tensors (Tensor[] flattened).
std::vector<Tensor> call(const std::string& name, const Args& args) {
  auto op = op_handle(name);
  torch::jit::Stack stack(args.begin(), args.end());
  op.callBoxed(&stack);
  std::vector<Tensor> out;
  for (const auto& v : stack) {
    if (v.isTensor()) {
      out.push_back(v.toTensor());
    } else if (v.isTensorList()) {
      for (const auto& t : v.toTensorVector()) out.push_back(t);
    } else {
      TORCH_CHECK(false, name, ": unexpected output ", v.tagKind());
    }
  }
  return out;
}

bool call_bool(const std::string& name, const Args& args) {
  torch::jit::Stack stack(args.begin(), args.end());
  op_handle(name).callBoxed(&stack);
  return stack.at(0).toBool();
}

// Indices of the Tensor / Tensor? arguments of an op's schema (the gradient slots of _backward).
std::vector<size_t> tensor_arg_indices(const std::string& name) {
  std::vector<size_t> idx;
  const auto& schema = op_handle(name).schema();
  for (size_t i = 0; i < schema.arguments().size(); ++i) {
    auto type = schema.arguments()[i].type();
    if (auto opt = type->cast<c10::OptionalType>()) type = opt->getElementType();
    if (type->kind() == c10::TypeKind::TensorType) idx.push_back(i);
  }
  return idx;
}

double max_abs(const Tensor& t) {
  return t.numel() == 0 ? 0.0 : t.abs().max().item<double>();
}

double max_err(const Tensor& out, const Tensor& ref) {
  return out.numel() == 0 ? 0.0
                          : (out.to(at::kDouble) - ref.to(at::kDouble)).abs().max().item<double>();
}

// Checks one output against its reference; `tol_rel` scales with max(1, max|ref|).
bool check_close(const std::string& what, const Tensor& out, const Tensor& ref, double tol_rel) {
  if (out.sizes() != ref.sizes()) {
    std::ostringstream s;
    s << what << ": shape " << out.sizes() << " != expected " << ref.sizes();
    fail(s.str());
    return false;
  }
  if (out.scalar_type() != ref.scalar_type()) {
    std::ostringstream s;
    s << what << ": dtype " << out.scalar_type() << " != expected " << ref.scalar_type();
    fail(s.str());
    return false;
  }
  const double tol = tol_rel * std::max(1.0, max_abs(ref));
  const double err = max_err(out, ref);
  if (!(err <= tol)) {  // NaN fails
    std::ostringstream s;
    s << what << ": max|out - ref| = " << err << " > tol " << tol;
    fail(s.str());
    return false;
  }
  return true;
}

double tol_for(at::ScalarType t) { return t == at::kDouble ? 1e-9 : 1e-4; }

at::Tensor T(std::initializer_list<double> v, at::IntArrayRef shape) {
  return at::tensor(std::vector<double>(v), at::kDouble).to(at::kFloat).reshape(shape);
}

double gelu(double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }

// ---------------------------------------------------------------------------------------------
// The plain libtorch composition of every op (mirrors swiftkern/ops/reference.py)
// ---------------------------------------------------------------------------------------------
Tensor opt_t(const Args& a, size_t i) {
  auto o = a[i].toOptional<Tensor>();
  return o.has_value() ? *o : Tensor();
}

OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); }

Tensor normalize(const Tensor& t, int64_t dim) {
  return t / t.norm(2, {dim}, /*keepdim=*/true).clamp_min(1e-12);
}

Tensor pool_weights(const Tensor& s, const std::string& pool) {
  if (pool == "sum") return at::softmax(s, -1);
  if (pool == "l2") return normalize(s, 1);
  TORCH_CHECK(pool == "softmax", "unknown pool ", pool);
  return at::softmax(s, 1);
}

std::vector<Tensor> core_ref(const Tensor& q, const Tensor& k, const Tensor& w_g, double scale,
                             const std::string& pool) {
  Tensor qn = normalize(q, -1);
  Tensor kn = normalize(k, -1);
  Tensor s = at::matmul(qn, w_g.reshape({-1, 1})) * scale;
  Tensor g = (pool_weights(s, pool) * qn).sum({1}, /*keepdim=*/true);
  return {g * kn, qn};
}

std::vector<Tensor> attention_ref(const Args& a) {
  const Tensor x = a[0].toTensor();
  const int64_t d = x.size(-1);
  Tensor qk = at::linear(x, a[1].toTensor(), opt(opt_t(a, 2)));
  auto core = core_ref(qk.narrow(-1, 0, d), qk.narrow(-1, d, d), a[3].toTensor(), a[4].toDouble(),
                       a[9].toStringRef());
  Tensor out = at::linear(core[0], a[5].toTensor(), opt(opt_t(a, 6))) + core[1];
  if (opt_t(a, 7).defined()) out = at::linear(out, opt_t(a, 7), opt(opt_t(a, 8)));
  return {out};
}

std::vector<Tensor> attention_core_ref(const Args& a) {
  return core_ref(a[0].toTensor(), a[1].toTensor(), a[2].toTensor(), a[3].toDouble(),
                  a[4].toStringRef());
}

Tensor dwconv(const Tensor& x, const Tensor& w, const Tensor& b) {
  return at::conv2d(x, w, opt(b), {1, 1}, {1, 1}, {1, 1}, x.size(1));
}

std::vector<Tensor> bn_train(const Tensor& z, const Tensor& g, const Tensor& beta, double eps) {
  Tensor mean = z.mean({0, 2, 3});
  Tensor var = z.var({0, 2, 3}, /*unbiased=*/false);
  Tensor y = (z - mean.reshape({1, -1, 1, 1})) * at::rsqrt(var.reshape({1, -1, 1, 1}) + eps);
  if (g.defined()) y = y * g.reshape({1, -1, 1, 1});
  if (beta.defined()) y = y + beta.reshape({1, -1, 1, 1});
  return {y, mean, var};
}

Tensor pointwise(const Tensor& x, const Tensor& w, const Tensor& b) {
  return at::conv2d(x, w.reshape({w.size(0), w.size(1), 1, 1}), opt(b));
}

Tensor mlp_math(const Tensor& x, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                const Tensor& b2, const Tensor& ls, const Tensor& residual) {
  Tensor y = pointwise(at::gelu(pointwise(x, w1, b1)), w2, b2);
  if (ls.defined()) y = y * ls.reshape({1, -1, 1, 1});
  if (residual.defined()) y = residual + y;
  return y;
}

std::vector<Tensor> dwconv_bn_ref(const Args& a) {
  return {dwconv(a[0].toTensor(), a[1].toTensor(), opt_t(a, 2))};
}

std::vector<Tensor> dwconv_bn_train_ref(const Args& a) {
  return bn_train(dwconv(a[0].toTensor(), a[1].toTensor(), opt_t(a, 2)), opt_t(a, 3), opt_t(a, 4),
                  a[5].toDouble());
}

std::vector<Tensor> conv_block_ref(const Args& a) {
  const Tensor x = a[0].toTensor();
  Tensor z = dwconv(x, a[1].toTensor(), opt_t(a, 2));
  return {mlp_math(z, a[3].toTensor(), opt_t(a, 4), a[5].toTensor(), opt_t(a, 6), opt_t(a, 7), x)};
}

std::vector<Tensor> conv_block_train_ref(const Args& a) {
  const Tensor x = a[0].toTensor();
  auto bn = bn_train(dwconv(x, a[1].toTensor(), opt_t(a, 2)), opt_t(a, 3), opt_t(a, 4),
                     a[5].toDouble());
  return {mlp_math(bn[0], a[6].toTensor(), opt_t(a, 7), a[8].toTensor(), opt_t(a, 9), opt_t(a, 10),
                   x),
          bn[1], bn[2]};
}

std::vector<Tensor> mlp_ref(const Args& a) {
  return {mlp_math(a[0].toTensor(), a[1].toTensor(), opt_t(a, 2), a[3].toTensor(), opt_t(a, 4),
                   opt_t(a, 5), opt_t(a, 6))};
}

std::vector<Tensor> mlp_train_ref(const Args& a) {
  auto bn = bn_train(a[0].toTensor(), opt_t(a, 1), opt_t(a, 2), a[3].toDouble());
  return {mlp_math(bn[0], a[4].toTensor(), opt_t(a, 5), a[6].toTensor(), opt_t(a, 7), opt_t(a, 8),
                   opt_t(a, 9)),
          bn[1], bn[2]};
}

using RefFn = std::function<std::vector<Tensor>(const Args&)>;

// ---------------------------------------------------------------------------------------------
// Random cases
// ---------------------------------------------------------------------------------------------
struct Layout {
  int64_t b, c, h, w;
  bool channels_last;
  bool with_optionals;  // false: every Tensor? argument None
  at::ScalarType dtype;
  std::string tag() const {
    std::ostringstream s;
    s << "B" << b << "C" << c << "H" << h << "W" << w << (channels_last ? " NHWC" : " NCHW")
      << (with_optionals ? "" : " no-optionals") << " " << dtype;
    return s.str();
  }
};

at::TensorOptions fopt(at::ScalarType t) { return at::TensorOptions().dtype(t); }

Tensor image(const Layout& l, int64_t c) {
  Tensor x = at::randn({l.b, c, l.h, l.w}, fopt(l.dtype));
  return l.channels_last ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
}

// Randomized parameters per SPEC.md section 3 (layer scale ~U(0.5, 1.5), BN affine ~N(1, 0.2)).
Tensor ls_param(int64_t c, at::ScalarType t) { return at::rand({c}, fopt(t)) + 0.5; }
Tensor bn_gamma(int64_t c, at::ScalarType t) { return 1.0 + 0.2 * at::randn({c}, fopt(t)); }
Tensor small(at::IntArrayRef shape, at::ScalarType t, double std) {
  return std * at::randn(shape, fopt(t));
}

c10::List<bool> bool_list(const std::vector<bool>& v) {
  c10::List<bool> l;
  for (bool b : v) l.push_back(b);
  return l;
}

c10::IValue maybe(bool on, const Tensor& t) { return on ? c10::IValue(t) : c10::IValue(); }

Args random_args(const std::string& op, const Layout& l) {
  const auto t = l.dtype;
  const bool o = l.with_optionals;
  const int64_t c = l.c, hd = 2 * l.c + 1;
  if (op == "dwconv_bn") {
    return {image(l, c), small({c, 1, 3, 3}, t, 0.5), maybe(o, small({c}, t, 0.2))};
  }
  if (op == "dwconv_bn_train") {
    return {image(l, c),        small({c, 1, 3, 3}, t, 0.5), maybe(o, small({c}, t, 0.2)),
            maybe(o, bn_gamma(c, t)), maybe(o, small({c}, t, 0.2)), 1e-5};
  }
  if (op == "conv_block") {
    return {image(l, c),
            small({c, 1, 3, 3}, t, 0.5),
            maybe(o, small({c}, t, 0.2)),
            small({hd, c}, t, 1.0 / std::sqrt(double(c))),
            maybe(o, small({hd}, t, 0.2)),
            small({c, hd}, t, 1.0 / std::sqrt(double(hd))),
            maybe(o, small({c}, t, 0.2)),
            maybe(o, ls_param(c, t))};
  }
  if (op == "conv_block_train") {
    return {image(l, c),
            small({c, 1, 3, 3}, t, 0.5),
            maybe(o, small({c}, t, 0.2)),
            maybe(o, bn_gamma(c, t)),
            maybe(o, small({c}, t, 0.2)),
            1e-5,
            small({hd, c}, t, 1.0 / std::sqrt(double(c))),
            maybe(o, small({hd}, t, 0.2)),
            small({c, hd}, t, 1.0 / std::sqrt(double(hd))),
            maybe(o, small({c}, t, 0.2)),
            maybe(o, ls_param(c, t))};
  }
  const int64_t cout = l.c + 2;  // C_out != C_in exercises the non-square fc2
  if (op == "mlp") {
    return {image(l, c),
            small({hd, c}, t, 1.0 / std::sqrt(double(c))),
            maybe(o, small({hd}, t, 0.2)),
            small({cout, hd}, t, 1.0 / std::sqrt(double(hd))),
            maybe(o, small({cout}, t, 0.2)),
            maybe(o, ls_param(cout, t)),
            maybe(o, image(l, cout))};
  }
  if (op == "mlp_train") {
    return {image(l, c),
            maybe(o, bn_gamma(c, t)),
            maybe(o, small({c}, t, 0.2)),
            1e-5,
            small({hd, c}, t, 1.0 / std::sqrt(double(c))),
            maybe(o, small({hd}, t, 0.2)),
            small({cout, hd}, t, 1.0 / std::sqrt(double(hd))),
            maybe(o, small({cout}, t, 0.2)),
            maybe(o, ls_param(cout, t)),
            maybe(o, image(l, cout))};
  }
  // Attention: tokens-last [B, N, D] with N = H * W, D = C.
  const int64_t n = l.h * l.w, d = l.c;
  if (op == "additive_attention_core") {
    return {at::randn({l.b, n, d}, fopt(t)), at::randn({l.b, n, d}, fopt(t)),
            at::randn({d}, fopt(t)), std::pow(double(d), -0.5), std::string("softmax")};
  }
  if (op == "additive_attention") {
    const int64_t tok = d + 3;  // `final` maps D -> token_dim (timm)
    return {at::randn({l.b, n, d}, fopt(t)),
            small({2 * d, d}, t, 1.0 / std::sqrt(double(d))),
            maybe(o, small({2 * d}, t, 0.2)),
            at::randn({d}, fopt(t)),
            std::pow(double(d), -0.5),
            small({d, d}, t, 1.0 / std::sqrt(double(d))),
            maybe(o, small({d}, t, 0.2)),
            maybe(o, small({tok, d}, t, 1.0 / std::sqrt(double(d)))),
            maybe(o, small({tok}, t, 0.2)),
            std::string("softmax")};
  }
  TORCH_CHECK(false, "no random args for ", op);
}

Args with_pool(Args a, const std::string& op, const std::string& pool) {
  if (op == "additive_attention_core") a[4] = pool;
  if (op == "additive_attention") a[9] = pool;
  return a;
}

Args cast_args(const Args& a, at::ScalarType t) {
  Args out;
  for (const auto& v : a) out.push_back(v.isTensor() ? c10::IValue(v.toTensor().to(t)) : v);
  return out;
}

void check_forward_random(const std::string& op, const RefFn& ref, const Args& args,
                          const std::string& tag) {
  const std::string what = op + " [" + tag + "]";
  try {
    auto out = call(op, args);
    auto expect = ref(args);
    if (out.size() != expect.size()) {
      fail(what + ": wrong number of outputs");
      return;
    }
    const auto dtype = args[0].toTensor().scalar_type();
    bool ok = true;
    for (size_t i = 0; i < out.size(); ++i) {
      ok &= check_close(what + " output " + std::to_string(i), out[i], expect[i], tol_for(dtype));
    }
    if (ok) pass(what);
  } catch (const c10::NotImplementedError& e) {
    fail(what + ": kernel raised NotImplementedError: " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(what + ": " + e.what());
  }
}

// bf16: the kernel's error vs the fp32 reference (on the same bf16-rounded inputs) must stay within
// 2x the error of the libtorch composition computed in bf16.
void check_forward_bf16(const std::string& op, const RefFn& ref, const Args& args_f32,
                        const std::string& tag) {
  const std::string what = op + " [" + tag + " bf16]";
  try {
    Args a16 = cast_args(args_f32, at::kBFloat16);
    auto ref32 = ref(cast_args(a16, at::kFloat));
    auto ref16 = ref(a16);
    auto out = call(op, a16);
    bool ok = out.size() == ref32.size();
    if (!ok) fail(what + ": wrong number of outputs");
    for (size_t i = 0; ok && i < out.size(); ++i) {
      if (out[i].scalar_type() != at::kBFloat16 || out[i].sizes() != ref32[i].sizes()) {
        fail(what + " output " + std::to_string(i) + ": wrong dtype or shape");
        ok = false;
        break;
      }
      const double scale = std::max(1.0, max_abs(ref32[i]));
      const double err = max_err(out[i], ref32[i]);
      const double bound = 2.0 * max_err(ref16[i], ref32[i]) + 1e-3 * scale;
      if (!(err <= bound)) {
        std::ostringstream s;
        s << what << " output " << i << ": error " << err << " > 2 x libtorch bf16 error + floor = "
          << bound;
        fail(s.str());
        ok = false;
      }
    }
    if (ok) pass(what);
  } catch (const c10::NotImplementedError& e) {
    std::printf("SKIP %s: bf16 not served (%s)\n", what.c_str(),
                std::string(e.what_without_backtrace()).substr(0, 120).c_str());
  } catch (const std::exception& e) {
    fail(what + ": " + e.what());
  }
}

// Backward op vs torch::autograd::grad of the composition's first output.
void check_backward_random(const std::string& op, const RefFn& ref, const Args& args,
                           const std::vector<bool>& mask, const std::string& tag) {
  const std::string bwd = op + "_backward";
  std::string mask_s;
  for (bool m : mask) mask_s += m ? '1' : '0';
  const std::string what = bwd + " [" + tag + " mask " + mask_s + "]";
  try {
    const auto slots = tensor_arg_indices(op);
    TORCH_CHECK(slots.size() == mask.size(), "mask size");
    Args ref_args = args;
    std::vector<Tensor> inputs;
    std::vector<size_t> wanted;
    for (size_t j = 0; j < slots.size(); ++j) {
      const auto& v = args[slots[j]];
      if (mask[j] && v.isTensor()) {
        Tensor leaf = v.toTensor().detach().requires_grad_(true);
        ref_args[slots[j]] = leaf;
        inputs.push_back(leaf);
        wanted.push_back(j);
      }
    }
    auto y = ref(ref_args)[0];
    Tensor grad = at::randn_like(y);
    std::vector<Tensor> expect(slots.size());
    if (!inputs.empty()) {
      auto g = torch::autograd::grad({y}, inputs, {grad}, false, false, /*allow_unused=*/true);
      for (size_t i = 0; i < wanted.size(); ++i) {
        expect[wanted[i]] = g[i].defined() ? g[i] : at::zeros_like(inputs[i]);
      }
    }
    Args bargs{grad.detach()};
    for (const auto& v : args) bargs.push_back(v);
    bargs.push_back(bool_list(mask));
    auto out = call(bwd, bargs);
    if (out.size() != slots.size()) {
      fail(what + ": returned " + std::to_string(out.size()) + " tensors, expected " +
           std::to_string(slots.size()));
      return;
    }
    const auto dtype = args[0].toTensor().scalar_type();
    bool ok = true;
    for (size_t j = 0; j < slots.size(); ++j) {
      const std::string arg = op_handle(op).schema().arguments()[slots[j]].name();
      if (!expect[j].defined()) {
        if (out[j].defined() && out[j].numel() != 0) {
          fail(what + " grad " + arg + ": expected an empty tensor (not requested / None)");
          ok = false;
        }
        continue;
      }
      ok &= check_close(what + " grad " + arg, out[j], expect[j].detach(), tol_for(dtype));
    }
    if (ok) pass(what);
  } catch (const c10::NotImplementedError& e) {
    fail(what + ": kernel raised NotImplementedError: " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    fail(what + ": " + e.what());
  }
}

// ---------------------------------------------------------------------------------------------
// Known values (worked out by hand)
// ---------------------------------------------------------------------------------------------
bool expect_values(const std::string& what, const Tensor& out, const Tensor& expect,
                   double tol = 1e-5) {
  return check_close(what, out.to(at::kFloat).contiguous(), expect.to(at::kFloat).contiguous(),
                     tol);
}

void known(const std::string& what, const std::function<bool()>& body) {
  try {
    if (body()) pass(what + " (known values)");
  } catch (const std::exception& e) {
    fail(what + " (known values): " + e.what());
  }
}

// dwconv with an all-ones 3x3 kernel on a constant input c: every output is c times the number of
// taps inside the image, plus the bias: 9c inside, 6c on edges, 4c at corners.
Tensor ones_kernel_response(double c, double b, int64_t h, int64_t w) {
  Tensor e = at::empty({h, w}, at::kFloat);
  for (int64_t i = 0; i < h; ++i)
    for (int64_t j = 0; j < w; ++j) {
      const int64_t ni = 3 - (i == 0) - (i == h - 1), nj = 3 - (j == 0) - (j == w - 1);
      e[i][j] = c * double(ni * nj) + b;
    }
  return e;
}

void known_dwconv_bn() {
  known("dwconv_bn ones kernel", [] {
    // channel 0: c = 2, b = 0.5; channel 1: c = -1, b = 3. 4x5 image, NCHW and channels_last.
    Tensor x = at::empty({1, 2, 4, 5});
    x.select(1, 0).fill_(2.0);
    x.select(1, 1).fill_(-1.0);
    Tensor w = at::ones({2, 1, 3, 3});
    Tensor b = T({0.5, 3.0}, {2});
    Tensor e = at::stack({ones_kernel_response(2, 0.5, 4, 5), ones_kernel_response(-1, 3, 4, 5)})
                   .unsqueeze(0);
    // e.g. channel 0: inside 9*2+0.5 = 18.5, edge 6*2+0.5 = 12.5, corner 4*2+0.5 = 8.5.
    bool ok = std::abs(e[0][0][1][1].item<double>() - 18.5) < 1e-6 &&
              std::abs(e[0][0][0][2].item<double>() - 12.5) < 1e-6 &&
              std::abs(e[0][0][0][0].item<double>() - 8.5) < 1e-6;
    TORCH_CHECK(ok, "test's own table is wrong");
    ok &= expect_values("dwconv_bn NCHW", call("dwconv_bn", {x, w, b})[0], e);
    ok &= expect_values("dwconv_bn NHWC",
                        call("dwconv_bn", {x.contiguous(at::MemoryFormat::ChannelsLast), w, b})[0],
                        e);
    // H = W = 1: only the centre tap sees the image: 2 * 1 + 0.5.
    ok &= expect_values("dwconv_bn 1x1", call("dwconv_bn", {x.narrow(2, 0, 1).narrow(3, 0, 1).contiguous(), w, b})[0],
                        T({2.5, 2.0}, {1, 2, 1, 1}));
    return ok;
  });
}

void known_dwconv_bn_backward() {
  known("dwconv_bn_backward ones", [] {
    // y = dwconv(x, ones) + b with x = 2 on a 4x5 image and grad = 1:
    //   dx = number of output pixels each input pixel feeds = the same 9/6/4 tap-count table;
    //   dw[i][j] = sum over outputs of x at the shifted position = 2 * (valid rows) * (valid cols):
    //     centre 2*4*5 = 40, top/bottom row taps 2*3*5 = 30, left/right column taps 2*4*4 = 32,
    //     corner taps 2*3*4 = 24;  db = 4*5 = 20.
    Tensor x = at::full({1, 1, 4, 5}, 2.0);
    Tensor w = at::ones({1, 1, 3, 3});
    Tensor b = at::zeros({1});
    Tensor g = at::ones({1, 1, 4, 5});
    auto r = call("dwconv_bn_backward", {g, x, w, b, bool_list({true, true, true})});
    bool ok = expect_values("dx", r[0], ones_kernel_response(1, 0, 4, 5).reshape({1, 1, 4, 5}));
    ok &= expect_values("dw", r[1], T({24, 30, 24, 32, 40, 32, 24, 30, 24}, {1, 1, 3, 3}));
    ok &= expect_values("db", r[2], T({20}, {1}));
    return ok;
  });
}

void known_dwconv_bn_train() {
  known("dwconv_bn_train identity kernel", [] {
    // Centre-only kernel, no bias: z = x = [1, 3, 5, 7] over (B=2, H=1, W=2) for the one channel.
    // mean 4, biased var (9+1+1+9)/4 = 5; y = gamma (x - 4) / sqrt(5 + eps) + beta.
    Tensor x = T({1, 3, 5, 7}, {2, 1, 1, 2});
    Tensor w = at::zeros({1, 1, 3, 3});
    w[0][0][1][1] = 1.0;
    const double eps = 1e-5, gam = 2.0, beta = 0.5, sd = std::sqrt(5.0 + eps);
    auto r = call("dwconv_bn_train", {x, w, c10::IValue(), T({gam}, {1}), T({beta}, {1}), eps});
    Tensor e = T({gam * -3 / sd + beta, gam * -1 / sd + beta, gam * 1 / sd + beta,
                  gam * 3 / sd + beta},
                 {2, 1, 1, 2});
    bool ok = expect_values("y", r[0], e);
    ok &= expect_values("mean", r[1], T({4}, {1}));
    ok &= expect_values("var", r[2], T({5}, {1}));
    return ok;
  });
}

// Per-channel values for the conv-block / mlp cases: x in {-1, 0, 1, 2} so GELU has closed forms.
Tensor small_image() { return T({-1, 0, 1, 2, 2, 1, 0, -1}, {1, 2, 2, 2}); }

void known_conv_block() {
  known("conv_block zero pw2", [] {
    // pw2 = 0 kills the branch: y = x + ls * pw2_b. ls = (0.5, 2), pw2_b = (1, -3).
    Tensor x = at::randn({2, 2, 3, 4});
    auto r = call("conv_block", {x, at::randn({2, 1, 3, 3}), at::randn({2}), at::randn({5, 2}),
                                 at::randn({5}), at::zeros({2, 5}), T({1, -3}, {2}),
                                 T({0.5, 2}, {2})});
    return expect_values("y", r[0], x + T({0.5, -6}, {1, 2, 1, 1}));
  });
  known("conv_block identity", [] {
    // Centre-only dwconv, pw1 = pw2 = I, no biases: y = x + ls * gelu(x);
    // gelu(-1) = -0.158655, gelu(0) = 0, gelu(1) = 0.841345, gelu(2) = 1.954500.
    Tensor x = small_image();
    Tensor w = at::zeros({2, 1, 3, 3});
    w.select(2, 1).select(2, 1).fill_(1.0);
    Tensor eye = at::eye(2);
    Tensor ls = T({1.0, 0.5}, {2});
    auto r = call("conv_block", {x, w, c10::IValue(), eye, c10::IValue(), eye, c10::IValue(), ls});
    Tensor e = T({-1 + gelu(-1), 0, 1 + gelu(1), 2 + gelu(2), 2 + 0.5 * gelu(2), 1 + 0.5 * gelu(1),
                  0, -1 + 0.5 * gelu(-1)},
                 {1, 2, 2, 2});
    TORCH_CHECK(std::abs(gelu(1) - 0.8413447460685429) < 1e-12, "erf");
    return expect_values("y", r[0], e);
  });
}

void known_conv_block_backward() {
  known("conv_block_backward zero pw2", [] {
    // y = x + ls * (0 * h + b2): dx = grad (the dwconv branch is cut by pw2 = 0),
    // d b2 = ls * sum(grad) per channel, d ls = b2 * sum(grad); grad = 1 on a 3x4 image, B = 2:
    // sum = 24 -> d b2 = (12, 48), d ls = (24, -72). dw, d dw_b, d pw1 are exactly 0.
    Tensor x = at::randn({2, 2, 3, 4});
    Tensor g = at::ones_like(x);
    std::vector<bool> all(8, true);
    auto r = call("conv_block_backward",
                  {g, x, at::randn({2, 1, 3, 3}), at::randn({2}), at::randn({5, 2}),
                   at::randn({5}), at::zeros({2, 5}), T({1, -3}, {2}), T({0.5, 2}, {2}),
                   bool_list(all)});
    bool ok = expect_values("dx", r[0], g);
    ok &= expect_values("d dw_w", r[1], at::zeros({2, 1, 3, 3}));
    ok &= expect_values("d dw_b", r[2], at::zeros({2}));
    ok &= expect_values("d pw1_w", r[3], at::zeros({5, 2}));
    ok &= expect_values("d pw1_b", r[4], at::zeros({5}));
    ok &= expect_values("d pw2_b", r[6], T({12, 48}, {2}));
    ok &= expect_values("d ls", r[7], T({24, -72}, {2}));
    return ok;
  });
}

void known_conv_block_train() {
  known("conv_block_train zero pw2", [] {
    // Centre-only dwconv with bias (1, -1): z = x + b. x channel 0 = [1, 3, 5, 7], channel 1 =
    // [0, 0, 2, 2] over (B=2, H=1, W=2): mean (4+1, 1-1) = (5, 0), var (5, 1). y = x + ls * b2.
    Tensor x = T({1, 3, 0, 0, 5, 7, 2, 2}, {2, 2, 1, 2});
    Tensor w = at::zeros({2, 1, 3, 3});
    w.select(2, 1).select(2, 1).fill_(1.0);
    auto r = call("conv_block_train",
                  {x, w, T({1, -1}, {2}), at::randn({2}), at::randn({2}), 1e-5, at::randn({3, 2}),
                   at::randn({3}), at::zeros({2, 3}), T({2, 4}, {2}), T({0.5, 0.25}, {2})});
    bool ok = expect_values("y", r[0], x + T({1, 1}, {1, 2, 1, 1}));
    ok &= expect_values("mean", r[1], T({5, 0}, {2}));
    ok &= expect_values("var", r[2], T({5, 1}, {2}));
    return ok;
  });
}

void known_mlp() {
  known("mlp identity", [] {
    // fc1 = fc2 = I, fc1_b = 0, fc2_b = (0.5, 0), ls = (2, 1), residual r = 10:
    // y = r + ls * (gelu(x) + fc2_b).
    Tensor x = small_image();
    Tensor eye = at::eye(2);
    Tensor res = at::full({1, 2, 2, 2}, 10.0);
    auto r = call("mlp", {x, eye, at::zeros({2}), eye, T({0.5, 0}, {2}), T({2, 1}, {2}), res});
    Tensor e = T({10 + 2 * (gelu(-1) + 0.5), 10 + 2 * 0.5, 10 + 2 * (gelu(1) + 0.5),
                  10 + 2 * (gelu(2) + 0.5), 10 + gelu(2), 10 + gelu(1), 10, 10 + gelu(-1)},
                 {1, 2, 2, 2});
    bool ok = expect_values("y", r[0], e);
    // No ls, no residual: y = gelu(x) + fc2_b exactly.
    auto r2 = call("mlp", {x, eye, c10::IValue(), eye, T({0.5, 0}, {2}), c10::IValue(),
                           c10::IValue()});
    ok &= expect_values("y (no ls/residual)", r2[0], (e - 10) / T({2, 1}, {1, 2, 1, 1}));
    return ok;
  });
}

void known_mlp_backward() {
  known("mlp_backward identity", [] {
    // Same as above with grad = 1: dx = ls * gelu'(x), gelu'(0) = 0.5, gelu'(1) = 1.0833155,
    // d residual = grad = 1, d fc2_b = ls * sum(grad) = (8, 4) ... (4 pixels, B = 1): (8, 4).
    Tensor x = small_image();
    Tensor eye = at::eye(2);
    auto gp = [](double v) {
      return 0.5 * (1 + std::erf(v / std::sqrt(2.0))) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * std::numbers::pi);
    };
    TORCH_CHECK(std::abs(gp(0) - 0.5) < 1e-12 && std::abs(gp(1) - 1.0833154705876864) < 1e-9,
                "gelu'");
    std::vector<bool> all(7, true);
    auto r = call("mlp_backward", {at::ones({1, 2, 2, 2}), x, eye, at::zeros({2}), eye,
                                   T({0.5, 0}, {2}), T({2, 1}, {2}), at::full({1, 2, 2, 2}, 10.0),
                                   bool_list(all)});
    Tensor dx = T({2 * gp(-1), 2 * gp(0), 2 * gp(1), 2 * gp(2), gp(2), gp(1), gp(0), gp(-1)},
                  {1, 2, 2, 2});
    bool ok = expect_values("dx", r[0], dx);
    ok &= expect_values("d fc2_b", r[4], T({8, 4}, {2}));
    ok &= expect_values("d residual", r[6], at::ones({1, 2, 2, 2}));
    return ok;
  });
}

void known_mlp_train() {
  known("mlp_train zero fc2", [] {
    // BN over x = [1, 3, 5, 7]: mean 4, var 5; fc2 = 0 with bias 3, ls 2, residual 1: y = 7.
    Tensor x = T({1, 3, 5, 7}, {2, 1, 1, 2});
    auto r = call("mlp_train", {x, at::randn({1}), at::randn({1}), 1e-5, at::randn({4, 1}),
                                at::randn({4}), at::zeros({1, 4}), T({3}, {1}), T({2}, {1}),
                                at::ones({2, 1, 1, 2})});
    bool ok = expect_values("y", r[0], at::full({2, 1, 1, 2}, 7.0));
    ok &= expect_values("mean", r[1], T({4}, {1}));
    ok &= expect_values("var", r[2], T({5}, {1}));
    return ok;
  });
}

// q tokens (3, 4) and (0, 2) -> qn = (0.6, 0.8), (0, 1); k tokens (1, 0), (0, -5) -> kn = (1, 0),
// (0, -1); w_g = (1, 1), scale 1: s = (1.4, 1.0).
//   sum:     a = (1, 1)                              G = (0.6, 1.8)
//   l2:      a = (1.4, 1) / sqrt(2.96)               G = (0.84, 2.12) / sqrt(2.96)
//   softmax: a = (e^0.4, 1) / (e^0.4 + 1)            G = (0.6 e^0.4, 0.8 e^0.4 + 1) / (e^0.4 + 1)
// gk = G * kn: token 0 -> (G0, 0), token 1 -> (0, -G1).
std::pair<double, double> hand_g(const std::string& pool) {
  if (pool == "sum") return {0.6, 1.8};
  if (pool == "l2") return {0.84 / std::sqrt(2.96), 2.12 / std::sqrt(2.96)};
  const double e = std::exp(0.4);
  return {0.6 * e / (e + 1), (0.8 * e + 1) / (e + 1)};
}

void known_attention_core() {
  for (std::string pool : {"sum", "l2", "softmax"}) {
    known("additive_attention_core " + pool, [pool] {
      Tensor q = T({3, 4, 0, 2}, {1, 2, 2});
      Tensor k = T({1, 0, 0, -5}, {1, 2, 2});
      auto [g0, g1] = hand_g(pool);
      auto r = call("additive_attention_core", {q, k, T({1, 1}, {2}), 1.0, pool});
      bool ok = expect_values("gk", r[0], T({g0, 0, 0, -g1}, {1, 2, 2}));
      ok &= expect_values("qn", r[1], T({0.6, 0.8, 0, 1}, {1, 2, 2}));
      return ok;
    });
  }
}

void known_attention() {
  for (std::string pool : {"sum", "l2", "softmax"}) {
    known("additive_attention " + pool, [pool] {
      // Tokens x0 = (3, 4), x1 = (0, 2); query rows Wq = I, key rows Wk = [[1, 0], [4, -3]]:
      // k0 = (3, 0), k1 = (0, -6), which normalize to the core case above (1, 0), (0, -1).
      Tensor x = T({3, 4, 0, 2}, {1, 2, 2});
      Tensor w_qk = T({1, 0, 0, 1, 1, 0, 4, -3}, {4, 2});
      auto [g0, g1] = hand_g(pool);
      // proj = I, bias (0.1, 0.2); out = G*kn + bp + qn; final = 2*I with bias (1, 0).
      Tensor bp = T({0.1, 0.2}, {2});
      auto r = call("additive_attention",
                    {x, w_qk, c10::IValue(), T({1, 1}, {2}), 1.0, at::eye(2), bp,
                     2 * at::eye(2), T({1, 0}, {2}), pool});
      Tensor pre = T({g0 + 0.1 + 0.6, 0.2 + 0.8, 0.1 + 0, -g1 + 0.2 + 1}, {1, 2, 2});
      Tensor e = 2 * pre + T({1, 0}, {1, 1, 2});
      return expect_values("out", r[0], e);
    });
  }
}

void known_attention_backward() {
  // SPEC: with the "sum" pool w_g and scale have no effect, so d w_g is exactly 0.
  for (const std::string& op : {std::string("additive_attention"),
                                std::string("additive_attention_core")}) {
    const std::string bwd = op + "_backward";
    if (!has_cpu_kernel(bwd)) continue;
    known(bwd + " sum pool: d w_g = 0", [op, bwd] {
      Layout l{2, 5, 3, 1, false, true, at::kFloat};
      Args a = with_pool(random_args(op, l), op, "sum");
      auto slots = tensor_arg_indices(op);
      Tensor y = call(op, a)[0];
      Args b{at::randn_like(y)};
      for (const auto& v : a) b.push_back(v);
      b.push_back(bool_list(std::vector<bool>(slots.size(), true)));
      auto r = call(bwd, b);
      const size_t wg = op == "additive_attention" ? 3 : 2;
      size_t j = 0;
      while (slots[j] != wg) ++j;
      // The reference's softmax over a size-1 dim gives a*(g - a*g) = 0; any pool-dependent term
      // would be O(1), so 1e-6 separates right from wrong.
      return expect_values("d w_g", r[j], at::zeros_like(a[wg].toTensor()), 1e-6);
    });
  }
}

// conv_block_packed / mlp_packed (weights packed by ATen's mkl::_mkl_reorder_linear_weight for
// the call's B*H*W rows) against the references, at shapes pointwise_packable accepts; and the
// rule itself on shapes it must refuse.
void check_packed() {
  const auto reorder =
      c10::Dispatcher::singleton().findSchema({"mkl::_mkl_reorder_linear_weight", ""});
  if (!reorder.has_value() || !has_cpu_kernel("conv_block_packed")) {
    std::printf("SKIP packed ops: no MKL ops in this libtorch or no CPU kernel\n");
    return;
  }
  auto pack = [&](const Tensor& w, int64_t rows) {
    return reorder->typed<Tensor(const Tensor&, int64_t)>().call(w, rows);
  };
  const int threads = at::get_num_threads();
  at::set_num_threads(2);  // the strategy rules depend on it; the shapes are chosen for 2
  for (const auto& [b, c, h, w] : std::vector<std::array<int64_t, 4>>{{1, 97, 7, 5},
                                                                      {3, 260, 6, 5}}) {
    const std::string tag = "B" + std::to_string(b) + " C" + std::to_string(c);
    const Tensor x = at::randn({b, c, h, w}).contiguous(at::MemoryFormat::ChannelsLast);
    const Tensor dw = at::randn({c, 1, 3, 3}) * 0.3, db = at::randn({c});
    const Tensor w1 = at::randn({4 * c, c}) / std::sqrt(double(c)), b1 = at::randn({4 * c});
    const Tensor w2 = at::randn({c, 4 * c}) / std::sqrt(4.0 * c), b2 = at::randn({c});
    const Tensor ls = at::randn({c});
    const Tensor res = at::randn({b, c, h, w}).contiguous(at::MemoryFormat::ChannelsLast);
    if (!call_bool("pointwise_packable", {x, w1, w2})) {
      fail("pointwise_packable refused " + tag);
      continue;
    }
    const Tensor p1 = pack(w1, b * h * w), p2 = pack(w2, b * h * w);
    auto got = call("conv_block_packed", {x, dw, db, w1, b1, w2, b2, ls, p1, p2});
    if (check_close("conv_block_packed " + tag, got[0],
                    conv_block_ref({x, dw, db, w1, b1, w2, b2, ls})[0], tol_for(at::kFloat)))
      pass("conv_block_packed " + tag);
    got = call("mlp_packed", {x, w1, b1, w2, b2, ls, res, p1, p2});
    if (check_close("mlp_packed " + tag, got[0], mlp_ref({x, w1, b1, w2, b2, ls, res})[0],
                    tol_for(at::kFloat)))
      pass("mlp_packed " + tag);
  }
  {  // additive_attention_packed: qk and final weights packed for B*N rows, every pool
    const int64_t b = 2, n = 9, d = 131;
    const Tensor x = at::randn({b, n, d});
    const Tensor wqk = at::randn({2 * d, d}) / std::sqrt(double(d)), bqk = at::randn({2 * d});
    const Tensor wg = at::randn({d}), wp = at::randn({d, d}) / std::sqrt(double(d));
    const Tensor bp = at::randn({d}), wf = at::randn({d + 3, d}) / std::sqrt(double(d));
    const Tensor bf = at::randn({d + 3});
    const Tensor pq = pack(wqk, b * n), pf = pack(wf, b * n);
    for (const std::string pool : {"sum", "l2", "softmax"}) {
      const Args a = {x, wqk, bqk, wg, 1.0 / std::sqrt(double(d)), wp, bp, wf, bf, pool};
      Args ap = a;
      ap.emplace_back(pq);
      ap.emplace_back(pf);
      if (check_close("additive_attention_packed " + pool, call("additive_attention_packed", ap)[0],
                      attention_ref(a)[0], tol_for(at::kFloat)))
        pass("additive_attention_packed " + pool);
    }
  }
  // refused: NCHW, fp64, a small weight (C = 56: measured slower packed)
  const Tensor w1 = at::randn({388, 97}), w2 = at::randn({97, 388});
  const bool nchw = call_bool("pointwise_packable", {at::randn({1, 97, 7, 5}), w1, w2});
  const bool f64 = call_bool(
      "pointwise_packable",
      {at::randn({1, 97, 7, 5}, at::kDouble).contiguous(at::MemoryFormat::ChannelsLast),
       w1.to(at::kDouble), w2.to(at::kDouble)});
  const bool small = call_bool(
      "pointwise_packable", {at::randn({1, 56, 28, 28}).contiguous(at::MemoryFormat::ChannelsLast),
                             at::randn({224, 56}), at::randn({56, 224})});
  if (nchw || f64 || small)
    fail("pointwise_packable accepted NCHW / fp64 / a 50 KB weight");
  else
    pass("pointwise_packable refusals");
  at::set_num_threads(threads);
}

// pointwise_tile_rows: rows per tile of the fp32 conv_block / mlp tile strategy, balanced over
// the threads (csrc/cpu/conv_block_kernels.cpp balanced_rows; tests/ops/test_cpu_tiles.py has
// the other cases), 0 where the whole-tensor GEMMs run; other dtypes refused.
void check_tile_rows() {
  unsetenv("SWIFTKERN_CPU_TILE_BALANCE");
  unsetenv("SWIFTKERN_CPU_CONV_STRATEGY");
  const int threads = at::get_num_threads();
  auto rows = [](int64_t b, int64_t c, int64_t h, int64_t w, at::ScalarType dt) {
    torch::jit::Stack st{
        at::zeros({b, c, h, w}, dt).contiguous(at::MemoryFormat::ChannelsLast),
        at::zeros({4 * c, c}, dt), at::zeros({c, 4 * c}, dt)};
    op_handle("pointwise_tile_rows").callBoxed(&st);
    return st.at(0).toInt();
  };
  at::set_num_threads(2);
  // XS stage 1 at batch 1: 56 rows as 14 tiles of 4 (28 per thread), not 6 (30 / 26); XS
  // stage 2: 4 tiles of 7; a 4.7 MB weight: the whole-tensor GEMMs
  const int64_t xs1 = rows(1, 48, 56, 56, at::kFloat), xs2 = rows(1, 56, 28, 28, at::kFloat);
  const int64_t wide = rows(1, 384, 7, 7, at::kFloat);
  at::set_num_threads(1);
  const int64_t one = rows(1, 48, 56, 56, at::kFloat);
  at::set_num_threads(threads);
  bool refused = false;
  try {
    rows(1, 8, 4, 4, at::kDouble);
  } catch (const std::exception&) {
    refused = true;
  }
  if (xs1 == 4 && xs2 == 7 && wide == 0 && one == 6 && refused)
    pass("pointwise_tile_rows");
  else
    fail("pointwise_tile_rows: " + std::to_string(xs1) + " " + std::to_string(xs2) + " " +
         std::to_string(wide) + " " + std::to_string(one) + (refused ? "" : " fp64 accepted"));
}

struct OpCase {
  std::string name;
  RefFn ref;
  std::vector<std::function<void()>> known_fwd;
  std::vector<std::function<void()>> known_bwd;
};

}  // namespace

int main() {
  at::manual_seed(0);
  std::vector<OpCase> ops = {
      {"additive_attention", attention_ref, {known_attention}, {known_attention_backward}},
      {"additive_attention_core", attention_core_ref, {known_attention_core}, {}},
      {"dwconv_bn", dwconv_bn_ref, {known_dwconv_bn}, {known_dwconv_bn_backward}},
      {"dwconv_bn_train", dwconv_bn_train_ref, {known_dwconv_bn_train}, {}},
      {"conv_block", conv_block_ref, {known_conv_block}, {known_conv_block_backward}},
      {"conv_block_train", conv_block_train_ref, {known_conv_block_train}, {}},
      {"mlp", mlp_ref, {known_mlp}, {known_mlp_backward}},
      {"mlp_train", mlp_train_ref, {known_mlp_train}, {}},
  };
  // The library must have registered its schemas (findSchemaOrThrow throws otherwise).
  std::set<std::string> tested;
  for (const auto& o : ops) {
    tested.insert("swiftkern_C::" + o.name);
    tested.insert("swiftkern_C::" + o.name + "_backward");
    try {
      op_handle(o.name);
      op_handle(o.name + "_backward");
    } catch (const std::exception& e) {
      fail("schema of " + o.name + " not registered (is swiftkern_ops linked?): " +
           std::string(e.what()).substr(0, 200));
      return 1;
    }
  }
  tested.insert("swiftkern_C::build_info");
  tested.insert("swiftkern_C::cpu_features");
  for (const char* name :
       {"conv_block_packed", "mlp_packed", "pointwise_packable", "additive_attention_packed"})
    tested.insert(std::string("swiftkern_C::") + name);  // check_packed
  tested.insert("swiftkern_C::pointwise_tile_rows");  // check_tile_rows
  int served = 0;
  for (const auto& name :
       c10::Dispatcher::singleton().getAllOpNamesForDispatchKey(c10::DispatchKey::CPU)) {
    if (name.name.rfind("swiftkern_C::", 0) == 0) {
      ++served;
      std::printf("CPU kernel: %s\n", name.name.substr(13).c_str());
      if (!tested.count(name.name)) fail(name.name + " has a CPU kernel but no test here");
    }
  }

  const std::vector<Layout> layouts = {
      {2, 5, 3, 7, false, true, at::kFloat},  {2, 5, 3, 7, true, true, at::kFloat},
      {1, 3, 1, 1, false, true, at::kFloat},  {1, 33, 1, 6, true, true, at::kFloat},
      {2, 4, 5, 2, false, false, at::kFloat}, {2, 5, 3, 4, true, true, at::kDouble},
  };
  for (const auto& o : ops) {
    for (const bool backward : {false, true}) {
      const std::string name = backward ? o.name + "_backward" : o.name;
      if (!has_cpu_kernel(name)) {
        std::printf("SKIP %s: no CPU kernel registered\n", name.c_str());
        continue;
      }
      for (const auto& k : backward ? o.known_bwd : o.known_fwd) k();
      const std::vector<std::string> pools =
          o.name.rfind("additive_attention", 0) == 0
              ? std::vector<std::string>{"sum", "l2", "softmax"}
              : std::vector<std::string>{""};
      for (const auto& l : layouts) {
        for (const auto& pool : pools) {
          Args a = with_pool(random_args(o.name, l), o.name, pool);
          const std::string tag = l.tag() + (pool.empty() ? "" : " pool=" + pool);
          if (!backward) {
            check_forward_random(name, o.ref, a, tag);
            if (l.dtype == at::kFloat && l.with_optionals) {
              check_forward_bf16(name, o.ref, a, tag);
            }
            continue;
          }
          const size_t n = tensor_arg_indices(o.name).size();
          check_backward_random(o.name, o.ref, a, std::vector<bool>(n, true), tag);
          // Partial masks: only x; everything but x.
          std::vector<bool> only_x(n, false), no_x(n, true);
          only_x[0] = true;
          no_x[0] = false;
          check_backward_random(o.name, o.ref, a, only_x, tag);
          check_backward_random(o.name, o.ref, a, no_x, tag);
        }
      }
    }
  }
  check_packed();
  check_tile_rows();
#ifdef SWIFTKERN_HAVE_CPU_SOURCES
  if (served == 0) fail("csrc/cpu has sources but no swiftkern_C op has a CPU kernel");
#endif
  std::printf("%d passed, %d failed (%d swiftkern_C ops with a CPU kernel)\n", g_passes,
              g_failures, served);
  return g_failures == 0 ? 0 : 1;
}
