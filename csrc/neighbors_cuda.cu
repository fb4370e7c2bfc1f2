// CUDA kernels of torch.ops.mlsim.neighbor_list / neighbor_list_batch (built only with a CUDA
// toolchain matching torch's, see cmake/MlsimCuda.cmake).
// Same cell list as the CPU kernel: the geometry (box, bins, stencil) is set up on the host with the
// shared code of neighbors.cpp; on the device one thread per atom wraps and bins it, atoms are
// stably sorted by bin, then one thread per atom i scans its stencil twice: once to count its pairs,
// once (after an exclusive scan of the counts) to write them. No atomics, so the output is
// deterministic and ordered exactly like the CPU kernel's (by i, then stencil order, then by bin).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <stdexcept>
#include <vector>

#include "neighbors.hpp"
#include "neighbors_torch.hpp"

namespace mlsim {
namespace {

struct DeviceGrid {
    double cell[9];
    double inv[9];
    double origin[3];
    double inv_width[3];
    int32_t nbins[3];
    int32_t reach[3];
    bool periodic[3];
    double rc2;
    bool full;
};

__global__ void prepare_kernel(const double* __restrict__ pos, int64_t n, DeviceGrid g, double* __restrict__ wrapped,
                               int32_t* __restrict__ wrap, int64_t* __restrict__ bin) {
    const int64_t a = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (a >= n) return;
    const double r[3] = {pos[3 * a], pos[3 * a + 1], pos[3 * a + 2]};
    int32_t w[3] = {0, 0, 0};
    int32_t b[3];
    for (int k = 0; k < 3; ++k) {
        double s = r[0] * g.inv[k] + r[1] * g.inv[3 + k] + r[2] * g.inv[6 + k];
        if (g.periodic[k]) {
            const double f = floor(s);
            s -= f;
            w[k] = static_cast<int32_t>(f);
            if (s >= 1.0) {
                s -= 1.0;
                w[k] += 1;
            }
        }
        double f = floor((s - g.origin[k]) * g.inv_width[k]);
        f = f >= 0.0 ? f : 0.0;
        b[k] = f >= g.nbins[k] ? g.nbins[k] - 1 : static_cast<int32_t>(f);
    }
    for (int d = 0; d < 3; ++d) {
        wrapped[3 * a + d] = r[d] - (w[0] * g.cell[d] + w[1] * g.cell[3 + d] + w[2] * g.cell[6 + d]);
        wrap[3 * a + d] = w[d];
    }
    bin[a] = (static_cast<int64_t>(b[0]) * g.nbins[1] + b[1]) * g.nbins[2] + b[2];
}

// steps: for direction k, entries [offset_k + b * (2 reach_k + 1) + o] = (neighbor bin, image).
template <bool kWrite>
__global__ void search_kernel(int64_t n, DeviceGrid g, const double* __restrict__ wrapped,
                              const int32_t* __restrict__ wrap, const int64_t* __restrict__ bin,
                              const double* __restrict__ sorted_pos, const int64_t* __restrict__ sorted_idx,
                              const int64_t* __restrict__ start, const int2* __restrict__ steps, int3 step_offset,
                              int64_t* __restrict__ counts, const int64_t* __restrict__ offsets,
                              int64_t* __restrict__ out_i, int64_t* __restrict__ out_j, int64_t* __restrict__ out_s) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n) return;
    const double xi = wrapped[3 * i], yi = wrapped[3 * i + 1], zi = wrapped[3 * i + 2];
    const int32_t wi0 = wrap[3 * i], wi1 = wrap[3 * i + 1], wi2 = wrap[3 * i + 2];
    const int64_t b = bin[i];
    const int32_t nb1 = g.nbins[1], nb2 = g.nbins[2];
    const int32_t b0 = static_cast<int32_t>(b / (static_cast<int64_t>(nb1) * nb2));
    const int32_t b1 = static_cast<int32_t>((b / nb2) % nb1);
    const int32_t b2 = static_cast<int32_t>(b % nb2);
    const int32_t w0 = 2 * g.reach[0] + 1, w1 = 2 * g.reach[1] + 1, w2 = 2 * g.reach[2] + 1;
    const int2* s0 = steps + step_offset.x + b0 * w0;
    const int2* s1 = steps + step_offset.y + b1 * w1;
    const int2* s2 = steps + step_offset.z + b2 * w2;
    int64_t m = 0;
    const int64_t base_out = kWrite ? offsets[i] : 0;
    for (int32_t o0 = 0; o0 < w0; ++o0) {
        const int2 st0 = s0[o0];
        if (st0.x < 0) continue;
        for (int32_t o1 = 0; o1 < w1; ++o1) {
            const int2 st1 = s1[o1];
            if (st1.x < 0) continue;
            const int64_t row = (static_cast<int64_t>(st0.x) * nb1 + st1.x) * nb2;
            for (int32_t o2 = 0; o2 < w2; ++o2) {
                const int2 st2 = s2[o2];
                if (st2.x < 0) continue;
                const int32_t t0 = st0.y, t1 = st1.y, t2 = st2.y;
                const double ox = t0 * g.cell[0] + t1 * g.cell[3] + t2 * g.cell[6] - xi;
                const double oy = t0 * g.cell[1] + t1 * g.cell[4] + t2 * g.cell[7] - yi;
                const double oz = t0 * g.cell[2] + t1 * g.cell[5] + t2 * g.cell[8] - zi;
                const bool zero_image = (t0 | t1 | t2) == 0;
                const int64_t nbin = row + st2.x;
                const int64_t end = start[nbin + 1];
                for (int64_t p = start[nbin]; p < end; ++p) {
                    const double dx = sorted_pos[3 * p] + ox, dy = sorted_pos[3 * p + 1] + oy,
                                 dz = sorted_pos[3 * p + 2] + oz;
                    if (dx * dx + dy * dy + dz * dz >= g.rc2) continue;
                    const int64_t j = sorted_idx[p];
                    if (j == i && zero_image) continue;
                    const int32_t S0 = t0 + wi0 - wrap[3 * j];
                    const int32_t S1 = t1 + wi1 - wrap[3 * j + 1];
                    const int32_t S2 = t2 + wi2 - wrap[3 * j + 2];
                    if (!g.full) {
                        if (j < i) continue;
                        if (j == i && !(S0 > 0 || (S0 == 0 && (S1 > 0 || (S1 == 0 && S2 > 0))))) continue;
                    }
                    if (kWrite) {
                        const int64_t q = base_out + m;
                        out_i[q] = i;
                        out_j[q] = j;
                        out_s[3 * q] = S0;
                        out_s[3 * q + 1] = S1;
                        out_s[3 * q + 2] = S2;
                    }
                    ++m;
                }
            }
        }
    }
    if (!kWrite) counts[i] = m;
}

using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Triple empty_result(const at::Tensor& like) {
    auto opts = like.options().dtype(at::kLong);
    return {at::empty({0}, opts), at::empty({0}, opts), at::empty({0, 3}, opts)};
}

// One structure; cell (3, 3) and pbc (3,) may live on any device (they are read on the host).
Triple neighbor_list_cuda_one(const at::Tensor& positions, const at::Tensor& cell, const at::Tensor& pbc, double cutoff,
                              bool full) {
    const c10::cuda::CUDAGuard guard(positions.device());
    NeighborOptions o = options_from(cell.detach().to(at::kCPU, at::kDouble).contiguous(),
                                     pbc.detach().to(at::kCPU).contiguous(), cutoff, full);
    detail::Box box;
    try {
        box = detail::make_box(o);
    } catch (const std::invalid_argument& e) {
        TORCH_CHECK_VALUE(false, "neighbor_list: ", e.what());
    }
    const int64_t n = positions.size(0);
    if (n == 0) return empty_result(positions);
    TORCH_CHECK_VALUE(n < (int64_t(1) << 31), "neighbor_list: more than 2^31 - 1 atoms are not supported");
    at::Tensor pos = positions.detach().to(at::kDouble).contiguous();
    TORCH_CHECK_VALUE(at::isfinite(pos).all().item<bool>(), "neighbor_list: positions contain NaN or infinite values");

    // Fractional extent along non-periodic directions decides the bins there.
    auto dopts = pos.options();
    at::Tensor inv = at::from_blob(box.inv.data(), {3, 3}, at::TensorOptions().dtype(at::kDouble)).to(pos.device());
    at::Tensor frac = at::matmul(pos, inv);
    at::Tensor smin_t = std::get<0>(frac.min(0)).cpu(), smax_t = std::get<0>(frac.max(0)).cpu();
    // The same grid as the CPU kernel, so that both return the pairs in the same order.
    const detail::Grid grid = detail::choose_grid(box, cutoff, n, smin_t.data_ptr<double>(), smax_t.data_ptr<double>());

    DeviceGrid g{};
    for (int k = 0; k < 9; ++k) {
        g.cell[k] = box.cell[k];
        g.inv[k] = box.inv[k];
    }
    for (int k = 0; k < 3; ++k) {
        // The host grid used smin from the same matmul; a bin index that rounds outside is clamped.
        g.origin[k] = grid.origin[k];
        g.inv_width[k] = grid.inv_width[k];
        g.nbins[k] = grid.nbins[k];
        g.reach[k] = grid.reach[k];
        g.periodic[k] = box.periodic[k];
    }
    g.rc2 = cutoff * cutoff;
    g.full = full;

    // Stencil steps per direction, built on the host (tiny) and copied once.
    std::vector<int32_t> steps;
    int32_t step_offset[3];
    for (int k = 0; k < 3; ++k) {
        step_offset[k] = static_cast<int32_t>(steps.size() / 2);
        const int32_t nbk = grid.nbins[k], r = grid.reach[k];
        for (int32_t b = 0; b < nbk; ++b) {
            for (int32_t off = -r; off <= r; ++off) {
                const int32_t t = b + off;
                int32_t nb = -1, img = 0;
                if (box.periodic[k]) {
                    img = (t >= 0) ? t / nbk : -((-t + nbk - 1) / nbk);
                    nb = t - img * nbk;
                } else if (t >= 0 && t < nbk) {
                    nb = t;
                }
                steps.push_back(nb);
                steps.push_back(img);
            }
        }
    }
    at::Tensor steps_t = at::from_blob(steps.data(), {static_cast<int64_t>(steps.size())},
                                       at::TensorOptions().dtype(at::kInt))
                             .to(pos.device());

    // Only c10 CUDA headers: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers.
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const int threads = 128;
    const int blocks = static_cast<int>((n + threads - 1) / threads);
    at::Tensor wrapped = at::empty({n, 3}, dopts);
    at::Tensor wrap = at::empty({n, 3}, dopts.dtype(at::kInt));
    at::Tensor bin = at::empty({n}, dopts.dtype(at::kLong));
    prepare_kernel<<<blocks, threads, 0, stream>>>(pos.data_ptr<double>(), n, g, wrapped.data_ptr<double>(),
                                                    wrap.data_ptr<int32_t>(), bin.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    // Stable sort keeps atoms of a bin in input order, as on the CPU.
    auto sorted = at::sort(bin, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    at::Tensor sorted_bin = std::get<0>(sorted), sorted_idx = std::get<1>(sorted).contiguous();
    at::Tensor sorted_pos = wrapped.index_select(0, sorted_idx).contiguous();
    const int64_t n_bins = static_cast<int64_t>(grid.nbins[0]) * grid.nbins[1] * grid.nbins[2];
    at::Tensor start = at::searchsorted(sorted_bin, at::arange(n_bins + 1, bin.options())).contiguous();

    const int2* steps_ptr = reinterpret_cast<const int2*>(steps_t.data_ptr<int32_t>());
    const int3 soff = make_int3(step_offset[0], step_offset[1], step_offset[2]);
    at::Tensor counts = at::empty({n}, bin.options());
    search_kernel<false><<<blocks, threads, 0, stream>>>(
        n, g, wrapped.data_ptr<double>(), wrap.data_ptr<int32_t>(), bin.data_ptr<int64_t>(),
        sorted_pos.data_ptr<double>(), sorted_idx.data_ptr<int64_t>(), start.data_ptr<int64_t>(), steps_ptr, soff,
        counts.data_ptr<int64_t>(), nullptr, nullptr, nullptr, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::Tensor ends = at::cumsum(counts, 0);
    const int64_t total = ends[n - 1].item<int64_t>();
    at::Tensor offsets = (ends - counts).contiguous();
    auto lopts = bin.options();
    at::Tensor out_i = at::empty({total}, lopts), out_j = at::empty({total}, lopts), out_s = at::empty({total, 3}, lopts);
    if (total > 0) {
        search_kernel<true><<<blocks, threads, 0, stream>>>(
            n, g, wrapped.data_ptr<double>(), wrap.data_ptr<int32_t>(), bin.data_ptr<int64_t>(),
            sorted_pos.data_ptr<double>(), sorted_idx.data_ptr<int64_t>(), start.data_ptr<int64_t>(), steps_ptr, soff,
            nullptr, offsets.data_ptr<int64_t>(), out_i.data_ptr<int64_t>(), out_j.data_ptr<int64_t>(),
            out_s.data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    return {out_i, out_j, out_s};
}

Triple neighbor_list_cuda(const at::Tensor& positions, const at::Tensor& cell, const at::Tensor& pbc, double cutoff,
                          bool full) {
    check_neighbor_inputs(positions, cell, pbc, cutoff);
    TORCH_CHECK_VALUE(cell.dim() == 2 && cell.size(0) == 3 && cell.size(1) == 3,
                      "neighbor_list: cell must have shape (3, 3), got ", cell.sizes());
    TORCH_CHECK_VALUE(pbc.dim() == 1 && pbc.size(0) == 3, "neighbor_list: pbc must have shape (3,), got ", pbc.sizes());
    return neighbor_list_cuda_one(positions, cell, pbc, cutoff, full);
}

// Batched structures: one cell list per structure (a loop of launches; adequate for moderate B,
// a single fused launch over all structures is the next step for training on many tiny systems).
Triple neighbor_list_batch_cuda(const at::Tensor& positions, const at::Tensor& cell, const at::Tensor& pbc,
                                const at::Tensor& ptr, double cutoff, bool full) {
    check_neighbor_inputs(positions, cell, pbc, cutoff);
    TORCH_CHECK_VALUE(ptr.dim() == 1 && ptr.size(0) >= 1 && ptr.scalar_type() == at::kLong,
                      "neighbor_list_batch: ptr must be a 1-d int64 tensor of B + 1 offsets");
    const int64_t n_structures = ptr.size(0) - 1;
    TORCH_CHECK_VALUE(cell.dim() == 3 && cell.size(0) == n_structures && cell.size(1) == 3 && cell.size(2) == 3,
                      "neighbor_list_batch: cell must have shape (B, 3, 3), got ", cell.sizes());
    TORCH_CHECK_VALUE(pbc.dim() == 2 && pbc.size(0) == n_structures && pbc.size(1) == 3,
                      "neighbor_list_batch: pbc must have shape (B, 3), got ", pbc.sizes());
    at::Tensor p = ptr.to(at::kCPU).contiguous();
    const int64_t* pp = p.data_ptr<int64_t>();
    TORCH_CHECK_VALUE(pp[0] == 0 && pp[n_structures] == positions.size(0),
                      "neighbor_list_batch: ptr must start at 0 and end at N = ", positions.size(0));
    at::Tensor cell_cpu = cell.detach().to(at::kCPU, at::kDouble).contiguous();
    at::Tensor pbc_cpu = pbc.detach().to(at::kCPU).contiguous();
    std::vector<at::Tensor> is, js, ss;
    for (int64_t b = 0; b < n_structures; ++b) {
        TORCH_CHECK_VALUE(pp[b + 1] >= pp[b], "neighbor_list_batch: ptr must be non-decreasing (at ", b, ")");
        auto r = neighbor_list_cuda_one(positions.slice(0, pp[b], pp[b + 1]), cell_cpu[b], pbc_cpu[b], cutoff, full);
        is.push_back(std::get<0>(r) + pp[b]);
        js.push_back(std::get<1>(r) + pp[b]);
        ss.push_back(std::get<2>(r));
    }
    if (is.empty()) return empty_result(positions);
    return {at::cat(is), at::cat(js), at::cat(ss)};
}

}  // namespace
}  // namespace mlsim

TORCH_LIBRARY_IMPL(mlsim, CUDA, m) {
    m.impl("neighbor_list", &mlsim::neighbor_list_cuda);
    m.impl("neighbor_list_batch", &mlsim::neighbor_list_batch_cuda);
}
