// A GRU over packed, time-major sequences (rows sorted by length, so the rows still inside their
// history at step t are a prefix of n_t rows), optionally driven by attention scores: DIEN's
// interest extractor (GRU) and interest evolving layer (AUGRU, AGRU). One op runs every step of the
// recurrence: per step one addmm for the hidden projection and one vectorised pass for the gate
// arithmetic (forward), one addmm and one pass (backward); the weight gradient is one matmul over
// all steps. Gates follow torch.nn.GRU: r, z = sigmoid, n = tanh(x_n + r * (W_hn h + b_hn)), and
// h' = h + u (n - h) with u = 1 - z (GRU), a (1 - z) (AUGRU) or a (AGRU).
//
// Registered as torch ops (rankers_kernels::gru_fwd / gru_bwd); the packing, autograd, fake
// kernels and the reference fallback live in rankers/kernels/gru.py.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t W8 = Vec::size();
enum Mode : int64_t { kGRU = 0, kAUGRU = 1, kAGRU = 2 };

inline Vec sigmoid(const Vec& x) { return Vec(1.f) / (Vec(1.f) + x.neg().exp()); }

// Start of each step's rows in the packed order.
std::vector<int64_t> offsets(const at::Tensor& batch_sizes, int64_t total) {
  TORCH_CHECK(batch_sizes.device().is_cpu() && batch_sizes.scalar_type() == at::kLong && batch_sizes.dim() == 1,
              "gru: batch_sizes must be a 1-d int64 CPU tensor, got ", batch_sizes.scalar_type(), " ",
              batch_sizes.sizes());
  const int64_t steps = batch_sizes.size(0);
  const int64_t* bs = batch_sizes.data_ptr<int64_t>();
  std::vector<int64_t> off(steps + 1, 0);
  for (int64_t t = 0; t < steps; ++t) {
    TORCH_CHECK(bs[t] > 0 && (t == 0 || bs[t] <= bs[t - 1]), "gru: batch_sizes must be positive and "
                "nonincreasing (rows sorted by length), got ", bs[t], " at step ", t);
    off[t + 1] = off[t] + bs[t];
  }
  TORCH_CHECK(off[steps] == total, "gru: batch_sizes sum to ", off[steps], ", the packed inputs have ", total,
              " rows");
  return off;
}

void check(const at::Tensor& x, const char* name, int64_t dims) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == dims && x.is_contiguous(),
              "gru: ", name, " must be a contiguous float32 CPU tensor of ", dims, " dims, got ", x.scalar_type(),
              " ", x.sizes());
}

// Forward: gi (N, 3W) packed input projections (input bias included), w_hh (3W, W), b_hh (3W),
// scores (N) or empty, mode. Returns the states (N, W) and the gates (N, 4W): r, z, n, W_hn h + b_hn.
std::tuple<at::Tensor, at::Tensor> gru_fwd(const at::Tensor& gi, const at::Tensor& batch_sizes,
                                           const at::Tensor& w_hh, const at::Tensor& b_hh,
                                           const at::Tensor& scores, int64_t mode) {
  check(gi, "gi", 2);
  check(w_hh, "w_hh", 2);
  check(b_hh, "b_hh", 1);
  const int64_t N = gi.size(0), W = w_hh.size(1);
  TORCH_CHECK(gi.size(1) == 3 * W && w_hh.size(0) == 3 * W && b_hh.size(0) == 3 * W, "gru: gi ", gi.sizes(),
              ", w_hh ", w_hh.sizes(), " and b_hh ", b_hh.sizes(), " must be (N, 3W), (3W, W), (3W)");
  TORCH_CHECK(mode >= kGRU && mode <= kAGRU, "gru: mode ", mode, ", expected 0 (GRU), 1 (AUGRU) or 2 (AGRU)");
  const bool scored = mode != kGRU;
  if (scored) check(scores, "scores", 1);
  TORCH_CHECK(!scored || scores.size(0) == N, "gru: scores ", scores.sizes(), " must be (N) = (", N, ")");
  const auto off = offsets(batch_sizes, N);
  const int64_t steps = batch_sizes.size(0), n0 = steps ? batch_sizes.data_ptr<int64_t>()[0] : 0;
  auto states = at::empty({N, W}, gi.options());
  auto gates = at::empty({N, 4 * W}, gi.options());
  auto gh = at::empty({std::max<int64_t>(n0, 1), 3 * W}, gi.options());
  const auto w_t = w_hh.t();
  const float *pgi = gi.data_ptr<float>(), *pb = b_hh.data_ptr<float>();
  const float* pa = scored ? scores.data_ptr<float>() : nullptr;
  float *ps = states.data_ptr<float>(), *pg = gates.data_ptr<float>(), *pgh = gh.data_ptr<float>();
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t n = off[t + 1] - off[t];
    if (t > 0) {
      auto rows = gh.narrow(0, 0, n);
      at::addmm_out(rows, b_hh, states.narrow(0, off[t - 1], n), w_t);
    }
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t p = off[t] + i;
        const float* x = pgi + p * 3 * W;
        const float* g = t > 0 ? pgh + i * 3 * W : pb;  // h = 0 at the first step: W_hh h + b = b
        const float* h = t > 0 ? ps + (off[t - 1] + i) * W : nullptr;
        float* out = ps + p * W;
        float* saved = pg + p * 4 * W;
        const Vec a(scored ? pa[p] : 0.f);
        for (int64_t w = 0; w < W; w += W8) {
          const int c = static_cast<int>(std::min<int64_t>(W8, W - w));
          const Vec r = sigmoid(Vec::loadu(x + w, c) + Vec::loadu(g + w, c));
          const Vec z = sigmoid(Vec::loadu(x + W + w, c) + Vec::loadu(g + W + w, c));
          const Vec hn = Vec::loadu(g + 2 * W + w, c);
          const Vec nn = (Vec::loadu(x + 2 * W + w, c) + r * hn).tanh();
          const Vec hv = h ? Vec::loadu(h + w, c) : Vec(0.f);
          const Vec u = mode == kGRU ? Vec(1.f) - z : mode == kAUGRU ? a * (Vec(1.f) - z) : a;
          (hv + u * (nn - hv)).store(out + w, c);
          r.store(saved + w, c);
          z.store(saved + W + w, c);
          nn.store(saved + 2 * W + w, c);
          hn.store(saved + 3 * W + w, c);
        }
      }
    });
  }
  return {states, gates};
}

// Backward: the gradient of the states (N, W) -> those of gi (N, 3W), w_hh, b_hh and the scores.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_bwd(const at::Tensor& grad_in,
                                                                   const at::Tensor& states,
                                                                   const at::Tensor& gates,
                                                                   const at::Tensor& batch_sizes,
                                                                   const at::Tensor& w_hh,
                                                                   const at::Tensor& scores, int64_t mode) {
  const auto grad = grad_in.contiguous();
  check(grad, "grad", 2);
  check(states, "states", 2);
  check(gates, "gates", 2);
  check(w_hh, "w_hh", 2);
  const int64_t N = states.size(0), W = states.size(1);
  TORCH_CHECK(grad.sizes() == states.sizes() && gates.size(0) == N && gates.size(1) == 4 * W,
              "gru: grad ", grad.sizes(), ", states ", states.sizes(), " and gates ", gates.sizes(), " disagree");
  const bool scored = mode != kGRU;
  if (scored) check(scores, "scores", 1);
  const auto off = offsets(batch_sizes, N);
  const int64_t steps = batch_sizes.size(0), n0 = steps ? batch_sizes.data_ptr<int64_t>()[0] : 0;
  auto dgi = at::empty({N, 3 * W}, states.options());
  auto dgh = at::empty({N, 3 * W}, states.options());
  auto hprev = at::empty({N, W}, states.options());  // h_{t-1} of every packed row (0 at t = 0)
  auto dscores = scored ? at::zeros({N}, states.options()) : at::empty({0}, states.options());
  auto carry = at::zeros({std::max<int64_t>(n0, 1), W}, states.options());  // dL/dh_t from step t + 1
  const float *pd = grad.data_ptr<float>(), *ps = states.data_ptr<float>(), *pg = gates.data_ptr<float>();
  const float* pa = scored ? scores.data_ptr<float>() : nullptr;
  float *pdgi = dgi.data_ptr<float>(), *pdgh = dgh.data_ptr<float>(), *ph = hprev.data_ptr<float>();
  float *pc = carry.data_ptr<float>(), *pda = scored ? dscores.data_ptr<float>() : nullptr;
  for (int64_t t = steps - 1; t >= 0; --t) {
    const int64_t n = off[t + 1] - off[t];
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t p = off[t] + i;
        const float* h = t > 0 ? ps + (off[t - 1] + i) * W : nullptr;
        const float* saved = pg + p * 4 * W;
        float* c_i = pc + i * W;
        float* hp = ph + p * W;
        const float a = scored ? pa[p] : 0.f;
        Vec da(0.f);
        for (int64_t w = 0; w < W; w += W8) {
          const int c = static_cast<int>(std::min<int64_t>(W8, W - w));
          const Vec dh = Vec::loadu(pd + p * W + w, c) + Vec::loadu(c_i + w, c);
          const Vec r = Vec::loadu(saved + w, c), z = Vec::loadu(saved + W + w, c);
          const Vec nn = Vec::loadu(saved + 2 * W + w, c), hn = Vec::loadu(saved + 3 * W + w, c);
          const Vec hv = h ? Vec::loadu(h + w, c) : Vec(0.f);
          const Vec one(1.f), va(a);
          const Vec u = mode == kGRU ? one - z : mode == kAUGRU ? va * (one - z) : va;
          const Vec du = dh * (nn - hv);
          const Vec dz = mode == kGRU    ? Vec(0.f) - du * z * (one - z)
                         : mode == kAUGRU ? Vec(0.f) - du * va * z * (one - z)
                                          : Vec(0.f);
          if (mode == kAUGRU) da = da + du * (one - z);  // lanes past W load as 0, so du is 0 there
          if (mode == kAGRU) da = da + du;
          const Vec dn = dh * u * (one - nn * nn);  // through tanh
          const Vec dr = dn * hn * r * (one - r);
          float* gi_row = pdgi + p * 3 * W;
          float* gh_row = pdgh + p * 3 * W;
          dr.store(gi_row + w, c);
          dz.store(gi_row + W + w, c);
          dn.store(gi_row + 2 * W + w, c);
          dr.store(gh_row + w, c);
          dz.store(gh_row + W + w, c);
          (dn * r).store(gh_row + 2 * W + w, c);
          (dh * (one - u)).store(c_i + w, c);  // the direct path h -> h'
          hv.store(hp + w, c);
        }
        if (scored) pda[p] = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, da);
      }
    });
    if (t > 0) carry.narrow(0, 0, n).addmm_(dgh.narrow(0, off[t], n), w_hh);  // through W_hh h
  }
  auto dw = at::mm(dgh.t(), hprev);  // (3W, W): every step in one product
  auto db = dgh.sum(0);
  return {dgi, dw, db, dscores};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rankers_kernels, m) {
  m.def("gru_fwd(Tensor gi, Tensor batch_sizes, Tensor w_hh, Tensor b_hh, Tensor scores, int mode) "
        "-> (Tensor, Tensor)");
  m.def("gru_bwd(Tensor grad, Tensor states, Tensor gates, Tensor batch_sizes, Tensor w_hh, Tensor scores, "
        "int mode) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rankers_kernels, CPU, m) {
  m.impl("gru_fwd", &gru_fwd);
  m.impl("gru_bwd", &gru_bwd);
}
