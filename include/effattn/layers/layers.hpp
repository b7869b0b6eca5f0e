// Layers: classes that own weights (loaded from safetensors under the reference implementations'
// names) and call the ops; per-sequence state lives in separate State objects. See docs/layers.md.
#pragma once

#include "effattn/layers/attention.hpp"
#include "effattn/layers/based.hpp"
#include "effattn/layers/delta_net.hpp"
#include "effattn/layers/linear.hpp"
#include "effattn/layers/mamba.hpp"
#include "effattn/layers/mla.hpp"
#include "effattn/layers/moe.hpp"
#include "effattn/layers/norm.hpp"
#include "effattn/layers/short_conv.hpp"
#include "effattn/layers/weights.hpp"
