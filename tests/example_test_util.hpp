// What the example-model tests share: seeded token ids, and a model's logits over a sequence fed
// in pieces through one State (one piece = one forward call).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/run.hpp"
#include "effattn/core/bf16.hpp"
#include "effattn/core/tensor.hpp"
#include "layer_test_util.hpp"

namespace effattn::testing {

Tensor<int32_t> token_ids(int64_t B, int64_t T, int64_t vocab, uint64_t seed) {
  Tensor<int32_t> ids({B, T});
  for (int64_t b = 0; b < B; ++b) {
    const auto p = examples::random_prompt(T, vocab, seed + uint64_t(b));
    std::copy(p.begin(), p.end(), ids.data() + b * T);
  }
  return ids;
}

// Logits of ids [B, T] fed in pieces of the given lengths (summing to T) through one State.
template <class Model, class T>
Tensor<T> run_pieces(const Model& m, const Tensor<int32_t>& ids, const std::vector<int64_t>& len) {
  const int64_t B = ids.size(0), Tn = ids.size(1), V = m.vocab();
  auto st = m.make_state(B, Tn);
  Tensor<T> out({B, Tn, V});
  int64_t t0 = 0;
  for (int64_t n : len) {
    Tensor<int32_t> piece({B, n});
    piece.copy_from(ids.view().slice(1, t0, t0 + n));
    Tensor<T> lg({B, n, V});
    m.forward(piece, st, lg);
    for (int64_t b = 0; b < B; ++b)
      std::copy(lg.data() + b * n * V, lg.data() + (b + 1) * n * V, out.data() + (b * Tn + t0) * V);
    t0 += n;
  }
  EXPECT_EQ(t0, Tn);
  return out;
}

template <class Model, class T>
Tensor<T> run_once(const Model& m, const Tensor<int32_t>& ids) {
  return run_pieces<Model, T>(m, ids, {ids.size(1)});
}

// A model's logits `once` over ids [2, T] (one call) are also what it gives token by token, in each
// of `splits` (piece lengths summing to T) with the State carried along, for a T = 1 prompt (the
// first column), and for row 1 alone (batch rows are independent sequences). Double models.
template <class Model>
void expect_state_continues(const Model& m, const Tensor<int32_t>& ids, const Tensor<double>& once,
                            const std::vector<std::vector<int64_t>>& splits) {
  const int64_t Tn = ids.size(1), V = m.vocab();
  ASSERT_EQ(ids.size(0), 2);
  EXPECT_LT(max_abs_diff(run_pieces<Model, double>(m, ids, std::vector<int64_t>(Tn, 1)), once),
            1e-10);
  for (const auto& len : splits)
    EXPECT_LT(max_abs_diff(run_pieces<Model, double>(m, ids, len), once), 1e-10) << len.size();

  Tensor<int32_t> first({2, 1});
  first.copy_from(ids.view().slice(1, 0, 1));
  const Tensor<double> one = run_once<Model, double>(m, first);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t v = 0; v < V; ++v) EXPECT_NEAR(one(b, 0, v), once(b, 0, v), 1e-12);

  Tensor<int32_t> row1({1, Tn});
  row1.copy_from(ids.view().slice(0, 1, 2));
  const Tensor<double> alone = run_once<Model, double>(m, row1);
  for (int64_t t = 0; t < Tn; ++t)
    for (int64_t v = 0; v < V; ++v) EXPECT_NEAR(alone(0, t, v), once(1, t, v), 1e-12);
}

// save -> load reproduces the logits over `ids` bit for bit, with float and bf16 weights, with the
// head tied to the embeddings or not: a model made from `tiny` follows the file (lm_head.weight
// present or not). Model<T, S> takes a Config with tie_embeddings and has tied().
template <template <class, class> class Model, class Config>
void expect_save_load_bitwise(const Config& tiny, const Tensor<int32_t>& ids) {
  using F = Model<float, float>;
  using H = Model<float, bf16>;
  for (bool tie : {true, false}) {
    Config c = tiny;
    c.tie_embeddings = tie;
    F m(c);
    m.init_random(5);
    io::SafeTensorsWriter w;
    m.save(w);
    const io::SafeTensors st = reload(w);
    EXPECT_EQ(st.contains("lm_head.weight"), !tie);
    F m2(tiny);
    m2.load(st);
    EXPECT_EQ(m2.tied(), tie);
    EXPECT_EQ(m2.weight_bytes(), m.weight_bytes());
    EXPECT_TRUE(bitwise_equal(run_once<F, float>(m, ids), run_once<F, float>(m2, ids)));
  }
  H h(tiny);
  h.init_random(5);
  io::SafeTensorsWriter w;
  h.save(w);
  H h2(tiny);
  h2.load(reload(w));
  EXPECT_TRUE(bitwise_equal(run_once<H, float>(h, ids), run_once<H, float>(h2, ids)));
}

}  // namespace effattn::testing
