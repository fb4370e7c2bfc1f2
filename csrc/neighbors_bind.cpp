// NumPy bindings of the neighbor list (mlsim._core.neighbor_list); validation names the argument.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <optional>
#include <stdexcept>
#include <string>

#include "bindings.hpp"
#include "neighbors.hpp"

namespace py = pybind11;

namespace mlsim {
namespace {

using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

std::string shape_of(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

py::tuple neighbor_list_numpy(const py::array& positions, double cutoff, const std::optional<py::array>& cell,
                              const std::array<bool, 3>& pbc, bool full, int num_threads) {
    if (positions.ndim() != 2 || positions.shape(1) != 3) {
        throw std::invalid_argument("positions must have shape (N, 3), got " + shape_of(positions));
    }
    const char kind = positions.dtype().kind();
    if (kind != 'f' && kind != 'i' && kind != 'u') {
        throw std::invalid_argument("positions must be a real (float) array, got dtype " +
                                    std::string(py::str(positions.dtype())));
    }
    NeighborOptions options;
    options.cutoff = cutoff;
    options.full = full;
    options.pbc = pbc;
    options.num_threads = num_threads;
    if (cell.has_value()) {
        if (cell->ndim() != 2 || cell->shape(0) != 3 || cell->shape(1) != 3) {
            throw std::invalid_argument("cell must have shape (3, 3), got " + shape_of(*cell));
        }
        DoubleArray c = DoubleArray::ensure(*cell);
        for (int k = 0; k < 9; ++k) options.cell[k] = c.data()[k];
        options.has_cell = true;
    }
    DoubleArray pos = DoubleArray::ensure(positions);
    const int64_t n = pos.shape(0);
    NeighborList list;
    {
        py::gil_scoped_release release;
        list = compute_neighbors(pos.data(), n, options);
    }
    const py::ssize_t p = list.size();
    py::array_t<int64_t> i(p), j(p), shifts(std::vector<py::ssize_t>{p, 3});
    int64_t* ip = i.mutable_data();
    int64_t* jp = j.mutable_data();
    int64_t* sp = shifts.mutable_data();
    {
        py::gil_scoped_release release;
        list.write(ip, jp, sp, num_threads);
    }
    return py::make_tuple(i, j, shifts);
}

}  // namespace

void bind_neighbors(py::module_& m) {
    m.def("neighbor_list", &neighbor_list_numpy, py::arg("positions"), py::arg("cutoff"), py::arg("cell"),
          py::arg("pbc"), py::arg("full") = true, py::arg("num_threads") = 0,
          "Cell-list neighbor pairs (i, j, shifts): positions[j] - positions[i] + shifts @ cell is "
          "shorter than cutoff. Use mlsim.neighbors.neighbor_list, which validates friendlier.");
}

}  // namespace mlsim
