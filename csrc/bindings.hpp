// Registration hooks that module.cpp calls; one per kernel family.
#pragma once
#include <pybind11/pybind11.h>

namespace mlsim {
// Adds every kernel's NumPy-facing functions to the module.
void bind_all(pybind11::module_& m);
// mlsim._core.neighbor_list (csrc/neighbors_bind.cpp).
void bind_neighbors(pybind11::module_& m);
}  // namespace mlsim
