// Python entry point of the compiled core: mlsim._core (NumPy only; the torch ops live in the
// separate libmlsim_torch.so). Each kernel file exposes a `bind_*` function; the algorithms
// themselves know nothing of Python.
#include <pybind11/pybind11.h>

#include "bindings.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "mlsim compiled kernels (C++, optional CUDA)";
    m.def("version", []() { return std::string(MLSIM_VERSION); },
          "Version of the mlsim package this extension was built from.");
    m.def("cuda_built", []() {
#ifdef MLSIM_WITH_CUDA
        return true;
#else
        return false;
#endif
    }, "Whether the CUDA kernels were compiled into this build.");
    m.def("build_info", []() { return std::string(MLSIM_BUILD_INFO); },
          "How this extension was built (CPU-only or with CUDA, and why).");
    mlsim::bind_all(m);
}
