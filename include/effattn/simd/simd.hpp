// The SIMD kernel layer: knows rows of numbers, nothing about attention.
#pragma once

#include "effattn/simd/kernels.hpp"
#include "effattn/simd/math.hpp"
#include "effattn/simd/online_softmax.hpp"
#include "effattn/simd/vec.hpp"
