// Collects the pybind11 bindings of all kernels (kept apart from module.cpp so kernels add lines here).
#include "bindings.hpp"

namespace mlsim {
void bind_all(pybind11::module_& m) {
    bind_neighbors(m);
}
}  // namespace mlsim
