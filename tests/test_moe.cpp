// Sparse MoE: the fast gate against the naive one (full softmax / sigmoid + full sort) for every
// routing at E in {1, 2, 8, 60, 256}, k in {1, 2, 8}, N in {1, 7, 513}; ties; router figures;
// the capacity rule; the MoE feed-forward against a dense per-token loop (float, double, bf16
// weights, shared expert, streaming and gemm paths); 1 thread == 2 threads bitwise; bad
// arguments.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "effattn/ops/moe/moe.hpp"
#include "test_util.hpp"

namespace {

using effattn::bf16;
using effattn::Error;
using effattn::Shape;
using effattn::Tensor;
using effattn::TensorView;
using effattn::testing::max_abs_diff;
using effattn::testing::random_tensor;
namespace moe = effattn::moe;

// Logits whose values are well separated (a random permutation of a grid, plus small noise),
// so that float rounding of the softmax can never tie two experts.
template <class T>
Tensor<T> separated_logits(int64_t N, int64_t E, uint64_t seed) {
  Tensor<T> l({N, E});
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> noise(-0.1, 0.1);
  std::vector<int> perm(E);
  const double gap = 8.0 / double(E);
  for (int64_t n = 0; n < N; ++n) {
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int64_t e = 0; e < E; ++e) l(n, e) = T((perm[e] - E / 2.0 + noise(rng)) * gap);
  }
  return l;
}

struct Routing {
  const char* name;
  moe::GateParams p;
  bool bias;
};

// Every routing in use, for E experts and k slots (group settings adapted to E).
std::vector<Routing> routings(int64_t E, int64_t k) {
  std::vector<Routing> r;
  r.push_back({"softmax", moe::GateParams::softmax_topk(k, false), false});
  r.push_back({"softmax_renorm", moe::GateParams::softmax_topk(k, true), false});
  r.push_back({"mixtral", moe::GateParams::mixtral(k), false});
  moe::GateParams sig{moe::ScoreFunc::kSigmoid, k, false};
  sig.routed_scaling_factor = 1.5;
  r.push_back({"sigmoid", sig, false});
  r.push_back({"sigmoid_bias_renorm", moe::GateParams::deepseek_v3(k, 1, 1, 2.5), true});
  // Group-limited: the largest n_group dividing E with at least k experts in the kept groups.
  for (int64_t g : {8, 6, 4, 2}) {
    if (E % g != 0 || g > E) continue;
    const int64_t tg = std::max<int64_t>(1, g / 2);
    if (k > tg * (E / g)) continue;
    r.push_back({"deepseek_grouped", moe::GateParams::deepseek_v3(k, g, tg, 2.5), true});
    break;
  }
  return r;
}

template <class T>
void expect_gate_matches_naive(int64_t N, int64_t E, int64_t k, uint64_t seed, double tol) {
  const Tensor<T> logits = std::is_same_v<T, float> ? separated_logits<T>(N, E, seed)
                                                    : random_tensor<T>({N, E}, seed, -4.0, 4.0);
  const Tensor<T> bias = random_tensor<T>({E}, seed + 1, -0.3, 0.3);
  for (const Routing& r : routings(E, k)) {
    SCOPED_TRACE(std::string(r.name) + " N=" + std::to_string(N) + " E=" + std::to_string(E) +
                 " k=" + std::to_string(k));
    const TensorView<const T> b = r.bias ? bias.view() : TensorView<const T>{};
    Tensor<int32_t> idx({N, k}), idx_n({N, k});
    Tensor<T> w({N, k}), w_n({N, k}), pr({N, E}), pr_n({N, E});
    moe::moe_gate<T>(logits, b, idx, w, r.p, pr);
    moe::naive::gate<T>(logits, b, idx_n, w_n, r.p, pr_n);
    ASSERT_EQ(0, std::memcmp(idx.data(), idx_n.data(), sizeof(int32_t) * N * k));
    EXPECT_LE(max_abs_diff(w, w_n), tol);
    EXPECT_LE(max_abs_diff(pr, pr_n), tol);
    // Without probs the weights are the same.
    Tensor<int32_t> idx2({N, k});
    Tensor<T> w2({N, k});
    moe::moe_gate<T>(logits, b, idx2, w2, r.p);
    EXPECT_EQ(0, std::memcmp(idx2.data(), idx.data(), sizeof(int32_t) * N * k));
    EXPECT_LE(max_abs_diff(w2, w), tol);
  }
}

TEST(MoeGate, EveryRoutingMatchesNaive) {
  uint64_t seed = 100;
  for (int64_t E : {1, 2, 8, 60, 256}) {
    for (int64_t k : {1, 2, 8}) {
      if (k > E) continue;
      for (int64_t N : {1, 7, 513}) {
        expect_gate_matches_naive<double>(N, E, k, seed++, 1e-12);
        expect_gate_matches_naive<float>(N, E, k, seed++, 2e-6);
      }
    }
  }
}

TEST(MoeGate, TiesGoToTheLowerIndex) {
  // softmax: experts 1, 2, 4 tie at 3.
  const Tensor<float> l = [] {
    Tensor<float> t({1, 5});
    const float v[5] = {1, 3, 3, 0, 3};
    std::copy(v, v + 5, t.data());
    return t;
  }();
  Tensor<int32_t> idx({1, 3});
  Tensor<float> w({1, 3});
  moe::moe_gate<float>(l, {}, idx, w, moe::GateParams::softmax_topk(3, false));
  EXPECT_EQ(idx(0, 0), 1);
  EXPECT_EQ(idx(0, 1), 2);
  EXPECT_EQ(idx(0, 2), 4);
  EXPECT_FLOAT_EQ(w(0, 0), w(0, 2));
  Tensor<int32_t> idx2({1, 2});
  Tensor<float> w2({1, 2});
  moe::moe_gate<float>(l, {}, idx2, w2, moe::GateParams::mixtral(2));
  EXPECT_EQ(idx2(0, 0), 1);
  EXPECT_EQ(idx2(0, 1), 2);
  EXPECT_FLOAT_EQ(w2(0, 0), 0.5f);

  // Grouped sigmoid: 4 groups of 2 with equal group scores; the lower groups win, then the
  // lower experts within them.
  Tensor<float> z({1, 8});  // all logits 0 -> s = 0.5 everywhere
  Tensor<int32_t> gi({1, 3});
  Tensor<float> gw({1, 3});
  moe::moe_gate<float>(z, {}, gi, gw, moe::GateParams::deepseek_v3(3, 4, 2, 1.0));
  EXPECT_EQ(gi(0, 0), 0);
  EXPECT_EQ(gi(0, 1), 1);
  EXPECT_EQ(gi(0, 2), 2);
  for (int j = 0; j < 3; ++j) EXPECT_FLOAT_EQ(gw(0, j), 1.0f / 3.0f);
  // Group-limited routing can pass over a better expert in a losing group.
  Tensor<float> b({8});
  const float bv[8] = {0.0f, 0.0f, 0.9f, -0.9f, 0.1f, 0.1f, 0.05f, 0.05f};
  std::copy(bv, bv + 8, b.data());
  Tensor<int32_t> gi2({1, 2});
  Tensor<float> gw2({1, 2});
  moe::moe_gate<float>(z, b, gi2, gw2, moe::GateParams::deepseek_v3(2, 4, 2, 1.0));
  // Group scores: g0 = 1.0, g1 = 1.0 (0.9 - 0.9 + 2 * 0.5), g2 = 1.2, g3 = 1.1 -> keep g2, g3.
  EXPECT_EQ(gi2(0, 0), 4);
  EXPECT_EQ(gi2(0, 1), 5);
}

TEST(MoeGate, MinusInfinityMasksAnExpert) {
  Tensor<float> l({2, 4});
  const float v[8] = {-INFINITY, 1.0f, 0.5f, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
  std::copy(v, v + 8, l.data());
  Tensor<int32_t> idx({2, 2});
  Tensor<float> w({2, 2}), pr({2, 4});
  moe::moe_gate<float>(l, {}, idx, w, moe::GateParams::softmax_topk(2, false), pr);
  EXPECT_EQ(idx(0, 0), 1);
  EXPECT_EQ(idx(0, 1), 2);
  EXPECT_NEAR(w(0, 0) + w(0, 1), 1.0f, 1e-6);
  EXPECT_EQ(pr(0, 0), 0.0f);
  // A fully masked row: the lowest indices, zero weights, no NaN.
  EXPECT_EQ(idx(1, 0), 0);
  EXPECT_EQ(idx(1, 1), 1);
  EXPECT_EQ(w(1, 0), 0.0f);
  EXPECT_EQ(w(1, 1), 0.0f);
}

TEST(MoeGate, StridedLogitsAndOutputs) {
  const int64_t N = 37, E = 16, k = 4;
  const Tensor<float> big = separated_logits<float>(N, 2 * E, 7);
  const TensorView<const float> l = TensorView<const float>(big.view()).slice(1, 3, 3 + E);
  Tensor<int32_t> idx_big({N, 2 * k}), idx({N, k});
  Tensor<float> w_big({N, 2 * k}), w({N, k});
  const auto p = moe::GateParams::softmax_topk(k, true);
  moe::moe_gate<float>(l, {}, idx_big.view().slice(1, 0, k), w_big.view().slice(1, k, 2 * k), p);
  moe::naive::gate<float>(l, {}, idx, w, p);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < k; ++j) {
      EXPECT_EQ(idx_big(n, j), idx(n, j));
      EXPECT_NEAR(w_big(n, k + j), w(n, j), 1e-6);
    }
  }
}

TEST(MoeGate, OneThreadEqualsTwoBitwise) {
  const int64_t N = 513, E = 256, k = 8;
  const Tensor<float> l = random_tensor<float>({N, E}, 3, -4, 4);
  const Tensor<float> b = random_tensor<float>({E}, 4, -0.2, 0.2);
  for (moe::GateParams p :
       {moe::GateParams::softmax_topk(k, false), moe::GateParams::deepseek_v3(k, 8, 4, 2.5)}) {
    const TensorView<const float> bias =
        p.score_func == moe::ScoreFunc::kSigmoid ? b.view() : TensorView<const float>{};
    Tensor<int32_t> i1({N, k}), i2({N, k});
    Tensor<float> w1({N, k}), w2({N, k}), p1({N, E}), p2({N, E});
    p.num_threads = 1;
    moe::moe_gate<float>(l, bias, i1, w1, p, p1);
    p.num_threads = 2;
    moe::moe_gate<float>(l, bias, i2, w2, p, p2);
    EXPECT_EQ(0, std::memcmp(i1.data(), i2.data(), sizeof(int32_t) * N * k));
    EXPECT_EQ(0, std::memcmp(w1.data(), w2.data(), sizeof(float) * N * k));
    EXPECT_EQ(0, std::memcmp(p1.data(), p2.data(), sizeof(float) * N * E));
  }
}

TEST(MoeGate, RouterStatsMatchNaive) {
  for (int64_t E : {2, 8, 60}) {
    for (int64_t k : {1, 2}) {
      const int64_t N = 77;
      const Tensor<double> l = random_tensor<double>({N, E}, 11 + E + k, -3, 3);
      for (const Routing& r : routings(E, k)) {
        Tensor<int32_t> idx({N, k});
        Tensor<double> w({N, k});
        moe::naive::gate<double>(l, {}, idx, w, r.p);
        const auto s = moe::router_stats<double>(l, idx, r.p);
        const auto sn = moe::naive::router_stats<double>(l, idx, r.p);
        EXPECT_EQ(s.counts, sn.counts);
        EXPECT_NEAR(s.aux_loss, sn.aux_loss, 1e-12);
        EXPECT_NEAR(s.aux_loss_hf, sn.aux_loss_hf, 1e-12);
        EXPECT_NEAR(s.aux_loss_hf, double(k) * s.aux_loss, 1e-12);
        EXPECT_NEAR(s.z_loss, sn.z_loss, 1e-12);
        for (int64_t e = 0; e < E; ++e) {
          EXPECT_NEAR(s.mean_prob[e], sn.mean_prob[e], 1e-13);
          EXPECT_NEAR(s.fraction[e], sn.fraction[e], 1e-15);
        }
      }
    }
  }
  // Perfect balance with uniform probabilities gives aux_loss = 1.
  Tensor<double> z({4, 4});
  Tensor<int32_t> idx({4, 1});
  for (int n = 0; n < 4; ++n) idx(n, 0) = n;
  const auto s = moe::router_stats<double>(z, idx, moe::GateParams::switch_top1());
  EXPECT_NEAR(s.aux_loss, 1.0, 1e-15);
  EXPECT_NEAR(s.z_loss, std::log(4.0) * std::log(4.0), 1e-14);
}

TEST(MoeGate, CombineWeightsAreDense) {
  const int64_t N = 9, E = 6, k = 2;
  const Tensor<float> l = separated_logits<float>(N, E, 5);
  Tensor<int32_t> idx({N, k});
  Tensor<float> w({N, k}), c({N, E});
  c.fill(7.0f);  // overwritten
  moe::moe_gate<float>(l, {}, idx, w, moe::GateParams::mixtral(k));
  moe::combine_weights<float>(idx, w, c);
  for (int64_t n = 0; n < N; ++n) {
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) sum += c(n, e);
    EXPECT_NEAR(sum, 1.0, 1e-6);
    EXPECT_EQ(c(n, idx(n, 0)), w(n, 0));
  }
}

// --- dispatch and capacity -------------------------------------------------------------------

TEST(MoeDispatch, CapacityDropsSlotMajorAndReportsIt) {
  // N = 4 tokens, k = 2, E = 2, capacity 2. Priority: slot 0 of tokens 0..3, then slot 1.
  Tensor<int32_t> idx({4, 2});
  const int32_t v[8] = {0, 1, 0, 1, 0, 1, 1, 0};
  std::copy(v, v + 8, idx.data());
  const moe::DispatchPlan p = moe::make_dispatch_plan(idx, 2, 2);
  // slot 0: t0 -> e0, t1 -> e0, t2 -> e0 dropped (full), t3 -> e1;
  // slot 1: t0 -> e1, t1 -> e1 dropped, t2 -> e1 dropped, t3 -> e0 dropped.
  EXPECT_EQ(p.counts, (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(p.dropped, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(p.num_dropped, 4);
  EXPECT_EQ(p.offsets, (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(p.row_token, (std::vector<int32_t>{0, 1, 3, 0}));
  EXPECT_EQ(p.row_slot, (std::vector<int32_t>{0, 0, 0, 1}));
  const bool kept[8] = {true, true, true, false, false, false, true, false};
  for (int n = 0; n < 4; ++n)
    for (int s = 0; s < 2; ++s) EXPECT_EQ(p.kept(n, s), kept[n * 2 + s]) << n << "," << s;
  // Same input, same plan (deterministic); no capacity keeps everything, grouped by expert.
  const moe::DispatchPlan p2 = moe::make_dispatch_plan(idx, 2, 2);
  EXPECT_EQ(p2.slot_row, p.slot_row);
  const moe::DispatchPlan all = moe::make_dispatch_plan(idx, 2);
  EXPECT_EQ(all.num_dropped, 0);
  EXPECT_EQ(all.row_token, (std::vector<int32_t>{0, 1, 2, 3, 3, 0, 1, 2}));
  EXPECT_EQ(all.row_slot, (std::vector<int32_t>{0, 0, 0, 1, 0, 1, 1, 1}));
}

TEST(MoeDispatch, CapacityFormula) {
  moe::MoeFfnParams p;
  EXPECT_EQ(moe::expert_capacity(100, 2, 8, p), -1);
  p.capacity_factor = 1.0;
  EXPECT_EQ(moe::expert_capacity(100, 2, 8, p), 25);
  p.capacity_factor = 1.25;
  EXPECT_EQ(moe::expert_capacity(100, 2, 8, p), 32);  // ceil(31.25)
  p.capacity = 3;
  EXPECT_EQ(moe::expert_capacity(100, 2, 8, p), 3);
}

// --- the feed-forward -----------------------------------------------------------------------

template <class T, class W>
struct Experts {
  Tensor<W> wg, wu, wd, sg, su, sd;
  moe::ExpertWeights<W> ex() const { return {wg, wu, wd}; }
  moe::SharedExpertWeights<W> shared() const {
    if (sg.empty()) return {};
    return {sg, su, sd};
  }
};

template <class W>
Tensor<W> weights(const Shape& s, uint64_t seed, double scale) {
  const Tensor<double> t = random_tensor<double>(s, seed, -scale, scale);
  Tensor<W> out(s);
  for (int64_t i = 0; i < t.numel(); ++i) {
    if constexpr (std::is_same_v<W, bf16>) {
      out.data()[i] = bf16(static_cast<float>(t.data()[i]));
    } else {
      out.data()[i] = static_cast<W>(t.data()[i]);
    }
  }
  return out;
}

template <class T, class W>
Experts<T, W> make_experts(int64_t E, int64_t d, int64_t f, int64_t fs, uint64_t seed) {
  Experts<T, W> x;
  const double sd = 1.0 / std::sqrt(double(d)), sf = 1.0 / std::sqrt(double(f));
  x.wg = weights<W>({E, d, f}, seed, sd);
  x.wu = weights<W>({E, d, f}, seed + 1, sd);
  x.wd = weights<W>({E, f, d}, seed + 2, sf);
  if (fs > 0) {
    x.sg = weights<W>({d, fs}, seed + 3, sd);
    x.su = weights<W>({d, fs}, seed + 4, sd);
    x.sd = weights<W>({fs, d}, seed + 5, 1.0 / std::sqrt(double(fs)));
  }
  return x;
}

// Routing for N tokens over E experts (a real gate on random logits; k distinct experts).
template <class T>
void route(int64_t N, int64_t E, int64_t k, uint64_t seed, Tensor<int32_t>& idx, Tensor<T>& w) {
  const Tensor<T> l = random_tensor<T>({N, E}, seed, -2, 2);
  idx = Tensor<int32_t>({N, k});
  w = Tensor<T>({N, k});
  moe::moe_gate<T>(l, {}, idx, w, moe::GateParams::softmax_topk(k, false));
}

template <class T, class W>
void expect_ffn_matches_naive(int64_t N, int64_t E, int64_t k, int64_t d, int64_t f, int64_t fs,
                              moe::MoeFfnParams p, double tol, uint64_t seed) {
  SCOPED_TRACE("N=" + std::to_string(N) + " E=" + std::to_string(E) + " k=" + std::to_string(k) +
               " d=" + std::to_string(d) + " f=" + std::to_string(f) + " fs=" + std::to_string(fs) +
               " skinny=" + std::to_string(p.skinny_max_rows) +
               " cap=" + std::to_string(p.capacity_factor));
  const auto ex = make_experts<T, W>(E, d, f, fs, seed);
  const Tensor<T> x = random_tensor<T>({N, d}, seed + 10, -1, 1);
  Tensor<int32_t> idx;
  Tensor<T> w;
  route<T>(N, E, k, seed + 11, idx, w);
  Tensor<T> y({N, d}), y_n({N, d});
  y.fill(T(123));  // must be overwritten
  moe::DispatchPlan plan;
  moe::moe_ffn<T, W>(x, idx, w, ex.ex(), ex.shared(), y, p, &plan);
  moe::naive::moe_ffn<T, W>(x, idx, w, ex.ex(), ex.shared(), y_n, p);
  EXPECT_LE(max_abs_diff(y, y_n), tol);
  const std::vector<bool> kept =
      moe::naive::kept_assignments(idx, E, moe::expert_capacity(N, k, E, p));
  int64_t dropped = 0;
  for (int64_t i = 0; i < N * k; ++i) {
    EXPECT_EQ(plan.slot_row[i] >= 0, bool(kept[i]));
    dropped += !kept[i];
  }
  EXPECT_EQ(plan.num_dropped, dropped);
}

TEST(MoeFfn, MatchesPerTokenLoopDouble) {
  uint64_t seed = 1;
  for (int64_t skinny : {0, 8}) {
    moe::MoeFfnParams p;
    p.skinny_max_rows = skinny;
    for (int64_t N : {1, 3, 9, 70}) {
      expect_ffn_matches_naive<double, double>(N, 6, 2, 24, 40, 0, p, 1e-12, seed++);
      expect_ffn_matches_naive<double, double>(N, 8, 3, 33, 17, 48, p, 1e-12, seed++);
      expect_ffn_matches_naive<double, double>(N, 1, 1, 16, 21, 0, p, 1e-12, seed++);
    }
  }
  // Column and row blocks: f and d above one tile (256), N above one 512-row block per expert.
  moe::MoeFfnParams p;
  expect_ffn_matches_naive<double, double>(600, 1, 1, 20, 300, 0, p, 1e-12, 77);
  expect_ffn_matches_naive<double, double>(2, 2, 2, 270, 9, 7, p, 1e-12, 78);
}

TEST(MoeFfn, StreamingSumsChunkPartials) {
  // Weights above 1 MB: the decode kernel splits each matrix into chunks of rows whose partial
  // products are summed afterwards (3 chunks per float matrix here, 2 per bf16 one).
  moe::MoeFfnParams p;
  expect_ffn_matches_naive<float, float>(1, 4, 2, 520, 1100, 0, p, 2e-5, 81);
  expect_ffn_matches_naive<float, bf16>(3, 4, 1, 520, 1100, 520, p, 2e-5, 82);
  expect_ffn_matches_naive<double, double>(2, 3, 2, 300, 500, 0, p, 1e-12, 83);
}

TEST(MoeFfn, MatchesPerTokenLoopFloatAndBf16) {
  uint64_t seed = 500;
  for (int64_t skinny : {0, 8}) {
    moe::MoeFfnParams p;
    p.skinny_max_rows = skinny;
    for (int64_t N : {1, 5, 40}) {
      expect_ffn_matches_naive<float, float>(N, 8, 2, 48, 70, 32, p, 2e-5, seed++);
      expect_ffn_matches_naive<float, bf16>(N, 8, 2, 48, 70, 32, p, 2e-5, seed++);
      expect_ffn_matches_naive<float, bf16>(N, 5, 3, 31, 300, 0, p, 2e-5, seed++);
    }
  }
}

TEST(MoeFfn, CapacityDroppingMatchesNaive) {
  uint64_t seed = 900;
  for (double cf : {0.5, 1.0, 1.25}) {
    moe::MoeFfnParams p;
    p.capacity_factor = cf;
    expect_ffn_matches_naive<double, double>(50, 4, 2, 16, 24, 0, p, 1e-12, seed++);
    expect_ffn_matches_naive<double, double>(50, 4, 2, 16, 24, 12, p, 1e-12, seed++);
    p.skinny_max_rows = 0;
    expect_ffn_matches_naive<double, double>(7, 8, 2, 16, 24, 0, p, 1e-12, seed++);
  }
  // Capacity 0: every assignment dropped, only the shared expert remains (or zeros).
  moe::MoeFfnParams p0;
  p0.capacity = 0;
  expect_ffn_matches_naive<double, double>(9, 4, 2, 16, 24, 12, p0, 1e-12, 950);
  expect_ffn_matches_naive<double, double>(9, 4, 2, 16, 24, 0, p0, 1e-12, 951);
}

TEST(MoeFfn, OneThreadEqualsTwoBitwise) {
  for (int64_t N : {1, 4, 300}) {
    for (bool use_bf16 : {false, true}) {
      const int64_t E = 8, k = 2, d = 64, f = 300, fs = 40;
      Tensor<float> x = random_tensor<float>({N, d}, N, -1, 1);
      Tensor<int32_t> idx;
      Tensor<float> w;
      route<float>(N, E, k, N + 1, idx, w);
      Tensor<float> y1({N, d}), y2({N, d});
      moe::MoeFfnParams p;
      auto run = [&](Tensor<float>& y) {
        if (use_bf16) {
          const auto ex = make_experts<float, bf16>(E, d, f, fs, 3);
          moe::moe_ffn<float, bf16>(x, idx, w, ex.ex(), ex.shared(), y, p);
        } else {
          const auto ex = make_experts<float, float>(E, d, f, fs, 3);
          moe::moe_ffn<float, float>(x, idx, w, ex.ex(), ex.shared(), y, p);
        }
      };
      p.num_threads = 1;
      run(y1);
      p.num_threads = 2;
      run(y2);
      EXPECT_EQ(0, std::memcmp(y1.data(), y2.data(), sizeof(float) * N * d))
          << "N=" << N << " bf16=" << use_bf16 << " max diff " << max_abs_diff(y1, y2);
    }
  }
}

TEST(MoeFfn, StridedRowsWorkspaceAndEmptyBatch) {
  const int64_t N = 12, E = 4, k = 2, d = 20, f = 28;
  const auto ex = make_experts<double, double>(E, d, f, 8, 9);
  const Tensor<double> xbig = random_tensor<double>({N, 2 * d}, 1, -1, 1);
  const TensorView<const double> x = TensorView<const double>(xbig.view()).slice(1, d, 2 * d);
  Tensor<int32_t> idx;
  Tensor<double> w;
  route<double>(N, E, k, 2, idx, w);
  Tensor<double> ybig({N, 3 * d}), y_n({N, d});
  moe::naive::moe_ffn<double, double>(x, idx, w, ex.ex(), ex.shared(), y_n);
  moe::MoeWorkspace<double> ws;
  for (int rep = 0; rep < 2; ++rep) {
    const TensorView<double> y = ybig.view().slice(1, d, 2 * d);
    moe::moe_ffn<double, double>(x, idx, w, ex.ex(), ex.shared(), y, {}, nullptr, &ws);
    EXPECT_LE(max_abs_diff(TensorView<const double>(y), TensorView<const double>(y_n.view())),
              1e-12);
  }
  for (int64_t i = 0; i < N; ++i) EXPECT_EQ(ybig(i, 0), 0.0);  // untouched outside the slice
  // N = 0: nothing to do, no error.
  Tensor<double> x0({0, d}), y0({0, d}), w0({0, k});
  Tensor<int32_t> i0({0, k});
  moe::moe_ffn<double, double>(x0, i0, w0, ex.ex(), ex.shared(), y0);
}

TEST(MoeLayer, MatchesGateThenNaiveFfn) {
  const int64_t N = 45, E = 16, d = 40, f = 56, fs = 64;
  const auto ex = make_experts<double, double>(E, d, f, fs, 21);
  const Tensor<double> x = random_tensor<double>({N, d}, 22, -1, 1);
  const Tensor<double> wr = random_tensor<double>({d, E}, 23, -0.5, 0.5);
  const Tensor<double> bias = random_tensor<double>({E}, 24, -0.1, 0.1);
  moe::MoeLayerParams p;
  p.gate = moe::GateParams::deepseek_v3(4, 4, 2, 2.5);
  Tensor<double> y({N, d}), y_n({N, d}), logits({N, E}), w({N, 4}), w_n({N, 4});
  Tensor<int32_t> idx({N, 4}), idx_n({N, 4});
  moe::moe_layer<double, double>(x, wr, bias, ex.ex(), ex.shared(), y, p, idx, w);
  effattn::gemm<double>(x, effattn::Trans::kNo, wr, effattn::Trans::kNo, logits);
  moe::naive::gate<double>(logits, bias, idx_n, w_n, p.gate);
  moe::naive::moe_ffn<double, double>(x, idx_n, w_n, ex.ex(), ex.shared(), y_n);
  EXPECT_EQ(0, std::memcmp(idx.data(), idx_n.data(), sizeof(int32_t) * N * 4));
  EXPECT_LE(max_abs_diff(w, w_n), 1e-13);
  EXPECT_LE(max_abs_diff(y, y_n), 1e-12);
}

// --- bad arguments ---------------------------------------------------------------------------

template <class F>
void expect_error_naming(F&& f, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << "no effattn::Error, expected one naming '" << what << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

TEST(MoeGate, BadArgumentsRaise) {
  const Tensor<float> l = random_tensor<float>({5, 8}, 1);
  Tensor<int32_t> idx2({5, 2}), idx9({5, 9});
  Tensor<float> w2({5, 2}), w9({5, 9});
  // k > E
  expect_error_naming(
      [&] { moe::moe_gate<float>(l, {}, idx9, w9, moe::GateParams::softmax_topk(9, false)); },
      "top_k");
  expect_error_naming(
      [&] { moe::naive::gate<float>(l, {}, idx9, w9, moe::GateParams::softmax_topk(9, false)); },
      "top_k");
  // n_group not dividing E, topk_group > n_group, too few experts in the kept groups
  expect_error_naming(
      [&] { moe::moe_gate<float>(l, {}, idx2, w2, moe::GateParams::deepseek_v3(2, 3, 1)); },
      "n_group");
  expect_error_naming(
      [&] { moe::moe_gate<float>(l, {}, idx2, w2, moe::GateParams::deepseek_v3(2, 4, 5)); },
      "topk_group");
  expect_error_naming(
      [&] { moe::moe_gate<float>(l, {}, idx2, w2, moe::GateParams::deepseek_v3(2, 8, 1)); },
      "top_k");
  // output shapes, bias shape, bias with softmax
  expect_error_naming([&] { moe::moe_gate<float>(l, {}, idx9, w2, moe::GateParams::mixtral(2)); },
                      "topk_idx");
  const Tensor<float> b3 = random_tensor<float>({3}, 2);
  expect_error_naming(
      [&] { moe::moe_gate<float>(l, b3, idx2, w2, moe::GateParams::deepseek_v3(2, 1, 1)); },
      "bias");
  expect_error_naming([&] { moe::moe_gate<float>(l, b3, idx2, w2, moe::GateParams::mixtral(2)); },
                      "bias");
  // NaN and +inf logits, in every routing
  for (float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    Tensor<float> ln = l;
    ln(3, 5) = bad;
    for (const Routing& r : routings(8, 2)) {
      expect_error_naming([&] { moe::moe_gate<float>(ln, {}, idx2, w2, r.p); }, "logits[3, 5]");
      expect_error_naming([&] { moe::naive::gate<float>(ln, {}, idx2, w2, r.p); }, "logits[3, 5]");
    }
  }
}

TEST(MoeFfn, BadArgumentsRaise) {
  const int64_t N = 4, E = 4, k = 2, d = 8, f = 12;
  const auto ex = make_experts<float, float>(E, d, f, 6, 1);
  const Tensor<float> x = random_tensor<float>({N, d}, 2);
  Tensor<int32_t> idx;
  Tensor<float> w;
  route<float>(N, E, k, 3, idx, w);
  Tensor<float> y({N, d});
  Tensor<int32_t> bad_idx = idx;
  bad_idx(2, 1) = E;
  expect_error_naming([&] { moe::moe_ffn<float, float>(x, bad_idx, w, ex.ex(), {}, y); },
                      "topk_idx[2, 1]");
  bad_idx(2, 1) = -1;
  expect_error_naming([&] { moe::naive::moe_ffn<float, float>(x, bad_idx, w, ex.ex(), {}, y); },
                      "topk_idx[2, 1]");
  const Tensor<float> wd_bad({E, f + 1, d});
  expect_error_naming(
      [&] {
        moe::moe_ffn<float, float>(x, idx, w, {ex.wg, ex.wu, wd_bad}, {}, y);
      },
      "w_down");
  const Tensor<float> sd_bad({7, d});
  expect_error_naming(
      [&] {
        moe::moe_ffn<float, float>(x, idx, w, ex.ex(), {ex.sg, ex.su, sd_bad}, y);
      },
      "shared w_down");
  Tensor<float> y_bad({N, d + 1});
  expect_error_naming([&] { moe::moe_ffn<float, float>(x, idx, w, ex.ex(), {}, y_bad); },
                      "y has shape");
  Tensor<float> w_bad({N, k + 1});
  expect_error_naming([&] { moe::moe_ffn<float, float>(x, idx, w_bad, ex.ex(), {}, y); },
                      "topk_weight");
  moe::MoeFfnParams p;
  p.skinny_max_rows = 9;
  expect_error_naming([&] { moe::moe_ffn<float, float>(x, idx, w, ex.ex(), {}, y, p); },
                      "skinny_max_rows");
  Tensor<float> xy({N, d});
  expect_error_naming([&] { moe::moe_ffn<float, float>(xy, idx, w, ex.ex(), {}, xy); }, "overlap");
  const Tensor<float> wr({d + 1, E});
  expect_error_naming([&] { moe::moe_layer<float, float>(x, wr, {}, ex.ex(), {}, y, {}); },
                      "w_router");
  expect_error_naming([&] { moe::make_dispatch_plan(idx, 2); }, "topk_idx");
}

}  // namespace
