// O(N) cell-list neighbor search on the CPU.
// Atoms are wrapped into the cell along periodic directions (remembering the integer wrap so the
// returned shifts refer to the original positions), binned in fractional coordinates with bins at
// least one cutoff wide perpendicular to their faces, and counting-sorted by bin so that the atoms
// of one bin are contiguous. Each thread then takes ranges of atoms i in input order and scans the
// (2 reach + 1)^3 surrounding bins; pairs go to per-chunk buffers that are concatenated in order.
#include "neighbors.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>

namespace mlsim {
namespace detail {

namespace {
// Relative slack on the bin width: a pair at distance just below the cutoff must never need a bin
// two steps away because of rounding in the fractional coordinates.
constexpr double kSlack = 1e-8;

std::array<double, 3> row(const std::array<double, 9>& m, int k) { return {m[3 * k], m[3 * k + 1], m[3 * k + 2]}; }
std::array<double, 3> cross(const std::array<double, 3>& a, const std::array<double, 3>& b) {
    return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}
double dot(const std::array<double, 3>& a, const std::array<double, 3>& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
double norm(const std::array<double, 3>& a) { return std::sqrt(dot(a, a)); }
void set_row(std::array<double, 9>& m, int k, const std::array<double, 3>& v) {
    m[3 * k] = v[0];
    m[3 * k + 1] = v[1];
    m[3 * k + 2] = v[2];
}
std::array<double, 3> normalized(const std::array<double, 3>& a) {
    double n = norm(a);
    return {a[0] / n, a[1] / n, a[2] / n};
}
}  // namespace

void check_cutoff(double cutoff) {
    if (!std::isfinite(cutoff) || cutoff <= 0.0) {
        throw std::invalid_argument("cutoff must be a finite number > 0, got " + std::to_string(cutoff));
    }
}

int resolve_threads(int requested, int64_t work) {
    int n = requested > 0 ? requested : static_cast<int>(std::thread::hardware_concurrency());
    n = std::max(1, n);
    // Starting a thread costs ~20 us; below a few thousand atoms one thread is faster.
    int64_t useful = std::max<int64_t>(1, work / 1024);
    return static_cast<int>(std::min<int64_t>(n, useful));
}

Box make_box(const NeighborOptions& options) {
    Box b;
    int n_periodic = 0;
    for (int k = 0; k < 3; ++k) {
        b.periodic[k] = options.pbc[k];
        n_periodic += options.pbc[k];
    }
    if (n_periodic > 0 && !options.has_cell) {
        throw std::invalid_argument("pbc is true along some direction but no cell was given");
    }
    for (double v : options.cell) {
        if (options.has_cell && !std::isfinite(v)) throw std::invalid_argument("cell contains NaN or infinite values");
    }
    for (int k = 0; k < 3; ++k) {
        if (b.periodic[k]) set_row(b.cell, k, row(options.cell, k));
    }
    // Non-periodic directions get unit vectors orthogonal to the periodic ones: shifts along them
    // are always zero, so only their independence matters (a slab may have a zero third vector).
    const char* singular = "cell is singular along its periodic directions (lattice vectors are linearly dependent)";
    if (n_periodic == 3) {
        b.box = b.cell;
    } else if (n_periodic == 2) {
        int k = 0;
        while (b.periodic[k]) ++k;
        auto v = cross(row(b.cell, (k + 1) % 3), row(b.cell, (k + 2) % 3));
        if (norm(v) == 0.0) throw std::invalid_argument(singular);
        b.box = b.cell;
        set_row(b.box, k, normalized(v));
    } else if (n_periodic == 1) {
        int k = 0;
        while (!b.periodic[k]) ++k;
        auto a = row(b.cell, k);
        if (norm(a) == 0.0) throw std::invalid_argument(singular);
        int axis = 0;  // least aligned Cartesian axis gives a well-conditioned perpendicular
        for (int d = 1; d < 3; ++d) {
            if (std::fabs(a[d]) < std::fabs(a[axis])) axis = d;
        }
        std::array<double, 3> e{0.0, 0.0, 0.0};
        e[axis] = 1.0;
        auto u = normalized(cross(a, e));
        auto w = normalized(cross(a, u));
        b.box = b.cell;
        set_row(b.box, (k + 1) % 3, u);
        set_row(b.box, (k + 2) % 3, w);
    } else {
        b.box = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    }
    auto a0 = row(b.box, 0), a1 = row(b.box, 1), a2 = row(b.box, 2);
    auto c12 = cross(a1, a2), c20 = cross(a2, a0), c01 = cross(a0, a1);
    double det = dot(a0, c12);
    double scale = norm(a0) * norm(a1) * norm(a2);
    if (!(std::fabs(det) > 1e-10 * scale) || scale == 0.0) throw std::invalid_argument(singular);
    // inv columns are the reciprocal vectors: inv[r][c] = (a_{c+1} x a_{c+2})[r] / det.
    const std::array<double, 3> rec[3] = {c12, c20, c01};
    for (int r = 0; r < 3; ++r) {
        for (int c = 0; c < 3; ++c) b.inv[3 * r + c] = rec[c][r] / det;
    }
    for (int k = 0; k < 3; ++k) b.width[k] = std::fabs(det) / norm(rec[k]);
    return b;
}

Grid make_grid(const Box& box, double cutoff, int64_t n_atoms, const double* smin, const double* smax) {
    Grid g;
    const double rc = cutoff * (1.0 + kSlack);
    std::array<double, 3> extent{};
    for (int k = 0; k < 3; ++k) {
        if (box.periodic[k]) {
            g.origin[k] = 0.0;
            extent[k] = 1.0;
        } else {
            g.origin[k] = smin[k];
            extent[k] = std::max(smax[k] - smin[k], 0.0);
        }
        double length = extent[k] * box.width[k];
        double nb = std::floor(length / rc);
        g.nbins[k] = static_cast<int32_t>(std::clamp(nb, 1.0, 1.0e6));
    }
    // Sparse systems (atoms far apart without pbc) would otherwise ask for more bins than atoms.
    const int64_t cap = std::max<int64_t>(64, 2 * n_atoms);
    while (static_cast<int64_t>(g.nbins[0]) * g.nbins[1] * g.nbins[2] > cap) {
        int k = static_cast<int>(std::max_element(g.nbins.begin(), g.nbins.end()) - g.nbins.begin());
        g.nbins[k] = (g.nbins[k] + 1) / 2;
    }
    for (int k = 0; k < 3; ++k) {
        double bin_length = extent[k] * box.width[k] / g.nbins[k];
        if (box.periodic[k]) {
            // Cells thinner than the cutoff: search several periodic images of the single bin.
            g.reach[k] = static_cast<int32_t>(std::max(1.0, std::ceil(rc / bin_length)));
        } else {
            g.reach[k] = 1;  // bins are at least a cutoff wide, or there is only one
        }
        g.inv_width[k] = extent[k] > 0.0 ? g.nbins[k] / extent[k] : 0.0;
    }
    return g;
}

}  // namespace detail

namespace {

inline int32_t bin_of(double s, double origin, double inv_width, int32_t n) {
    double f = std::floor((s - origin) * inv_width);
    if (!(f >= 0.0)) return 0;  // also catches the impossible NaN: positions were checked finite
    if (f >= n) return n - 1;
    return static_cast<int32_t>(f);
}

inline bool positive_shift(int32_t a, int32_t b, int32_t c) {
    return a > 0 || (a == 0 && (b > 0 || (b == 0 && c > 0)));
}

// Runs body(chunk_index) for chunk indices [0, n_chunks) on n_threads threads (dynamic schedule).
template <class F>
void parallel_chunks(int n_chunks, int n_threads, F&& body) {
    if (n_threads <= 1 || n_chunks <= 1) {
        for (int c = 0; c < n_chunks; ++c) body(c);
        return;
    }
    std::atomic<int> next{0};
    auto worker = [&]() {
        for (int c = next.fetch_add(1); c < n_chunks; c = next.fetch_add(1)) body(c);
    };
    std::vector<std::thread> threads;
    threads.reserve(n_threads - 1);
    for (int t = 1; t < n_threads; ++t) threads.emplace_back(worker);
    worker();
    for (auto& t : threads) t.join();
}

}  // namespace

NeighborList compute_neighbors(const double* positions, int64_t n_atoms, const NeighborOptions& options) {
    detail::check_cutoff(options.cutoff);
    if (n_atoms < 0) throw std::invalid_argument("positions must have a non-negative number of atoms");
    if (n_atoms >= std::numeric_limits<int32_t>::max()) {
        throw std::invalid_argument("positions: more than 2^31 - 1 atoms are not supported");
    }
    const detail::Box box = detail::make_box(options);
    NeighborList result;
    if (n_atoms == 0) return result;
    const int32_t n = static_cast<int32_t>(n_atoms);
    for (int64_t k = 0; k < 3 * n_atoms; ++k) {
        if (!std::isfinite(positions[k])) {
            throw std::invalid_argument("positions contain NaN or infinite values (atom " + std::to_string(k / 3) + ")");
        }
    }

    // 1. Fractional coordinates, wrapped along periodic directions.
    std::vector<double> frac(3 * static_cast<size_t>(n));
    std::vector<int32_t> wrap(3 * static_cast<size_t>(n));
    std::vector<double> wrapped(3 * static_cast<size_t>(n));
    double smin[3] = {0, 0, 0}, smax[3] = {0, 0, 0};
    for (int k = 0; k < 3; ++k) {
        smin[k] = std::numeric_limits<double>::infinity();
        smax[k] = -std::numeric_limits<double>::infinity();
    }
    const auto& inv = box.inv;
    const auto& cell = box.cell;
    for (int32_t a = 0; a < n; ++a) {
        const double* r = positions + 3 * static_cast<size_t>(a);
        int32_t w[3] = {0, 0, 0};
        for (int k = 0; k < 3; ++k) {
            double s = r[0] * inv[k] + r[1] * inv[3 + k] + r[2] * inv[6 + k];
            if (box.periodic[k]) {
                double f = std::floor(s);
                if (std::fabs(f) > 1e9) throw std::invalid_argument("positions are more than 1e9 cells away from the cell");
                s -= f;
                w[k] = static_cast<int32_t>(f);
                if (s >= 1.0) {  // rounding of a tiny negative s
                    s -= 1.0;
                    w[k] += 1;
                }
            } else {
                smin[k] = std::min(smin[k], s);
                smax[k] = std::max(smax[k], s);
            }
            frac[3 * a + k] = s;
            wrap[3 * a + k] = w[k];
        }
        for (int d = 0; d < 3; ++d) {
            wrapped[3 * a + d] = r[d] - (w[0] * cell[d] + w[1] * cell[3 + d] + w[2] * cell[6 + d]);
        }
    }
    const detail::Grid grid = detail::make_grid(box, options.cutoff, n_atoms, smin, smax);
    const int32_t nb0 = grid.nbins[0], nb1 = grid.nbins[1], nb2 = grid.nbins[2];
    const int64_t n_bins = static_cast<int64_t>(nb0) * nb1 * nb2;

    // 2. Counting sort by bin (stable: atoms of a bin stay in input order).
    std::vector<int32_t> atom_bin3(3 * static_cast<size_t>(n));
    std::vector<int32_t> atom_bin(n);
    std::vector<int64_t> start(n_bins + 1, 0);
    for (int32_t a = 0; a < n; ++a) {
        int32_t b[3];
        for (int k = 0; k < 3; ++k) {
            b[k] = bin_of(frac[3 * a + k], grid.origin[k], grid.inv_width[k], grid.nbins[k]);
            atom_bin3[3 * a + k] = b[k];
        }
        atom_bin[a] = (b[0] * nb1 + b[1]) * nb2 + b[2];
        start[atom_bin[a] + 1]++;
    }
    for (int64_t b = 0; b < n_bins; ++b) start[b + 1] += start[b];
    std::vector<double> sorted_pos(3 * static_cast<size_t>(n));
    std::vector<int32_t> sorted_idx(n);
    {
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        for (int32_t a = 0; a < n; ++a) {
            int64_t p = fill[atom_bin[a]]++;
            sorted_idx[p] = a;
            sorted_pos[3 * p] = wrapped[3 * a];
            sorted_pos[3 * p + 1] = wrapped[3 * a + 1];
            sorted_pos[3 * p + 2] = wrapped[3 * a + 2];
        }
    }

    // 3. Per-direction stencil: for bin b and offset o, the neighbor bin and its periodic image.
    struct Step {
        int32_t bin;
        int32_t image;
    };
    std::array<std::vector<Step>, 3> steps;  // steps[k][b * (2 reach + 1) + o], bin < 0: none
    for (int k = 0; k < 3; ++k) {
        const int32_t nbk = grid.nbins[k], r = grid.reach[k], width = 2 * r + 1;
        steps[k].resize(static_cast<size_t>(nbk) * width);
        for (int32_t b = 0; b < nbk; ++b) {
            for (int32_t o = -r; o <= r; ++o) {
                int32_t t = b + o;
                Step s{-1, 0};
                if (box.periodic[k]) {
                    int32_t img = (t >= 0) ? t / nbk : -((-t + nbk - 1) / nbk);
                    s = {t - img * nbk, img};
                } else if (t >= 0 && t < nbk) {
                    s = {t, 0};
                }
                steps[k][static_cast<size_t>(b) * width + (o + r)] = s;
            }
        }
    }

    // 4. Pair search, chunks of atoms i in input order.
    const double rc2 = options.cutoff * options.cutoff;
    const bool full = options.full;
    const int n_threads = detail::resolve_threads(options.num_threads, n_atoms);
    const int n_chunks = n_threads == 1 ? 1 : std::min<int>(n, 8 * n_threads);
    // Expected pairs per atom from the mean density, to reserve the buffers once.
    double volume = 1.0;
    for (int k = 0; k < 3; ++k) volume *= std::max(grid.nbins[k] / std::max(grid.inv_width[k], 1e-300), 0.0) * box.width[k];
    double density = (std::isfinite(volume) && volume > 0) ? n / volume : 0.0;
    double expected = density * 4.18879 * rc2 * options.cutoff * (full ? 1.0 : 0.5);
    expected = std::min(expected, static_cast<double>(n) * 64.0);

    result.chunks_.resize(n_chunks);
    const int32_t w0 = 2 * grid.reach[0] + 1, w1 = 2 * grid.reach[1] + 1, w2 = 2 * grid.reach[2] + 1;
    parallel_chunks(n_chunks, n_threads, [&](int c) {
        auto& chunk = result.chunks_[c];
        chunk.begin = static_cast<int32_t>(static_cast<int64_t>(n) * c / n_chunks);
        chunk.end = static_cast<int32_t>(static_cast<int64_t>(n) * (c + 1) / n_chunks);
        const int32_t len = chunk.end - chunk.begin;
        chunk.count.assign(len, 0);
        size_t reserve = static_cast<size_t>(expected * 1.3 * len) + 16;
        chunk.j.reserve(reserve);
        chunk.shifts.reserve(3 * reserve);
        for (int32_t i = chunk.begin; i < chunk.end; ++i) {
            const double xi = wrapped[3 * i], yi = wrapped[3 * i + 1], zi = wrapped[3 * i + 2];
            const int32_t wi0 = wrap[3 * i], wi1 = wrap[3 * i + 1], wi2 = wrap[3 * i + 2];
            const Step* s0 = &steps[0][static_cast<size_t>(atom_bin3[3 * i]) * w0];
            const Step* s1 = &steps[1][static_cast<size_t>(atom_bin3[3 * i + 1]) * w1];
            const Step* s2 = &steps[2][static_cast<size_t>(atom_bin3[3 * i + 2]) * w2];
            size_t before = chunk.j.size();
            for (int32_t o0 = 0; o0 < w0; ++o0) {
                if (s0[o0].bin < 0) continue;
                const int32_t t0 = s0[o0].image;
                for (int32_t o1 = 0; o1 < w1; ++o1) {
                    if (s1[o1].bin < 0) continue;
                    const int32_t t1 = s1[o1].image;
                    const int64_t base = (static_cast<int64_t>(s0[o0].bin) * nb1 + s1[o1].bin) * nb2;
                    for (int32_t o2 = 0; o2 < w2; ++o2) {
                        if (s2[o2].bin < 0) continue;
                        const int32_t t2 = s2[o2].image;
                        const int64_t bin = base + s2[o2].bin;
                        // Cartesian image vector minus the position of i, added to each candidate.
                        const double ox = t0 * cell[0] + t1 * cell[3] + t2 * cell[6] - xi;
                        const double oy = t0 * cell[1] + t1 * cell[4] + t2 * cell[7] - yi;
                        const double oz = t0 * cell[2] + t1 * cell[5] + t2 * cell[8] - zi;
                        const bool zero_image = (t0 | t1 | t2) == 0;
                        const int64_t end = start[bin + 1];
                        for (int64_t p = start[bin]; p < end; ++p) {
                            const double dx = sorted_pos[3 * p] + ox;
                            const double dy = sorted_pos[3 * p + 1] + oy;
                            const double dz = sorted_pos[3 * p + 2] + oz;
                            if (dx * dx + dy * dy + dz * dz >= rc2) continue;
                            const int32_t j = sorted_idx[p];
                            if (j == i && zero_image) continue;
                            // Shift relative to the unwrapped positions: S = T + wrap_i - wrap_j.
                            const int32_t S0 = t0 + wi0 - wrap[3 * j];
                            const int32_t S1 = t1 + wi1 - wrap[3 * j + 1];
                            const int32_t S2 = t2 + wi2 - wrap[3 * j + 2];
                            if (!full) {
                                if (j < i) continue;
                                if (j == i && !positive_shift(S0, S1, S2)) continue;
                            }
                            chunk.j.push_back(j);
                            chunk.shifts.push_back(S0);
                            chunk.shifts.push_back(S1);
                            chunk.shifts.push_back(S2);
                        }
                    }
                }
            }
            chunk.count[i - chunk.begin] = static_cast<int32_t>(chunk.j.size() - before);
        }
    });
    int64_t offset = 0;
    for (auto& chunk : result.chunks_) {
        chunk.offset = offset;
        offset += static_cast<int64_t>(chunk.j.size());
    }
    result.total_ = offset;
    return result;
}

void NeighborList::write(int64_t* i, int64_t* j, int64_t* shifts, int num_threads) const {
    write_offset(i, j, shifts, 0, num_threads);
}

void NeighborList::write_offset(int64_t* i, int64_t* j, int64_t* shifts, int64_t atom_offset, int num_threads) const {
    const int n_threads = detail::resolve_threads(num_threads, total_ / 64);
    parallel_chunks(static_cast<int>(chunks_.size()), n_threads, [&](int c) {
        const Chunk& chunk = chunks_[c];
        int64_t p = chunk.offset;
        for (int32_t a = chunk.begin; a < chunk.end; ++a) {
            const int32_t cnt = chunk.count[a - chunk.begin];
            for (int32_t q = 0; q < cnt; ++q) i[p + q] = a + atom_offset;
            p += cnt;
        }
        const size_t m = chunk.j.size();
        int64_t* jo = j + chunk.offset;
        int64_t* so = shifts + 3 * chunk.offset;
        for (size_t q = 0; q < m; ++q) jo[q] = chunk.j[q] + atom_offset;
        for (size_t q = 0; q < 3 * m; ++q) so[q] = chunk.shifts[q];
    });
}

std::vector<NeighborList> compute_neighbors_batch(const double* positions, const int64_t* ptr,
                                                  const std::vector<NeighborOptions>& options, int num_threads) {
    const int64_t n_structures = static_cast<int64_t>(options.size());
    std::vector<NeighborList> lists(n_structures);
    for (int64_t b = 0; b < n_structures; ++b) {
        if (ptr[b + 1] < ptr[b] || ptr[b] < 0) throw std::invalid_argument("ptr must be non-decreasing and start at >= 0");
        detail::check_cutoff(options[b].cutoff);
    }
    const int64_t total_atoms = n_structures ? ptr[n_structures] - ptr[0] : 0;
    const int n_threads = detail::resolve_threads(num_threads, total_atoms);
    // Errors inside worker threads are kept and rethrown on the calling thread.
    std::vector<std::string> errors(n_structures);
    parallel_chunks(static_cast<int>(n_structures), n_threads, [&](int b) {
        NeighborOptions o = options[b];
        o.num_threads = 1;
        try {
            lists[b] = compute_neighbors(positions + 3 * ptr[b], ptr[b + 1] - ptr[b], o);
        } catch (const std::exception& e) {
            errors[b] = e.what();
        }
    });
    for (int64_t b = 0; b < n_structures; ++b) {
        if (!errors[b].empty()) throw std::invalid_argument("structure " + std::to_string(b) + ": " + errors[b]);
    }
    return lists;
}

int64_t batch_size(const std::vector<NeighborList>& lists) {
    int64_t total = 0;
    for (const auto& l : lists) total += l.size();
    return total;
}

void write_batch(const std::vector<NeighborList>& lists, const int64_t* ptr, int64_t* i, int64_t* j,
                 int64_t* shifts, int num_threads) {
    std::vector<int64_t> offset(lists.size() + 1, 0);
    for (size_t b = 0; b < lists.size(); ++b) offset[b + 1] = offset[b] + lists[b].size();
    const int n_threads = detail::resolve_threads(num_threads, offset.back() / 64);
    parallel_chunks(static_cast<int>(lists.size()), n_threads, [&](int b) {
        const int64_t o = offset[b];
        lists[b].write_offset(i + o, j + o, shifts + 3 * o, ptr[b], 1);
    });
}

}  // namespace mlsim
