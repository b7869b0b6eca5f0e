// The mamba_lm example model (examples/mamba_lm/mamba_lm.hpp) at a tiny size: token by token
// through State == one forward (double), T = 1 prompts, a prompt in pieces, batch rows
// independent; save -> load bitwise; Hugging Face names (and mamba_ssm's embedding name) with no
// lm_head.weight load tied, a file with one loads untied; the config read off a checkpoint; a
// missing or misshaped tensor raises effattn::Error naming it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "common/run.hpp"
#include "example_test_util.hpp"
#include "layer_test_util.hpp"
#include "mamba_lm/mamba_lm.hpp"
#include "test_util.hpp"

namespace effattn {
namespace {

using examples::MambaLM;
using examples::MambaLMConfig;
using io::SafeTensors;
using io::SafeTensorsWriter;
using testing::bitwise_equal;
using testing::error_of;
using testing::expect_state_continues;
using ::testing::HasSubstr;
using testing::max_abs;
using testing::max_abs_diff;
using testing::reload;
using testing::run_once;
using testing::run_pieces;
using testing::token_ids;

MambaLMConfig tiny() {
  MambaLMConfig c;
  c.d_model = 32;
  c.n_layer = 2;
  c.vocab_size = 37;  // padded to 40
  c.d_state = 8;
  c.d_conv = 4;
  return c;
}

TEST(ExampleMambaLM, ConfigAndSizes) {
  const MambaLMConfig c = tiny();
  EXPECT_EQ(c.vocab(), 40);
  MambaLM<float> m(c);
  EXPECT_EQ(m.vocab(), 40);
  EXPECT_EQ(m.mixer[0].intermediate(), 64);
  EXPECT_EQ(m.mixer[0].dt_rank(), 2);  // ceil(32 / 16)
  EXPECT_TRUE(m.tied());
  const auto st = m.make_state(3, 0);
  // per layer: conv [3, 3, 64] + ssm [3, 64, 8] floats
  EXPECT_EQ(st.bytes(), 2 * (3 * 3 * 64 + 3 * 64 * 8) * 4);
  const MambaLMConfig p = MambaLMConfig::mamba_130m();
  EXPECT_EQ(p.d_model, 768);
  EXPECT_EQ(p.n_layer, 24);
  EXPECT_EQ(p.vocab(), 50280);
  MambaLMConfig raw = p;
  raw.vocab_size = 50277;  // GPT-NeoX's vocabulary, padded as mamba_ssm pads it
  EXPECT_EQ(raw.vocab(), 50280);
}

// Token by token, one call, pieces and T = 1 all agree (double: the scan's chunked and recurrent
// forms differ by round-off only).
TEST(ExampleMambaLM, StateContinuesDouble) {
  MambaLM<double> m(tiny());
  m.init_random(7);
  const Tensor<int32_t> ids = token_ids(2, 21, m.vocab(), 3);
  const Tensor<double> ref = run_once<MambaLM<double>, double>(m, ids);
  ASSERT_GT(max_abs(ref), 0.1);
  expect_state_continues(m, ids, ref, {{5, 1, 9, 6}, {1, 20}});
}

// float: the same within float round-off of logits of size ~10.
TEST(ExampleMambaLM, StateContinuesFloat) {
  MambaLM<float> m(tiny());
  m.init_random(11);
  const Tensor<int32_t> ids = token_ids(1, 40, m.vocab(), 5);
  const Tensor<float> ref = run_once<MambaLM<float>, float>(m, ids);
  const std::vector<int64_t> ones(40, 1);
  const double tol = 2e-5 * std::max(1.0, max_abs(ref));
  EXPECT_LT(max_abs_diff(run_pieces<MambaLM<float>, float>(m, ids, ones), ref), tol);
  EXPECT_LT(max_abs_diff(run_pieces<MambaLM<float>, float>(m, ids, {17, 3, 20}), ref), tol);
}

TEST(ExampleMambaLM, InitRandomIsSeeded) {
  MambaLM<float> a(tiny()), b(tiny()), c(tiny());
  a.init_random(1);
  b.init_random(1);
  c.init_random(2);
  const Tensor<int32_t> ids = token_ids(1, 9, a.vocab(), 1);
  const auto la = run_once<MambaLM<float>, float>(a, ids);
  EXPECT_TRUE(bitwise_equal(la, run_once<MambaLM<float>, float>(b, ids)));
  EXPECT_FALSE(bitwise_equal(la, run_once<MambaLM<float>, float>(c, ids)));
}

// The names a transformers MambaForCausalLM checkpoint of this config holds (save_pretrained
// drops the tied lm_head.weight).
std::set<std::string> hf_names(const MambaLMConfig& c, bool bias, bool conv_bias) {
  std::set<std::string> n = {"backbone.embeddings.weight", "backbone.norm_f.weight"};
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string p = "backbone.layers." + std::to_string(i);
    n.insert(p + ".norm.weight");
    for (const char* s : {"in_proj.weight", "conv1d.weight", "x_proj.weight", "dt_proj.weight",
                          "dt_proj.bias", "A_log", "D", "out_proj.weight"})
      n.insert(p + ".mixer." + s);
    if (bias) {
      n.insert(p + ".mixer.in_proj.bias");
      n.insert(p + ".mixer.out_proj.bias");
    }
    if (conv_bias) n.insert(p + ".mixer.conv1d.bias");
  }
  return n;
}

TEST(ExampleMambaLM, SavesHuggingFaceNames) {
  MambaLMConfig c = tiny();
  MambaLM<float> m(c);
  m.init_random(3);
  SafeTensorsWriter w;
  m.save(w);
  const SafeTensors st = reload(w);
  const std::vector<std::string> names = st.names();
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), hf_names(c, false, true));
  EXPECT_EQ(st.info("backbone.layers.1.mixer.in_proj.weight").dims,
            (std::vector<int64_t>{128, 32}));
  EXPECT_EQ(st.info("backbone.layers.1.mixer.conv1d.weight").dims,
            (std::vector<int64_t>{64, 1, 4}));
  EXPECT_EQ(st.info("backbone.layers.1.mixer.x_proj.weight").dims,
            (std::vector<int64_t>{2 + 16, 64}));
  EXPECT_EQ(st.info("backbone.layers.1.mixer.dt_proj.weight").dims, (std::vector<int64_t>{64, 2}));
  EXPECT_EQ(st.info("backbone.layers.1.mixer.A_log").dims, (std::vector<int64_t>{64, 8}));
  EXPECT_EQ(st.info("backbone.embeddings.weight").dims, (std::vector<int64_t>{40, 32}));

  c.use_bias = true;
  c.use_conv_bias = false;
  MambaLM<float> mb(c);
  SafeTensorsWriter wb;
  mb.save(wb);
  const std::vector<std::string> nb = reload(wb).names();
  EXPECT_EQ(std::set<std::string>(nb.begin(), nb.end()), hf_names(c, true, false));
}

TEST(ExampleMambaLM, SaveLoadBitwise) {
  testing::expect_save_load_bitwise<MambaLM>(tiny(), token_ids(1, 12, 40, 9));
}

// A checkpoint as transformers writes it (HF names, no lm_head.weight) loads with the head tied
// to the embeddings; mamba_ssm's backbone.embedding.weight loads the same; a file with an
// lm_head.weight uses it.
TEST(ExampleMambaLM, HuggingFaceCheckpointLoadsTied) {
  MambaLM<double> m(tiny());
  m.init_random(13);
  SafeTensorsWriter w;
  m.save(w);
  const SafeTensors hf = reload(w, "model.safetensors");
  ASSERT_FALSE(hf.contains("lm_head.weight"));
  const Tensor<int32_t> ids = token_ids(1, 10, 40, 2);
  const Tensor<double> ref = run_once<MambaLM<double>, double>(m, ids);

  MambaLM<double> a(tiny());
  a.load(hf);
  EXPECT_TRUE(a.tied());
  EXPECT_TRUE(bitwise_equal(run_once<MambaLM<double>, double>(a, ids), ref));

  // mamba_ssm's name for the embedding.
  SafeTensorsWriter ws;
  for (const std::string& n : hf.names())
    ws.add(n == "backbone.embeddings.weight" ? "backbone.embedding.weight" : n, hf.get<double>(n));
  MambaLM<double> b(tiny());
  b.load(reload(ws));
  EXPECT_TRUE(bitwise_equal(run_once<MambaLM<double>, double>(b, ids), ref));

  // An explicit lm_head equal to the embeddings gives the tied logits; another one differs.
  for (double scale : {1.0, -1.0}) {
    SafeTensorsWriter wl;
    for (const std::string& n : hf.names()) wl.add(n, hf.get<double>(n));
    Tensor<double> head = hf.get<double>("backbone.embeddings.weight");
    for (int64_t i = 0; i < head.numel(); ++i) head.data()[i] *= scale;
    wl.add("lm_head.weight", head);
    MambaLM<double> u(tiny());
    u.load(reload(wl));
    EXPECT_FALSE(u.tied());
    const Tensor<double> lu = run_once<MambaLM<double>, double>(u, ids);
    if (scale > 0) {
      EXPECT_LT(max_abs_diff(lu, ref), 1e-12);
    } else {
      EXPECT_GT(max_abs_diff(lu, ref), 0.1);
    }
  }
}

TEST(ExampleMambaLM, ConfigFromCheckpoint) {
  MambaLMConfig c = tiny();
  c.n_layer = 3;
  c.d_state = 4;
  c.d_conv = 3;
  c.expand = 3;
  c.use_bias = true;
  MambaLM<float> m(c);
  m.init_random(1);
  SafeTensorsWriter w;
  m.save(w);
  const MambaLMConfig r = MambaLMConfig::from_checkpoint(reload(w));
  EXPECT_EQ(r.d_model, 32);
  EXPECT_EQ(r.n_layer, 3);
  EXPECT_EQ(r.vocab(), 40);
  EXPECT_EQ(r.d_inner, 96);
  EXPECT_EQ(r.d_state, 4);
  EXPECT_EQ(r.d_conv, 3);
  EXPECT_EQ(r.dt_rank, 2);
  EXPECT_TRUE(r.use_bias);
  EXPECT_TRUE(r.use_conv_bias);
  MambaLM<float> m2(r);
  m2.load(reload(w));
  const Tensor<int32_t> ids = token_ids(1, 6, 40, 4);
  EXPECT_TRUE(bitwise_equal(run_once<MambaLM<float>, float>(m, ids),
                            run_once<MambaLM<float>, float>(m2, ids)));
  SafeTensorsWriter empty;
  empty.add("something", Tensor<float>({2}));
  EXPECT_THAT(error_of([&] { MambaLMConfig::from_checkpoint(reload(empty)); }),
              HasSubstr("backbone.embeddings.weight"));
}

// Every tensor of the file: missing -> Error naming it; one more row -> Error naming it.
TEST(ExampleMambaLM, LoadErrorsNameTheTensor) {
  MambaLMConfig c = tiny();
  c.tie_embeddings = false;
  MambaLM<float> m(c);
  m.init_random(2);
  SafeTensorsWriter w;
  m.save(w);
  const SafeTensors st = reload(w);
  testing::expect_load_errors_name_tensors(
      st, [&](const SafeTensors& bad) { MambaLM<float>(c).load(bad); },
      {"lm_head.weight"});  // absent = tied, not an error
  // A file with biases the config lacks.
  MambaLMConfig cb = tiny();
  cb.use_bias = true;
  MambaLM<float> mb(cb);
  SafeTensorsWriter wb;
  mb.save(wb);
  MambaLM<float> m3(tiny());
  EXPECT_THAT(error_of([&] { m3.load(reload(wb)); }),
              HasSubstr("backbone.layers.0.mixer.in_proj.bias"));
}

TEST(ExampleMambaLM, BadInputsRaise) {
  MambaLM<float> m(tiny());
  auto st = m.make_state(1, 0);
  Tensor<int32_t> ids({1, 3});
  Tensor<float> wrong({1, 3, 7});
  EXPECT_THAT(error_of([&] { m.forward(ids, st, wrong); }), HasSubstr("logits"));
  ids.data()[1] = 40;  // outside the vocabulary
  Tensor<float> lg({1, 3, 40});
  EXPECT_THAT(error_of([&] { m.forward(ids, st, lg); }), HasSubstr("token id 40"));
  auto st2 = m.make_state(2, 0);
  ids.data()[1] = 0;
  EXPECT_THROW(m.forward(ids, st2, lg), Error);  // state of another batch
  EXPECT_THROW(MambaLM<float>(MambaLMConfig{}), Error);
}

}  // namespace
}  // namespace effattn
