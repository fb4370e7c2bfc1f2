// TorchScript ops torch.ops.mlsim.neighbor_list / neighbor_list_batch (CPU kernels here, CUDA
// kernels in neighbors_cuda.cu). Outputs are int64 index tensors without gradient; models build
// R[j] - R[i] + shifts.to(R.dtype) @ cell in torch so that gradients flow through positions/cell.
// Compiled into libmlsim_torch.so, which links libtorch only: no Python header or symbol may be
// used here, so that C++ hosts (OpenMM with openmm-torch) can load the library.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "neighbors.hpp"
#include "neighbors_torch.hpp"

namespace mlsim {

void check_neighbor_inputs(const at::Tensor& positions, const at::Tensor& cell, const at::Tensor& pbc, double cutoff) {
    TORCH_CHECK_VALUE(positions.dim() == 2 && positions.size(1) == 3,
                      "neighbor_list: positions must have shape (N, 3), got ", positions.sizes());
    TORCH_CHECK_VALUE(positions.scalar_type() == at::kFloat || positions.scalar_type() == at::kDouble,
                      "neighbor_list: positions must be float32 or float64, got ", positions.scalar_type());
    TORCH_CHECK_VALUE(cell.scalar_type() == positions.scalar_type(),
                      "neighbor_list: cell must have the dtype of positions (", positions.scalar_type(), "), got ",
                      cell.scalar_type());
    TORCH_CHECK_VALUE(pbc.scalar_type() == at::kBool, "neighbor_list: pbc must be a bool tensor, got ", pbc.scalar_type());
    TORCH_CHECK_VALUE(cell.device() == positions.device() && pbc.device() == positions.device(),
                      "neighbor_list: positions, cell and pbc must be on the same device, got ", positions.device(),
                      ", ", cell.device(), ", ", pbc.device());
    TORCH_CHECK_VALUE(std::isfinite(cutoff) && cutoff > 0.0, "neighbor_list: cutoff must be a finite number > 0, got ",
                      cutoff);
}

NeighborOptions options_from(const at::Tensor& cell_cpu, const at::Tensor& pbc_cpu, double cutoff, bool full) {
    NeighborOptions o;
    o.cutoff = cutoff;
    o.full = full;
    o.has_cell = true;
    auto c = cell_cpu.accessor<double, 2>();
    for (int r = 0; r < 3; ++r) {
        for (int k = 0; k < 3; ++k) o.cell[3 * r + k] = c[r][k];
    }
    auto p = pbc_cpu.accessor<bool, 1>();
    for (int k = 0; k < 3; ++k) o.pbc[k] = p[k];
    o.num_threads = at::get_num_threads();
    return o;
}

namespace {

// Outputs of a few MB are written once right after allocation, so their page faults cost about
// as much as the search; asking for transparent huge pages (as NumPy does) makes them 512x fewer.
at::Tensor empty_long(at::IntArrayRef shape) {
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(at::kLong));
#ifdef MADV_HUGEPAGE
    constexpr uintptr_t kHuge = uintptr_t(2) << 20;
    const size_t bytes = static_cast<size_t>(t.numel()) * sizeof(int64_t);
    if (bytes >= 4 * kHuge) {
        const uintptr_t begin = (reinterpret_cast<uintptr_t>(t.data_ptr()) + kHuge - 1) & ~(kHuge - 1);
        const uintptr_t end = (reinterpret_cast<uintptr_t>(t.data_ptr()) + bytes) & ~(kHuge - 1);
        if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
    }
#endif
    return t;
}

using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Triple neighbor_list_cpu(const at::Tensor& positions, const at::Tensor& cell, const at::Tensor& pbc, double cutoff,
                         bool full) {
    check_neighbor_inputs(positions, cell, pbc, cutoff);
    TORCH_CHECK_VALUE(cell.dim() == 2 && cell.size(0) == 3 && cell.size(1) == 3,
                      "neighbor_list: cell must have shape (3, 3), got ", cell.sizes());
    TORCH_CHECK_VALUE(pbc.dim() == 1 && pbc.size(0) == 3, "neighbor_list: pbc must have shape (3,), got ", pbc.sizes());
    at::Tensor pos = positions.detach().to(at::kDouble).contiguous();
    NeighborOptions o = options_from(cell.detach().to(at::kDouble).contiguous(), pbc.contiguous(), cutoff, full);
    NeighborList list;
    // NeighborListTooLarge (a std::bad_alloc, also from the worker threads, which hand their
    // exceptions back to this thread) passes through: torch raises it as MemoryError, and inside
    // TorchScript as a RuntimeError with the same message; either is catchable.
    try {
        list = compute_neighbors(pos.data_ptr<double>(), pos.size(0), o);
    } catch (const std::invalid_argument& e) {
        TORCH_CHECK_VALUE(false, "neighbor_list: ", e.what());
    }
    at::Tensor i = empty_long({list.size()}), j = empty_long({list.size()}), s = empty_long({list.size(), 3});
    list.write(i.data_ptr<int64_t>(), j.data_ptr<int64_t>(), s.data_ptr<int64_t>(), o.num_threads);
    return {i, j, s};
}

Triple neighbor_list_batch_cpu(const at::Tensor& positions, const at::Tensor& cell, const at::Tensor& pbc,
                               const at::Tensor& ptr, double cutoff, bool full) {
    check_neighbor_inputs(positions, cell, pbc, cutoff);
    TORCH_CHECK_VALUE(ptr.dim() == 1 && ptr.size(0) >= 1 && ptr.scalar_type() == at::kLong,
                      "neighbor_list_batch: ptr must be a 1-d int64 tensor of B + 1 offsets, got ", ptr.sizes(), " ",
                      ptr.scalar_type());
    const int64_t n_structures = ptr.size(0) - 1;
    TORCH_CHECK_VALUE(cell.dim() == 3 && cell.size(0) == n_structures && cell.size(1) == 3 && cell.size(2) == 3,
                      "neighbor_list_batch: cell must have shape (B, 3, 3) with B = len(ptr) - 1 = ", n_structures,
                      ", got ", cell.sizes());
    TORCH_CHECK_VALUE(pbc.dim() == 2 && pbc.size(0) == n_structures && pbc.size(1) == 3,
                      "neighbor_list_batch: pbc must have shape (B, 3), got ", pbc.sizes());
    at::Tensor ptr_c = ptr.contiguous();
    const int64_t* p = ptr_c.data_ptr<int64_t>();
    TORCH_CHECK_VALUE(p[0] == 0 && p[n_structures] == positions.size(0),
                      "neighbor_list_batch: ptr must start at 0 and end at N = ", positions.size(0));
    for (int64_t b = 0; b < n_structures; ++b) {
        TORCH_CHECK_VALUE(p[b + 1] >= p[b], "neighbor_list_batch: ptr must be non-decreasing (at ", b, ")");
    }
    at::Tensor pos = positions.detach().to(at::kDouble).contiguous();
    at::Tensor cell_d = cell.detach().to(at::kDouble).contiguous();
    at::Tensor pbc_c = pbc.contiguous();
    std::vector<NeighborOptions> options(n_structures);
    for (int64_t b = 0; b < n_structures; ++b) options[b] = options_from(cell_d[b], pbc_c[b], cutoff, full);
    const int threads = at::get_num_threads();
    std::vector<NeighborList> lists;
    try {
        lists = compute_neighbors_batch(pos.data_ptr<double>(), p, options, threads);
    } catch (const std::invalid_argument& e) {
        TORCH_CHECK_VALUE(false, "neighbor_list_batch: ", e.what());
    }
    const int64_t total = batch_size(lists);
    at::Tensor i = empty_long({total}), j = empty_long({total}), s = empty_long({total, 3});
    write_batch(lists, p, i.data_ptr<int64_t>(), j.data_ptr<int64_t>(), s.data_ptr<int64_t>(), threads);
    return {i, j, s};
}

}  // namespace
}  // namespace mlsim

// FRAGMENT: other kernels may add their own ops to the mlsim namespace from other files.
TORCH_LIBRARY_FRAGMENT(mlsim, m) {
    m.def("neighbor_list(Tensor positions, Tensor cell, Tensor pbc, float cutoff, bool full) "
          "-> (Tensor i, Tensor j, Tensor shifts)");
    m.def("neighbor_list_batch(Tensor positions, Tensor cell, Tensor pbc, Tensor ptr, float cutoff, bool full) "
          "-> (Tensor i, Tensor j, Tensor shifts)");
}

TORCH_LIBRARY_IMPL(mlsim, CPU, m) {
    m.impl("neighbor_list", &mlsim::neighbor_list_cpu);
    m.impl("neighbor_list_batch", &mlsim::neighbor_list_batch_cpu);
}
