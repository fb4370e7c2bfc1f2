// Helpers shared by the CPU and CUDA TorchScript neighbor-list ops.
#pragma once
#include <ATen/ATen.h>

#include "neighbors.hpp"

namespace mlsim {
// Raises ValueError-style c10 errors naming the bad argument.
void check_neighbor_inputs(const at::Tensor& positions, const at::Tensor& cell, const at::Tensor& pbc, double cutoff);
// cell_cpu: (3, 3) float64 CPU; pbc_cpu: (3,) bool CPU.
NeighborOptions options_from(const at::Tensor& cell_cpu, const at::Tensor& pbc_cpu, double cutoff, bool full);
}  // namespace mlsim
