// Fused multi-head self-attention over field tokens, forward and backward, for CTR shapes:
// T tokens (fields) up to 64, head dim d small (4-32). One (example, head) slice at a time: its
// keys and values are copied into cache-resident buffers, each query row's scores, softmax and
// output are computed in registers, and the (B, H, T, T) probabilities are never written out (the
// backward recomputes them from the saved log-sum-exp). Heads stay in the (B, T, H, d) layout the
// QKV projection produces, read through strides, so no permute copies are made either.
//
// Registered as torch ops (rankers_kernels::field_attention_fwd / _bwd); autograd, the fake
// (meta) kernels and the reference fallback live in rankers/kernels/attention.py.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t W = Vec::size();  // lanes (8 with AVX2, 16 with AVX-512 builds)
constexpr int64_t kMaxTokens = 64;

int64_t round_up(int64_t n) { return (n + W - 1) / W * W; }

inline float hmax(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, v);
}

inline float hsum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, v);
}

// d floats from a strided source into a padded row.
inline void copy_row(const float* src, int64_t stride, int64_t d, float* dst, float scale = 1.f) {
  if (stride == 1) {
    for (int64_t w = 0; w < d; w += W) {
      const int count = static_cast<int>(std::min<int64_t>(W, d - w));
      (Vec::loadu(src + w, count) * Vec(scale)).store(dst + w, count);
    }
  } else {
    for (int64_t c = 0; c < d; ++c) dst[c] = src[c * stride] * scale;
  }
}

// Strided view of a (B, T, H, d) tensor, or of part `which` of a (B, T, 3, H, d) one.
struct View {
  const float* data;
  int64_t sb, st, sh, sd;
  explicit View(const at::Tensor& x)
      : data(x.data_ptr<float>()), sb(x.stride(0)), st(x.stride(1)), sh(x.stride(2)), sd(x.stride(3)) {}
  View(const at::Tensor& qkv, int64_t which)
      : data(qkv.data_ptr<float>() + which * qkv.stride(2)),
        sb(qkv.stride(0)),
        st(qkv.stride(1)),
        sh(qkv.stride(3)),
        sd(qkv.stride(4)) {}
  const float* at(int64_t b, int64_t t, int64_t h) const { return data + b * sb + t * st + h * sh; }
};

// Per-thread scratch for one slice: rows padded to dp floats, score rows to Tp.
struct Scratch {
  int64_t tp, dp;
  std::vector<float> kt, vt, ks, vs, qs, g, p, ds, bias;
  Scratch(int64_t t, int64_t d) : tp(round_up(t)), dp(round_up(d)) {
    kt.assign(d * tp, 0.f);  // K transposed (d, Tp): a query's scores are NK vectors
    vt.assign(d * tp, 0.f);  // V transposed (d, Tp): a row of dP = dO V^T
    ks.assign(t * dp, 0.f);  // K rows: dQ = dS K
    vs.assign(t * dp, 0.f);  // V rows: O = P V
    qs.assign(t * dp, 0.f);  // scale * Q rows: dK = dS^T (scale Q)
    g.assign(t * dp, 0.f);   // dO rows: dV = P^T dO
    p.assign(t * tp, 0.f);   // probabilities (T, Tp), 0 on the padded keys
    ds.assign(t * tp, 0.f);  // dS (T, Tp)
    bias.assign(tp, -std::numeric_limits<float>::infinity());  // -inf on the padded key lanes
    for (int64_t j = 0; j < t; ++j) bias[j] = 0.f;
  }
};

// Scores of one query row (already scaled, dp floats) against every key: NK vectors over the keys.
template <int NK>
inline void scores(const Scratch& s, const float* qrow, int64_t d, Vec* acc) {
  for (int u = 0; u < NK; ++u) acc[u] = Vec::loadu(s.bias.data() + u * W);
  for (int64_t c = 0; c < d; ++c) {
    const Vec qc(qrow[c]);
    const float* kc = s.kt.data() + c * s.tp;
    for (int u = 0; u < NK; ++u) acc[u] = at::vec::fmadd(qc, Vec::loadu(kc + u * W), acc[u]);
  }
}

// R rows at a time of C = alpha A B, with A (n, m) read as a[r * ar + j * aj] and B (m, dp) rows:
// one B row feeds R independent accumulators (R FMA chains in flight rather than one).
template <int R, typename Dst>
inline int64_t rows_times(const float* a, int64_t ar, int64_t aj, const float* b, int64_t dp, int64_t r0, int64_t n,
                          int64_t m, int64_t d, float alpha, Dst dst) {
  int64_t r = r0;
  for (; r + R <= n; r += R) {
    for (int64_t w = 0; w < dp; w += W) {
      Vec acc[R];
      for (int x = 0; x < R; ++x) acc[x] = Vec(0.f);
      for (int64_t j = 0; j < m; ++j) {
        const Vec bj = Vec::loadu(b + j * dp + w);
        const float* aj0 = a + r * ar + j * aj;
        for (int x = 0; x < R; ++x) acc[x] = at::vec::fmadd(Vec(aj0[x * ar]), bj, acc[x]);
      }
      const int count = static_cast<int>(std::min<int64_t>(W, d - w));
      for (int x = 0; x < R; ++x) (acc[x] * Vec(alpha)).store(dst(r + x) + w, count);
    }
  }
  return r;
}

// All n rows: blocks of 8, then 4, 2 and 1.
template <typename Dst>
inline void matmul(const float* a, int64_t ar, int64_t aj, const float* b, int64_t dp, int64_t n, int64_t m,
                   int64_t d, float alpha, Dst dst) {
  int64_t r = rows_times<8>(a, ar, aj, b, dp, 0, n, m, d, alpha, dst);
  r = rows_times<4>(a, ar, aj, b, dp, r, n, m, d, alpha, dst);
  r = rows_times<2>(a, ar, aj, b, dp, r, n, m, d, alpha, dst);
  rows_times<1>(a, ar, aj, b, dp, r, n, m, d, alpha, dst);
}

template <int NK>
void forward_slices(const View& q, const View& k, const View& v, float scale, int64_t T, int64_t H, int64_t d,
                    float* out, float* lse, int64_t begin, int64_t end) {
  Scratch s(T, d);
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    for (int64_t j = 0; j < T; ++j) {
      const float* kj = k.at(b, j, h);
      for (int64_t c = 0; c < d; ++c) s.kt[c * s.tp + j] = kj[c * k.sd];
      copy_row(v.at(b, j, h), v.sd, d, s.vs.data() + j * s.dp);
      copy_row(q.at(b, j, h), q.sd, d, s.qs.data() + j * s.dp, scale);
    }
    for (int64_t i = 0; i < T; ++i) {
      Vec acc[NK];
      scores<NK>(s, s.qs.data() + i * s.dp, d, acc);
      Vec mx = acc[0];
      for (int u = 1; u < NK; ++u) mx = at::vec::maximum(mx, acc[u]);
      const float m = hmax(mx);
      const Vec vm(m);
      Vec sum(0.f);
      for (int u = 0; u < NK; ++u) {
        acc[u] = (acc[u] - vm).exp_u20();
        sum = sum + acc[u];
      }
      const float total = hsum(sum);
      const Vec inv(1.f / total);
      float* pi = s.p.data() + i * s.tp;
      for (int u = 0; u < NK; ++u) (acc[u] * inv).store(pi + u * W);
      lse[bh * T + i] = m + std::log(total);
    }
    matmul(s.p.data(), s.tp, 1, s.vs.data(), s.dp, T, T, d, 1.f,  // O = P V
           [&](int64_t i) { return out + ((b * T + i) * H + h) * d; });
  }
}

template <int NK>
void backward_slices(const View& go, const View& q, const View& k, const View& v, const View& o, const float* lse,
                     float scale, int64_t T, int64_t H, int64_t d, float* dqkv, int64_t begin, int64_t end) {
  Scratch s(T, d);
  std::vector<float> di(T);
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    // dqkv is a contiguous (B, T, 3, H, d): the gradient of the projection's output in one buffer.
    const auto row = [&](int64_t which) {
      return [=](int64_t t) { return dqkv + (((b * T + t) * 3 + which) * H + h) * d; };
    };
    for (int64_t j = 0; j < T; ++j) {
      const float *kj = k.at(b, j, h), *vj = v.at(b, j, h), *oj = o.at(b, j, h);
      float* gj = s.g.data() + j * s.dp;
      copy_row(go.at(b, j, h), go.sd, d, gj);
      copy_row(kj, k.sd, d, s.ks.data() + j * s.dp);
      copy_row(q.at(b, j, h), q.sd, d, s.qs.data() + j * s.dp, scale);
      float dot = 0.f;
      for (int64_t c = 0; c < d; ++c) {
        s.kt[c * s.tp + j] = kj[c * k.sd];
        s.vt[c * s.tp + j] = vj[c * v.sd];
        dot += gj[c] * oj[c * o.sd];
      }
      di[j] = dot;  // rowsum(dO O) = rowsum(dP P)
    }
    for (int64_t i = 0; i < T; ++i) {
      Vec acc[NK], dp[NK];
      scores<NK>(s, s.qs.data() + i * s.dp, d, acc);
      const Vec vl(lse[bh * T + i]);
      for (int u = 0; u < NK; ++u) {
        acc[u] = (acc[u] - vl).exp_u20();  // P, 0 on the padded lanes
        dp[u] = Vec(0.f);
      }
      const float* gi = s.g.data() + i * s.dp;
      for (int64_t c = 0; c < d; ++c) {  // dP = dO V^T
        const Vec gc(gi[c]);
        const float* vc = s.vt.data() + c * s.tp;
        for (int u = 0; u < NK; ++u) dp[u] = at::vec::fmadd(gc, Vec::loadu(vc + u * W), dp[u]);
      }
      const Vec vd(di[i]);
      float *pi = s.p.data() + i * s.tp, *dsi = s.ds.data() + i * s.tp;
      for (int u = 0; u < NK; ++u) {
        acc[u].store(pi + u * W);
        (acc[u] * (dp[u] - vd)).store(dsi + u * W);  // dS = P (dP - rowsum(dO O))
      }
    }
    matmul(s.ds.data(), s.tp, 1, s.ks.data(), s.dp, T, T, d, scale, row(0));  // dQ = scale dS K
    matmul(s.ds.data(), 1, s.tp, s.qs.data(), s.dp, T, T, d, 1.f, row(1));    // dK = dS^T (scale Q)
    matmul(s.p.data(), 1, s.tp, s.g.data(), s.dp, T, T, d, 1.f, row(2));      // dV = P^T dO
  }
}

void check(const at::Tensor& x, const char* name, int64_t dims) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == dims, "field_attention: ", name,
              " must be a float32 CPU tensor of ", dims, " dims, got ", x.scalar_type(), " ", x.sizes(), " on ",
              x.device());
}

// NK = vectors per score row: up to 64 tokens, at 4 (NEON), 8 (AVX2) or 16 lanes.
#define DISPATCH_NK(T, ...)                                                                          \
  switch (round_up(T) / W) {                                                                         \
    case 1: { constexpr int NK = 1; __VA_ARGS__; break; } \
    case 2: { constexpr int NK = 2; __VA_ARGS__; break; } \
    case 3: { constexpr int NK = 3; __VA_ARGS__; break; } \
    case 4: { constexpr int NK = 4; __VA_ARGS__; break; } \
    case 5: { constexpr int NK = 5; __VA_ARGS__; break; } \
    case 6: { constexpr int NK = 6; __VA_ARGS__; break; } \
    case 7: { constexpr int NK = 7; __VA_ARGS__; break; } \
    case 8: { constexpr int NK = 8; __VA_ARGS__; break; } \
    case 9: { constexpr int NK = 9; __VA_ARGS__; break; } \
    case 10: { constexpr int NK = 10; __VA_ARGS__; break; } \
    case 11: { constexpr int NK = 11; __VA_ARGS__; break; } \
    case 12: { constexpr int NK = 12; __VA_ARGS__; break; } \
    case 13: { constexpr int NK = 13; __VA_ARGS__; break; } \
    case 14: { constexpr int NK = 14; __VA_ARGS__; break; } \
    case 15: { constexpr int NK = 15; __VA_ARGS__; break; } \
    case 16: { constexpr int NK = 16; __VA_ARGS__; break; } \
    default: TORCH_CHECK(false, "field_attention: ", T, " tokens, at most ", kMaxTokens, " supported"); \
  }

int64_t grain(int64_t T) { return std::max<int64_t>(1, 4096 / (T * T)); }

// qkv: (B, T, 3, H, d), the projection's output viewed per head (any strides).
// Returns the output (B, T, H, d) and the log-sum-exp of each score row (B, H, T).
std::tuple<at::Tensor, at::Tensor> field_attention_fwd(const at::Tensor& qkv, double scale) {
  check(qkv, "qkv", 5);
  TORCH_CHECK(qkv.size(2) == 3, "field_attention: qkv must be (B, T, 3, H, d), got ", qkv.sizes());
  const int64_t B = qkv.size(0), T = qkv.size(1), H = qkv.size(3), d = qkv.size(4);
  TORCH_CHECK(T >= 1 && T <= kMaxTokens, "field_attention: ", T, " tokens, expected 1 to ", kMaxTokens);
  auto out = at::empty({B, T, H, d}, qkv.options());
  auto lse = at::empty({B, H, T}, qkv.options());
  const View vq(qkv, 0), vk(qkv, 1), vv(qkv, 2);
  float* po = out.data_ptr<float>();
  float* pl = lse.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, B * H, grain(T), [&](int64_t begin, int64_t end) {
    DISPATCH_NK(T, forward_slices<NK>(vq, vk, vv, sc, T, H, d, po, pl, begin, end));
  });
  return {out, lse};
}

// The gradient of the projection's output, (B, T, 3, H, d) contiguous, from the output's.
at::Tensor field_attention_bwd(const at::Tensor& grad, const at::Tensor& qkv, const at::Tensor& out,
                               const at::Tensor& lse, double scale) {
  check(qkv, "qkv", 5);
  check(grad, "grad", 4);
  check(out, "out", 4);
  const int64_t B = qkv.size(0), T = qkv.size(1), H = qkv.size(3), d = qkv.size(4);
  TORCH_CHECK(T >= 1 && T <= kMaxTokens && qkv.size(2) == 3, "field_attention: qkv ", qkv.sizes());
  const std::vector<int64_t> shape{B, T, H, d};
  TORCH_CHECK(grad.sizes() == shape && out.sizes() == shape, "field_attention: grad ", grad.sizes(), " and out ",
              out.sizes(), " must be (B, T, H, d) = ", shape);
  const auto lse_c = lse.contiguous();
  TORCH_CHECK(lse_c.scalar_type() == at::kFloat && lse_c.numel() == B * H * T, "field_attention: lse ",
              lse.sizes(), " must be (B, H, T)");
  auto dqkv = at::empty({B, T, 3, H, d}, qkv.options());
  const View vg(grad), vq(qkv, 0), vk(qkv, 1), vv(qkv, 2), vo(out);
  const float* pl = lse_c.data_ptr<float>();
  float* pd = dqkv.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, B * H, grain(T), [&](int64_t begin, int64_t end) {
    DISPATCH_NK(T, backward_slices<NK>(vg, vq, vk, vv, vo, pl, sc, T, H, d, pd, begin, end));
  });
  return dqkv;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rankers_kernels, m) {
  m.def("field_attention_fwd(Tensor qkv, float scale) -> (Tensor, Tensor)");
  m.def("field_attention_bwd(Tensor grad, Tensor qkv, Tensor out, Tensor lse, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(rankers_kernels, CPU, m) {
  m.impl("field_attention_fwd", &field_attention_fwd);
  m.impl("field_attention_bwd", &field_attention_bwd);
}
