// Delta-rule family: naive == recurrent == chunk (double, 1e-10), float vs double, pieces,
// snapshots, strong decay, threads, varlen, grouped value heads, in-op options, bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "effattn/ops/delta_rule/delta_rule.hpp"
#include "test_util.hpp"

using namespace effattn;
using effattn::testing::max_abs;
using effattn::testing::max_abs_diff;
using effattn::testing::random_tensor;

namespace {

// Inputs of one problem. q, k are raw (the op L2-normalises them unless `unit_keys`, which
// pre-scales k to norm 0.8 and q to norm 1 so the recurrence stays contractive).
template <class T>
struct Problem {
  int64_t B, T_, H, HV, K, V;
  DeltaRuleGate gate;
  Tensor<T> q, k, v, beta, g, S0;
};

template <class T>
Problem<T> make_problem(int64_t B, int64_t Tn, int64_t H, int64_t HV, int64_t K, int64_t V,
                        DeltaRuleGate gate, uint64_t seed, double g_lo = -0.3) {
  Problem<T> p{B, Tn, H, HV, K, V, gate, {}, {}, {}, {}, {}, {}};
  p.q = random_tensor<T>({B, Tn, H, K}, seed + 1);
  p.k = random_tensor<T>({B, Tn, H, K}, seed + 2);
  p.v = random_tensor<T>({B, Tn, HV, V}, seed + 3);
  p.beta = random_tensor<T>({B, Tn, HV}, seed + 4, 0.05, 1.0);
  if (gate == DeltaRuleGate::kScalar) p.g = random_tensor<T>({B, Tn, HV}, seed + 5, g_lo, 0.0);
  if (gate == DeltaRuleGate::kChannel) p.g = random_tensor<T>({B, Tn, HV, K}, seed + 5, g_lo, 0.0);
  p.S0 = random_tensor<T>({B, HV, K, V}, seed + 6, -0.5, 0.5);
  return p;
}

using effattn::testing::opt;

struct Out {
  Tensor<double> o, S;
};

// Runs one form; returns o and the final state as double.
template <class T>
Out run(const Problem<T>& pb, DeltaRuleAlgo algo, DeltaRuleParams<T> p = {}, bool with_s0 = true) {
  p.algo = algo;
  Tensor<T> o({pb.B, pb.T_, pb.HV, pb.V}), S1({pb.B, pb.HV, pb.K, pb.V});
  delta_rule_forward<T>(pb.q, pb.k, pb.v, pb.beta, opt(pb.g), o,
                        with_s0 ? opt(pb.S0) : TensorView<const T>{}, S1, p);
  return {Tensor<double>::from(o.view()), Tensor<double>::from(S1.view())};
}

DeltaRuleParams<double> l2() {
  DeltaRuleParams<double> p;
  p.use_qk_l2norm = true;
  return p;
}

// max |a - b| / max(1, max |b|)
double rel(const Tensor<double>& a, const Tensor<double>& b) {
  return max_abs_diff(a, b) / std::max(1.0, max_abs(b));
}

const char* gate_name(DeltaRuleGate g) {
  return g == DeltaRuleGate::kNone ? "none" : g == DeltaRuleGate::kScalar ? "scalar" : "channel";
}

struct Case {
  int64_t T, K, V, H, HV;
  DeltaRuleGate gate;
  int64_t chunk;
};

}  // namespace

// chunk == recurrent == naive on o and the final state, in double, at awkward sizes.
TEST(DeltaRule, FormsAgreeDouble) {
  using G = DeltaRuleGate;
  const Case cases[] = {
      {1, 16, 16, 1, 1, G::kNone, 16},      {1, 128, 40, 2, 2, G::kChannel, 64},
      {7, 40, 16, 1, 2, G::kScalar, 16},    {63, 16, 40, 2, 2, G::kChannel, 16},
      {64, 64, 64, 1, 1, G::kScalar, 64},   {65, 40, 40, 1, 3, G::kChannel, 16},
      {65, 16, 16, 2, 2, G::kNone, 16},     {100, 128, 40, 1, 1, G::kNone, 64},
      {100, 40, 128, 1, 1, G::kScalar, 32}, {257, 16, 128, 1, 1, G::kChannel, 64},
      {257, 64, 40, 1, 2, G::kScalar, 16},  {257, 40, 64, 1, 1, G::kNone, 16},
      {1000, 16, 16, 1, 1, G::kScalar, 64}, {1000, 16, 40, 1, 1, G::kChannel, 16},
  };
  uint64_t seed = 100;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message()
                 << "T=" << c.T << " K=" << c.K << " V=" << c.V << " H=" << c.H << " HV=" << c.HV
                 << " gate=" << gate_name(c.gate) << " chunk=" << c.chunk);
    const auto pb = make_problem<double>(2, c.T, c.H, c.HV, c.K, c.V, c.gate, seed += 10);
    DeltaRuleParams<double> p = l2();
    p.chunk_size = c.chunk;
    const Out ref = run(pb, DeltaRuleAlgo::kNaive, p);
    const Out rec = run(pb, DeltaRuleAlgo::kRecurrent, p);
    const Out chk = run(pb, DeltaRuleAlgo::kChunk, p);
    EXPECT_LT(rel(rec.o, ref.o), 1e-10);
    EXPECT_LT(rel(rec.S, ref.S), 1e-10);
    EXPECT_LT(rel(chk.o, ref.o), 1e-10);
    EXPECT_LT(rel(chk.S, ref.S), 1e-10);
    EXPECT_GT(max_abs(ref.o), 1e-3);  // the comparison is not vacuous
  }
}

// Without an initial state, and with unit-norm inputs and no in-op normalisation.
TEST(DeltaRule, NoInitialStateNoNorm) {
  for (DeltaRuleGate gate :
       {DeltaRuleGate::kNone, DeltaRuleGate::kScalar, DeltaRuleGate::kChannel}) {
    SCOPED_TRACE(gate_name(gate));
    auto pb = make_problem<double>(1, 70, 2, 2, 24, 20, gate, 7);
    for (Tensor<double>* x : {&pb.q, &pb.k}) {  // rows to norm 1 (q) / 0.8 (k)
      const double target = x == &pb.q ? 1.0 : 0.8;
      for (int64_t r = 0; r < x->numel() / 24; ++r) {
        double* row = x->data() + r * 24;
        double s = 0;
        for (int i = 0; i < 24; ++i) s += row[i] * row[i];
        for (int i = 0; i < 24; ++i) row[i] *= target / std::sqrt(s);
      }
    }
    DeltaRuleParams<double> p;
    p.chunk_size = 32;
    const Out ref = run(pb, DeltaRuleAlgo::kNaive, p, false);
    EXPECT_LT(rel(run(pb, DeltaRuleAlgo::kRecurrent, p, false).o, ref.o), 1e-10);
    const Out chk = run(pb, DeltaRuleAlgo::kChunk, p, false);
    EXPECT_LT(rel(chk.o, ref.o), 1e-10);
    EXPECT_LT(rel(chk.S, ref.S), 1e-10);
  }
}

// Float forms against the double reference. K = 40 and 24 leave a tail past the last whole
// float vector in the chunk form's row norms (K = 24: one vector and a tail).
TEST(DeltaRule, FloatMatchesDouble) {
  const int64_t KV[][2] = {{64, 40}, {40, 64}, {24, 16}};
  for (const auto& kv : KV)
    for (DeltaRuleGate gate :
         {DeltaRuleGate::kNone, DeltaRuleGate::kScalar, DeltaRuleGate::kChannel}) {
      SCOPED_TRACE(::testing::Message() << gate_name(gate) << " K=" << kv[0] << " V=" << kv[1]);
      const auto pd = make_problem<double>(1, 257, 2, 4, kv[0], kv[1], gate, 31);
      const auto pf = make_problem<float>(1, 257, 2, 4, kv[0], kv[1], gate, 31);
      const Out ref = run(pd, DeltaRuleAlgo::kNaive, l2());
      DeltaRuleParams<float> p;
      p.use_qk_l2norm = true;
      for (DeltaRuleAlgo a :
           {DeltaRuleAlgo::kNaive, DeltaRuleAlgo::kRecurrent, DeltaRuleAlgo::kChunk}) {
        const Out got = run(pf, a, p);
        EXPECT_LT(rel(got.o, ref.o), 2e-5) << int(a);
        EXPECT_LT(rel(got.S, ref.S), 2e-5) << int(a);
      }
    }
}

// Running a sequence in pieces, passing the state along, equals one call.
// o of 4 MB and more: the chunk form writes o's rows with non-temporal stores (float and
// double, 64-byte vectors); the result must not change.
TEST(DeltaRule, LargeOutputStreamed) {
  for (DeltaRuleGate gate : {DeltaRuleGate::kScalar, DeltaRuleGate::kChannel}) {
    SCOPED_TRACE(gate_name(gate));
    const auto pd = make_problem<double>(1, 1024, 2, 8, 32, 128, gate, 41);
    const auto pf = make_problem<float>(1, 1024, 2, 8, 32, 128, gate, 41);
    const Out ref = run(pd, DeltaRuleAlgo::kRecurrent, l2());
    const Out chd = run(pd, DeltaRuleAlgo::kChunk, l2());
    EXPECT_LT(rel(chd.o, ref.o), 1e-10);
    EXPECT_LT(rel(chd.S, ref.S), 1e-10);
    DeltaRuleParams<float> p;
    p.use_qk_l2norm = true;
    const Out chf = run(pf, DeltaRuleAlgo::kChunk, p);
    EXPECT_LT(rel(chf.o, ref.o), 2e-5);
    EXPECT_LT(rel(chf.S, ref.S), 2e-5);
  }
}

TEST(DeltaRule, PiecesEqualOneCall) {
  for (DeltaRuleGate gate :
       {DeltaRuleGate::kNone, DeltaRuleGate::kScalar, DeltaRuleGate::kChannel}) {
    for (DeltaRuleAlgo algo : {DeltaRuleAlgo::kRecurrent, DeltaRuleAlgo::kChunk}) {
      SCOPED_TRACE(::testing::Message() << gate_name(gate) << " algo " << int(algo));
      const auto pb = make_problem<double>(2, 100, 1, 2, 40, 24, gate, 55);
      DeltaRuleParams<double> p = l2();
      p.algo = algo;
      p.chunk_size = 16;
      const Out whole = run(pb, algo, p);
      Tensor<double> o({2, 100, 2, 24}), S = pb.S0;
      const int64_t cuts[] = {0, 37, 38, 100};
      for (int i = 0; i < 3; ++i) {
        auto sl = [&](const Tensor<double>& x) {
          return x.empty() ? TensorView<const double>{} : x.view().slice(1, cuts[i], cuts[i + 1]);
        };
        Tensor<double> S_next({2, 2, 40, 24});
        delta_rule_forward<double>(sl(pb.q), sl(pb.k), sl(pb.v), sl(pb.beta), sl(pb.g),
                                   o.view().slice(1, cuts[i], cuts[i + 1]), S, S_next, p);
        S = S_next;
      }
      EXPECT_LT(rel(Tensor<double>::from(o.view()), whole.o), 1e-10);
      EXPECT_LT(rel(S, whole.S), 1e-10);
    }
  }
}

// Snapshots every n tokens equal the final state of a run over the first j*n tokens.
TEST(DeltaRule, SnapshotsMatchPrefixStates) {
  for (DeltaRuleGate gate : {DeltaRuleGate::kScalar, DeltaRuleGate::kChannel}) {
    for (int64_t every : {1, 3, 16}) {
      const auto pb = make_problem<double>(2, 50, 1, 2, 16, 20, gate, 77);
      const int64_t ns = 50 / every;
      for (DeltaRuleAlgo algo :
           {DeltaRuleAlgo::kNaive, DeltaRuleAlgo::kRecurrent, DeltaRuleAlgo::kChunk}) {
        SCOPED_TRACE(::testing::Message()
                     << gate_name(gate) << " every " << every << " algo " << int(algo));
        Tensor<double> snaps({2, ns, 2, 16, 20});
        DeltaRuleParams<double> p = l2();
        p.snapshot_every = every;
        p.snapshots = snaps;
        p.chunk_size = 8;
        const Out whole = run(pb, algo, p);
        for (int64_t j = 0; j < ns; ++j) {
          const int64_t len = (j + 1) * every;
          auto sl = [&](const Tensor<double>& x) {
            return x.empty() ? TensorView<const double>{} : x.view().slice(1, 0, len);
          };
          Tensor<double> o({2, len, 2, 20}), S1({2, 2, 16, 20});
          delta_rule_recurrent<double>(sl(pb.q), sl(pb.k), sl(pb.v), sl(pb.beta), sl(pb.g), o,
                                       pb.S0, S1, l2());
          EXPECT_LT(max_abs_diff(TensorView<const double>(snaps.view().select(1, j)),
                                 TensorView<const double>(S1.view())),
                    1e-10)
              << "snapshot " << j;
        }
        EXPECT_LT(rel(whole.o, run(pb, DeltaRuleAlgo::kNaive, l2()).o), 1e-10);
      }
    }
  }
}

// Strong decay and long sequences stay finite and agree with the reference.
TEST(DeltaRule, StrongDecayAndLongSequences) {
  // Per-channel gates down to -40 per token: KDA chunks must cut short, never overflow.
  for (double lo : {-40.0, -5.0}) {
    const auto pb = make_problem<double>(1, 600, 1, 1, 16, 16, DeltaRuleGate::kChannel, 3, lo);
    const Out ref = run(pb, DeltaRuleAlgo::kNaive, l2());
    const Out chk = run(pb, DeltaRuleAlgo::kChunk, l2());
    EXPECT_LT(rel(chk.o, ref.o), 1e-10) << lo;
    EXPECT_LT(rel(chk.S, ref.S), 1e-10) << lo;
    const Out rec = run(pb, DeltaRuleAlgo::kRecurrent, l2());  // lazy decay rescales rows
    EXPECT_LT(rel(rec.o, ref.o), 1e-10) << lo;
    EXPECT_LT(rel(rec.S, ref.S), 1e-10) << lo;
    const auto pf = make_problem<float>(1, 600, 1, 1, 16, 16, DeltaRuleGate::kChannel, 3, lo);
    DeltaRuleParams<float> p;
    p.use_qk_l2norm = true;
    for (DeltaRuleAlgo a : {DeltaRuleAlgo::kRecurrent, DeltaRuleAlgo::kChunk}) {
      const Out f = run(pf, a, p);
      EXPECT_LT(rel(f.o, ref.o), 1e-4) << lo;
      EXPECT_LT(rel(f.S, ref.S), 1e-4) << lo;
    }
  }
  // Scalar gates of -60 per token (state wiped every step) in float.
  {
    const auto pf = make_problem<float>(1, 300, 1, 2, 32, 16, DeltaRuleGate::kScalar, 4, -60.0);
    const auto pd = make_problem<double>(1, 300, 1, 2, 32, 16, DeltaRuleGate::kScalar, 4, -60.0);
    DeltaRuleParams<float> p;
    p.use_qk_l2norm = true;
    const Out ref = run(pd, DeltaRuleAlgo::kNaive, l2());
    for (DeltaRuleAlgo a : {DeltaRuleAlgo::kRecurrent, DeltaRuleAlgo::kChunk}) {
      const Out f = run(pf, a, p);
      EXPECT_LT(rel(f.o, ref.o), 1e-4);
      EXPECT_LT(rel(f.S, ref.S), 1e-4);
    }
  }
  // A long DeltaNet (no decay) sequence in float: finite, bounded, close to double.
  {
    const int64_t Tn = 20000;
    const auto pf = make_problem<float>(1, Tn, 1, 1, 16, 8, DeltaRuleGate::kNone, 5);
    const auto pd = make_problem<double>(1, Tn, 1, 1, 16, 8, DeltaRuleGate::kNone, 5);
    DeltaRuleParams<float> p;
    p.use_qk_l2norm = true;
    const Out ref = run(pd, DeltaRuleAlgo::kChunk, l2());
    const Out f = run(pf, DeltaRuleAlgo::kChunk, p);
    EXPECT_TRUE(std::isfinite(max_abs(f.o)));
    EXPECT_LT(max_abs(f.S), 100.0);
    EXPECT_LT(rel(f.o, ref.o), 1e-3);
  }
}

// Results do not depend on the thread count.
TEST(DeltaRule, ThreadsAgree) {
  // Large enough (B*T*HV*K*V > 2^22) that the recurrent form really uses 2 threads.
  const auto pb = make_problem<float>(2, 400, 2, 4, 40, 40, DeltaRuleGate::kChannel, 9);
  for (DeltaRuleAlgo a : {DeltaRuleAlgo::kRecurrent, DeltaRuleAlgo::kChunk}) {
    DeltaRuleParams<float> p;
    p.use_qk_l2norm = true;
    p.num_threads = 1;
    const Out one = run(pb, a, p);
    p.num_threads = 2;
    const Out two = run(pb, a, p);
    EXPECT_LT(max_abs_diff(one.o, two.o), 1e-6);
    EXPECT_LT(max_abs_diff(one.S, two.S), 1e-6);
  }
}

// Packed sequences with cu_seqlens equal separate calls (an empty sequence included).
TEST(DeltaRule, VarlenEqualsSeparateCalls) {
  const std::vector<int64_t> cu = {0, 5, 5, 70, 101};
  const int64_t N = 4, Tn = 101, H = 1, HV = 2, K = 24, V = 16;
  for (DeltaRuleGate gate :
       {DeltaRuleGate::kNone, DeltaRuleGate::kScalar, DeltaRuleGate::kChannel}) {
    for (DeltaRuleAlgo algo :
         {DeltaRuleAlgo::kNaive, DeltaRuleAlgo::kRecurrent, DeltaRuleAlgo::kChunk}) {
      SCOPED_TRACE(::testing::Message() << gate_name(gate) << " algo " << int(algo));
      const auto pb = make_problem<double>(1, Tn, H, HV, K, V, gate, 11);
      const Tensor<double> S0 = random_tensor<double>({N, HV, K, V}, 12, -0.5, 0.5);
      DeltaRuleParams<double> p = l2();
      p.algo = algo;
      p.cu_seqlens = cu;
      p.chunk_size = 16;
      const int64_t every = 4;
      Tensor<double> snaps({N, 65 / every, HV, K, V});
      p.snapshot_every = every;
      p.snapshots = snaps;
      Tensor<double> o({1, Tn, HV, V}), S1({N, HV, K, V});
      delta_rule_forward<double>(pb.q, pb.k, pb.v, pb.beta, opt(pb.g), o, S0, S1, p);
      for (int64_t n = 0; n < N; ++n) {
        auto sl = [&](const Tensor<double>& x) {
          return x.empty() ? TensorView<const double>{} : x.view().slice(1, cu[n], cu[n + 1]);
        };
        const int64_t len = cu[n + 1] - cu[n];
        Tensor<double> on({1, len, HV, V}), Sn({1, HV, K, V});
        DeltaRuleParams<double> q = l2();
        q.algo = DeltaRuleAlgo::kNaive;
        const int64_t nsn = len / every;
        Tensor<double> sn({1, nsn, HV, K, V});
        q.snapshot_every = every;
        q.snapshots = sn;
        delta_rule_forward<double>(sl(pb.q), sl(pb.k), sl(pb.v), sl(pb.beta), sl(pb.g), on,
                                   S0.view().slice(0, n, n + 1), Sn, q);
        EXPECT_LT(max_abs_diff(TensorView<const double>(o.view().slice(1, cu[n], cu[n + 1])),
                               TensorView<const double>(on.view())),
                  1e-10);
        EXPECT_LT(max_abs_diff(TensorView<const double>(S1.view().slice(0, n, n + 1)),
                               TensorView<const double>(Sn.view())),
                  1e-10);
        if (nsn > 0) {
          EXPECT_LT(max_abs_diff(
                        TensorView<const double>(snaps.view().slice(0, n, n + 1).slice(1, 0, nsn)),
                        TensorView<const double>(sn.view())),
                    1e-10);
        }
      }
    }
  }
}

// HV > H: value head hv reads q/k head hv / (HV/H), the same as repeating q/k heads.
TEST(DeltaRule, GroupedValueHeadsEqualRepeatedQK) {
  const auto pb = make_problem<double>(1, 40, 2, 6, 16, 8, DeltaRuleGate::kChannel, 21);
  auto rep = pb;
  rep.H = 6;
  rep.q = Tensor<double>({1, 40, 6, 16});
  rep.k = Tensor<double>({1, 40, 6, 16});
  for (int64_t t = 0; t < 40; ++t)
    for (int64_t hv = 0; hv < 6; ++hv)
      for (int64_t c = 0; c < 16; ++c) {
        rep.q(0, t, hv, c) = pb.q(0, t, hv / 3, c);
        rep.k(0, t, hv, c) = pb.k(0, t, hv / 3, c);
      }
  for (DeltaRuleAlgo a : {DeltaRuleAlgo::kRecurrent, DeltaRuleAlgo::kChunk}) {
    const Out x = run(pb, a, l2()), y = run(rep, DeltaRuleAlgo::kNaive, l2());
    EXPECT_LT(rel(x.o, y.o), 1e-10);
    EXPECT_LT(rel(x.S, y.S), 1e-10);
  }
}

// beta as logits and gates from the raw input give the same as precomputed beta and g.
TEST(DeltaRule, InOpBetaAndGate) {
  for (DeltaRuleGate gate : {DeltaRuleGate::kScalar, DeltaRuleGate::kChannel}) {
    SCOPED_TRACE(gate_name(gate));
    const int64_t Tn = 70, HV = 2, K = 16, V = 8;
    auto raw = make_problem<double>(1, Tn, 1, HV, K, V, gate, 41);
    raw.beta = random_tensor<double>({1, Tn, HV}, 42, -3, 3);  // logits
    raw.g = gate == DeltaRuleGate::kScalar ? random_tensor<double>({1, Tn, HV}, 43, -4, 4)
                                           : random_tensor<double>({1, Tn, HV, K}, 43, -4, 4);
    const Tensor<double> A_log = random_tensor<double>({HV}, 44, -1, 1);
    const Tensor<double> dt_bias = gate == DeltaRuleGate::kScalar
                                       ? random_tensor<double>({HV}, 45, -1, 1)
                                       : random_tensor<double>({HV, K}, 45, -1, 1);
    auto pre = raw;
    for (int64_t i = 0; i < pre.beta.numel(); ++i)
      pre.beta.data()[i] = 1 / (1 + std::exp(-raw.beta.data()[i]));
    const int64_t per = gate == DeltaRuleGate::kScalar ? 1 : K;
    for (int64_t i = 0; i < pre.g.numel(); ++i) {
      const int64_t hv = (i / per) % HV, c = i % per;
      const double bias = gate == DeltaRuleGate::kScalar ? dt_bias(hv) : dt_bias(hv, c);
      pre.g.data()[i] = -std::exp(A_log(hv)) * std::log1p(std::exp(raw.g.data()[i] + bias));
    }
    const Out want = run(pre, DeltaRuleAlgo::kNaive, l2());
    for (DeltaRuleAlgo a :
         {DeltaRuleAlgo::kNaive, DeltaRuleAlgo::kRecurrent, DeltaRuleAlgo::kChunk}) {
      DeltaRuleParams<double> p = l2();
      p.beta_is_logit = true;
      p.A_log = A_log;
      p.dt_bias = dt_bias;
      const Out got = run(raw, a, p);
      EXPECT_LT(rel(got.o, want.o), 1e-10) << int(a);
      EXPECT_LT(rel(got.S, want.S), 1e-10) << int(a);
    }
  }
}

// The front entry points, a custom scale, in-place state, strided q/k, T = 0.
TEST(DeltaRule, FrontInPlaceStridedAndEmpty) {
  const auto pb = make_problem<double>(1, 9, 2, 2, 16, 8, DeltaRuleGate::kScalar, 61);
  DeltaRuleParams<double> p = l2();
  p.scale = 0.3;
  const Out want = run(pb, DeltaRuleAlgo::kNaive, p);
  // q and k as slices of one fused buffer [B, T, H, 2K]
  Tensor<double> qk({1, 9, 2, 32});
  for (int64_t t = 0; t < 9; ++t)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t c = 0; c < 16; ++c) {
        qk(0, t, h, c) = pb.q(0, t, h, c);
        qk(0, t, h, 16 + c) = pb.k(0, t, h, c);
      }
  const TensorView<const double> qv = TensorView<const double>(qk.view()).slice(3, 0, 16);
  const TensorView<const double> kv = TensorView<const double>(qk.view()).slice(3, 16, 32);
  for (DeltaRuleAlgo a : {DeltaRuleAlgo::kRecurrent, DeltaRuleAlgo::kChunk}) {
    p.algo = a;
    Tensor<double> S = pb.S0, o({1, 9, 2, 8});
    gated_delta_rule<double>(qv, kv, pb.v, pb.beta, pb.g, o, S, S, p);  // state in place
    EXPECT_LT(max_abs_diff(o, want.o), 1e-12);
    EXPECT_LT(max_abs_diff(S, want.S), 1e-12);
  }
  // delta_rule / kda fronts run their own gate.
  const auto pn = make_problem<double>(1, 9, 1, 1, 16, 8, DeltaRuleGate::kNone, 62);
  Tensor<double> o({1, 9, 1, 8});
  delta_rule<double>(pn.q, pn.k, pn.v, pn.beta, o, pn.S0, {}, l2());
  EXPECT_LT(max_abs_diff(o, run(pn, DeltaRuleAlgo::kNaive, l2()).o), 1e-12);
  const auto pc = make_problem<double>(1, 9, 1, 1, 16, 8, DeltaRuleGate::kChannel, 63);
  kda<double>(pc.q, pc.k, pc.v, pc.beta, pc.g, o, pc.S0, {}, l2());
  EXPECT_LT(max_abs_diff(o, run(pc, DeltaRuleAlgo::kNaive, l2()).o), 1e-12);
  // T = 0: the final state is the initial state.
  const auto pe = make_problem<double>(1, 0, 1, 1, 16, 8, DeltaRuleGate::kScalar, 64);
  for (DeltaRuleAlgo a :
       {DeltaRuleAlgo::kNaive, DeltaRuleAlgo::kRecurrent, DeltaRuleAlgo::kChunk}) {
    const Out e = run(pe, a, l2());
    EXPECT_EQ(max_abs_diff(e.S, Tensor<double>::from(pe.S0.view())), 0.0);
  }
}

namespace {
template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no effattn::Error (expected one naming '" << needle << "')";
  } catch (const effattn::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(DeltaRule, BadArguments) {
  const auto pb = make_problem<float>(1, 10, 2, 4, 16, 8, DeltaRuleGate::kScalar, 71);
  Tensor<float> o({1, 10, 4, 8}), S({1, 4, 16, 8});
  const TensorView<const float> none;
  auto call = [&](TensorView<const float> q, TensorView<const float> k, TensorView<const float> v,
                  TensorView<const float> beta, TensorView<const float> g, TensorView<float> out,
                  TensorView<const float> s0, TensorView<float> s1,
                  const DeltaRuleParams<float>& p) {
    return [=]() { delta_rule_forward<float>(q, k, v, beta, g, out, s0, s1, p); };
  };
  const DeltaRuleParams<float> p0;
  const Tensor<float> bad_k({1, 10, 2, 15}), bad_v({1, 10, 3, 8}), bad_beta({1, 10, 2}),
      bad_g({1, 10, 4, 15});
  Tensor<float> bad_o({1, 10, 4, 9}), bad_s({1, 4, 16, 9});
  expect_error(call({}, pb.k, pb.v, pb.beta, pb.g, o, none, {}, p0), "q");
  expect_error(call(pb.q, bad_k, pb.v, pb.beta, pb.g, o, none, {}, p0), "k has shape");
  expect_error(call(pb.q, pb.k, bad_v, pb.beta, pb.g, o, none, {}, p0), "HV = 3");
  expect_error(call(pb.q, pb.k, pb.v, bad_beta, pb.g, o, none, {}, p0), "beta");
  expect_error(call(pb.q, pb.k, pb.v, pb.beta, bad_g, o, none, {}, p0), "g has shape");
  expect_error(call(pb.q, pb.k, pb.v, pb.beta, pb.g, bad_o, none, {}, p0), "o has shape");
  expect_error(call(pb.q, pb.k, pb.v, pb.beta, pb.g, o, bad_s, {}, p0), "initial_state");
  expect_error(call(pb.q, pb.k, pb.v, pb.beta, pb.g, o, none, bad_s, p0), "final_state");
  DeltaRuleParams<float> p = p0;
  p.cu_seqlens = {0, 4, 11};
  expect_error(call(pb.q, pb.k, pb.v, pb.beta, pb.g, o, none, {}, p), "cu_seqlens");
  p.cu_seqlens = {0, 6, 4, 10};
  expect_error(call(pb.q, pb.k, pb.v, pb.beta, pb.g, o, none, {}, p), "non-decreasing");
  p = p0;
  p.chunk_size = 0;
  expect_error(call(pb.q, pb.k, pb.v, pb.beta, pb.g, o, none, {}, p), "chunk_size");
  p = p0;
  p.snapshot_every = 3;
  expect_error(call(pb.q, pb.k, pb.v, pb.beta, pb.g, o, none, {}, p), "snapshots");
  Tensor<float> snaps({1, 3, 4, 16, 8});
  p.snapshots = snaps;
  p.snapshot_every = 4;  // 10 / 4 = 2 slots expected
  expect_error(call(pb.q, pb.k, pb.v, pb.beta, pb.g, o, none, {}, p), "snapshots");
  p = p0;
  const Tensor<float> A_log({3});
  p.A_log = A_log;
  expect_error(call(pb.q, pb.k, pb.v, pb.beta, pb.g, o, none, {}, p), "A_log");
  p = p0;
  p.scale = NAN;
  expect_error(call(pb.q, pb.k, pb.v, pb.beta, pb.g, o, none, {}, p), "scale");
  // Fronts check the gate form.
  expect_error([&] { kda<float>(pb.q, pb.k, pb.v, pb.beta, pb.g, o); }, "kda: g");
  expect_error([&] { gated_delta_rule<float>(pb.q, pb.k, pb.v, pb.beta, none, o); }, "g has");
  // Non-unit inner stride.
  Tensor<float> q2({1, 10, 16, 2});
  expect_error(call(TensorView<const float>(q2.view()).transpose(2, 3), pb.k, pb.v, pb.beta, pb.g,
                    o, none, {}, p0),
               "unit stride");
}
