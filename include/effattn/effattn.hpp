// effattn: efficient attention variants for the CPU. The umbrella header includes everything
// public; include a family's header alone to keep compile times down.
#pragma once

#include "effattn/core/bf16.hpp"
#include "effattn/core/error.hpp"
#include "effattn/core/parallel.hpp"
#include "effattn/core/tensor.hpp"
#include "effattn/io/npy.hpp"
#include "effattn/io/safetensors.hpp"
#include "effattn/layers/layers.hpp"
#include "effattn/ops/attention/attention.hpp"
#include "effattn/ops/attention/kv_cache.hpp"
#include "effattn/ops/common/gemm.hpp"
#include "effattn/ops/common/rope.hpp"
#include "effattn/ops/delta_rule/delta_rule.hpp"
#include "effattn/ops/linear_attention/linear_attention.hpp"
#include "effattn/ops/moe/moe.hpp"
#include "effattn/ops/ssm/ssd.hpp"
#include "effattn/ops/ssm/ssm.hpp"
#include "effattn/simd/simd.hpp"
