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
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

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

Grid make_grid(const Box& box, double cutoff, int64_t n_atoms, const double* smin, const double* smax,
               int subdivisions) {
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
        double nb = std::floor(length * subdivisions / rc);
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
        // Periodic cells thinner than the cutoff search several images of their bins.
        double reach = bin_length > 0.0 ? std::max(1.0, std::ceil(rc / bin_length)) : 1.0;
        // Capped before the int32 conversion: a huge cutoff must not overflow it.
        if (!box.periodic[k]) reach = std::min(reach, std::max(1.0, g.nbins[k] - 1.0));
        if (!(reach < 1e8)) {  // so many periodic images cannot fit in memory anyway
            throw NeighborListTooLarge("neighbor list too large: cutoff " + std::to_string(cutoff) +
                                       " spans more than 1e8 bins of the cell along a periodic direction");
        }
        g.reach[k] = static_cast<int32_t>(reach);
        g.inv_width[k] = extent[k] > 0.0 ? g.nbins[k] / extent[k] : 0.0;
    }
    return g;
}

// Bins of cutoff/2 test fewer far-away candidates than bins of cutoff, but visit 25 instead of 9
// runs of bins around each bin. Which wins depends on the atoms per bin (fcc Cu, 8,788 atoms: bins of
// cutoff are 4.4x faster at a 3 A cutoff and 1.4x at 5 A, bins of cutoff/2 are 1.3x faster at 6 A
// and 2x at 10 A). Cost model fitted to those timings: one run costs about 20 distance tests.
Grid choose_grid(const Box& box, double cutoff, int64_t n_atoms, const double* smin, const double* smax) {
    constexpr double kRunCost = 20.0;
    Grid best;
    double best_cost = std::numeric_limits<double>::infinity();
    for (int subdivisions : {1, 2}) {
        Grid g = make_grid(box, cutoff, n_atoms, smin, smax, subdivisions);
        double bins = 1.0, stencil = 1.0;
        for (int k = 0; k < 3; ++k) {
            bins *= g.nbins[k];
            stencil *= 2 * g.reach[k] + 1;
        }
        const double runs = static_cast<double>(2 * g.reach[0] + 1) * (2 * g.reach[1] + 1);
        const double cost = kRunCost * runs + static_cast<double>(n_atoms) / bins * stencil;
        if (cost < best_cost) {
            best_cost = cost;
            best = g;
        }
    }
    return best;
}

double estimate_pairs(const Box& box, double cutoff, int64_t n_atoms, const double* smin, const double* smax,
                      bool full) {
    // Neighbors per atom = density x sphere volume. Along a non-periodic direction the density uses
    // the atoms' extent, and a sphere wider than that extent only reaches the atoms that are there.
    const double n = static_cast<double>(n_atoms);
    const double det = std::fabs(dot(row(box.box, 0), cross(row(box.box, 1), row(box.box, 2))));
    if (!(det > 0.0) || !(n > 0.0)) return 0.0;
    // In logarithms: an absurd cutoff gives an infinite estimate (refused), never inf * 0 = NaN.
    double log_per_atom = std::log(n * 4.18879020478639 / det) + 3.0 * std::log(cutoff);
    for (int k = 0; k < 3; ++k) {
        if (box.periodic[k]) continue;
        const double extent = std::max(smax[k] - smin[k], 0.0);
        log_per_atom += extent * box.width[k] < 2.0 * cutoff ? std::log(box.width[k] / 2.0) - std::log(cutoff)
                                                             : -std::log(extent);
    }
    double per_atom = std::exp(log_per_atom);
    if (!box.periodic[0] && !box.periodic[1] && !box.periodic[2]) per_atom = std::min(per_atom, n);
    return n * per_atom * (full ? 1.0 : 0.5);
}

double pair_bytes(double pairs) {
    // 8 bytes per pair in the search buffers (grown by doubling: up to twice that), then 5 int64.
    return pairs * (2.0 * sizeof(NeighborList::Pair) + 5.0 * sizeof(int64_t));
}

namespace {
// One "Key:   123 kB" line of a /proc file, in bytes; -1 if absent.
double proc_kb(const char* file, const char* key) {
    std::ifstream in(file);
    std::string line;
    const size_t len = std::strlen(key);
    while (std::getline(in, line)) {
        if (line.compare(0, len, key) == 0) {
            std::istringstream fields(line.substr(len));
            double kb = -1.0;
            fields >> kb;
            return kb >= 0.0 ? kb * 1024.0 : -1.0;
        }
    }
    return -1.0;
}
}  // namespace

double available_memory_bytes() {
    // MemAvailable counts reclaimable page cache; sysconf's _SC_AVPHYS_PAGES (MemFree) does not and is
    // often a small fraction of what can be allocated, so it is only a fallback behind total memory.
    double avail = proc_kb("/proc/meminfo", "MemAvailable:");
    if (avail >= 0.0) {
        avail += std::max(0.0, proc_kb("/proc/meminfo", "SwapFree:"));
    } else {
        const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
        avail = pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
    }
    struct rlimit limit {};
    if (getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
        const double used = std::max(0.0, proc_kb("/proc/self/status", "VmSize:"));
        const double left = std::max(0.0, static_cast<double>(limit.rlim_cur) - used);
        avail = avail > 0.0 ? std::min(avail, left) : left;
    }
    return avail;
}

void check_fits(const Box& box, double cutoff, int64_t n_atoms, const double* smin, const double* smax, bool full) {
    // Reading /proc costs tens of microseconds: only lists estimated above 64 MB ask.
    constexpr double kAlwaysFits = 64.0 * (1 << 20);
    const double pairs = estimate_pairs(box, cutoff, n_atoms, smin, smax, full);
    const double bytes = pair_bytes(pairs);
    if (!(bytes > kAlwaysFits)) return;  // also lets a NaN estimate (impossible) through to the search
    const double avail = available_memory_bytes();
    if (avail <= 0.0 || bytes <= avail) return;  // unknown memory: try, a failure is still caught
    std::ostringstream msg;
    msg.precision(3);
    msg << "neighbor list too large: about ";
    if (std::isfinite(pairs)) {
        msg << pairs;
    } else {
        msg << "infinitely many";
    }
    msg << " pairs estimated for " << n_atoms << " atoms with cutoff " << cutoff << " (";
    if (std::isfinite(bytes)) {
        msg << bytes / 1e9 << " GB";
    } else {
        msg << "unbounded memory";
    }
    msg << "), more than the " << avail / 1e9 << " GB of memory available; use a smaller cutoff or fewer atoms";
    throw NeighborListTooLarge(msg.str());
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
// An exception in any thread (std::bad_alloc above all) stops the remaining chunks and is rethrown
// here after every thread has joined: escaping a std::thread it would call std::terminate, and
// leaving this function with joinable threads would too. The try/catch wraps each thread's whole
// loop, so the per-chunk work itself is unchanged.
template <class F>
void parallel_chunks(int n_chunks, int n_threads, F&& body) {
    if (n_threads <= 1 || n_chunks <= 1) {
        for (int c = 0; c < n_chunks; ++c) body(c);
        return;
    }
    std::atomic<int> next{0};
    std::mutex error_mutex;
    std::exception_ptr error;
    auto worker = [&]() noexcept {
        try {
            for (int c = next.fetch_add(1); c < n_chunks; c = next.fetch_add(1)) body(c);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!error) error = std::current_exception();
            next.store(n_chunks);  // the other threads stop at their next chunk
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(n_threads - 1);
    for (int t = 1; t < n_threads; ++t) {
        try {
            threads.emplace_back(worker);
        } catch (const std::system_error&) {
            break;  // no memory or thread limit for another thread: the started ones share the work
        }
    }
    worker();
    for (auto& t : threads) t.join();
    if (error) std::rethrow_exception(error);
}

// Rethrows the current exception, turning a plain std::bad_alloc into NeighborListTooLarge with the
// size of the list being built (for Python's MemoryError message); other exceptions pass unchanged.
[[noreturn]] void rethrow_with_size(int64_t n_atoms, double cutoff, double estimated, int64_t found) {
    try {
        throw;
    } catch (const NeighborListTooLarge&) {
        throw;
    } catch (const std::bad_alloc&) {
        std::ostringstream msg;
        msg.precision(3);
        msg << "neighbor list too large: out of memory building the list of " << n_atoms
            << " atoms with cutoff " << cutoff << ": about " << estimated << " pairs estimated ("
            << detail::pair_bytes(estimated) / 1e9 << " GB)";
        if (found > 0) msg << ", " << found << " pairs found before memory ran out";
        throw NeighborListTooLarge(msg.str());
    } catch (const std::length_error&) {
        throw NeighborListTooLarge("neighbor list too large: for " + std::to_string(n_atoms) +
                                   " atoms an array would exceed the largest possible allocation");
    }
}

}  // namespace

void release_pair_pool() noexcept;  // defined with the pool below

namespace {
// The search proper; `result` and `estimated` live in the caller so that a failure can report them.
void compute_neighbors_into(const double* positions, int64_t n_atoms, const NeighborOptions& options,
                            NeighborList& result, double& estimated) {
    detail::check_cutoff(options.cutoff);
    if (n_atoms < 0) throw std::invalid_argument("positions must have a non-negative number of atoms");
    if (n_atoms >= std::numeric_limits<int32_t>::max()) {
        throw std::invalid_argument("positions: more than 2^31 - 1 atoms are not supported");
    }
    const detail::Box box = detail::make_box(options);
    if (n_atoms == 0) return;
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
    // Refuse a list that cannot fit before the bins, stencil and pair buffers are allocated.
    estimated = detail::estimate_pairs(box, options.cutoff, n_atoms, smin, smax, options.full);
    detail::check_fits(box, options.cutoff, n_atoms, smin, smax, options.full);
    const detail::Grid grid = detail::choose_grid(box, options.cutoff, n_atoms, smin, smax);
    const int32_t nb0 = grid.nbins[0], nb1 = grid.nbins[1], nb2 = grid.nbins[2];
    const int64_t n_bins = static_cast<int64_t>(nb0) * nb1 * nb2;

    // 2. Counting sort by bin (stable: atoms of a bin stay in input order), positions as SoA.
    std::vector<int32_t> atom_bin(n);
    std::vector<int64_t> start(n_bins + 1, 0);
    for (int32_t a = 0; a < n; ++a) {
        int32_t b[3];
        for (int k = 0; k < 3; ++k) b[k] = bin_of(frac[3 * a + k], grid.origin[k], grid.inv_width[k], grid.nbins[k]);
        atom_bin[a] = (b[0] * nb1 + b[1]) * nb2 + b[2];
        start[atom_bin[a] + 1]++;
    }
    for (int64_t b = 0; b < n_bins; ++b) start[b + 1] += start[b];
    std::vector<double> xs(n), ys(n), zs(n);
    std::vector<int32_t> sorted_idx(n);
    {
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        for (int32_t a = 0; a < n; ++a) {
            int64_t p = fill[atom_bin[a]]++;
            sorted_idx[p] = a;
            xs[p] = wrapped[3 * a];
            ys[p] = wrapped[3 * a + 1];
            zs[p] = wrapped[3 * a + 2];
        }
    }

    // 3. Per-direction stencil: for bin b and offset o, the neighbor bin and its periodic image.
    struct Step {
        int32_t bin;    // < 0: outside a non-periodic direction
        int32_t image;
    };
    std::array<std::vector<Step>, 3> steps;  // steps[k][b * (2 reach + 1) + o]
    std::array<int32_t, 3> image_min{}, image_count{};
    for (int k = 0; k < 3; ++k) {
        const int32_t nbk = grid.nbins[k], r = grid.reach[k], width = 2 * r + 1;
        steps[k].resize(static_cast<size_t>(nbk) * width);
        int32_t lo = 0, hi = 0;
        for (int32_t b = 0; b < nbk; ++b) {
            for (int32_t o = -r; o <= r; ++o) {
                int32_t t = b + o;
                Step st{-1, 0};
                if (box.periodic[k]) {
                    int32_t img = (t >= 0) ? t / nbk : -((-t + nbk - 1) / nbk);
                    st = {t - img * nbk, img};
                    lo = std::min(lo, img);
                    hi = std::max(hi, img);
                } else if (t >= 0 && t < nbk) {
                    st = {t, 0};
                }
                steps[k][static_cast<size_t>(b) * width + (o + r)] = st;
            }
        }
        image_min[k] = lo;
        image_count[k] = hi - lo + 1;
    }
    // Image ids are int32: a cutoff that spans billions of periodic images cannot be listed anyway.
    const double n_images = static_cast<double>(image_count[0]) * image_count[1] * image_count[2];
    if (n_images > std::numeric_limits<int32_t>::max()) {
        throw NeighborListTooLarge("neighbor list too large: cutoff " + std::to_string(options.cutoff) +
                                   " spans more than 2^31 periodic images of the cell");
    }
    result.images_.resize(3 * static_cast<size_t>(image_count[0]) * image_count[1] * image_count[2]);
    for (int32_t a = 0; a < image_count[0]; ++a) {
        for (int32_t b = 0; b < image_count[1]; ++b) {
            for (int32_t c = 0; c < image_count[2]; ++c) {
                size_t id = (static_cast<size_t>(a) * image_count[1] + b) * image_count[2] + c;
                result.images_[3 * id] = a + image_min[0];
                result.images_[3 * id + 1] = b + image_min[1];
                result.images_[3 * id + 2] = c + image_min[2];
            }
        }
    }
    const int32_t zero_image = ((-image_min[0]) * image_count[1] - image_min[1]) * image_count[2] - image_min[2];

    // 4. Pair search bin by bin. For each bin the stencil becomes a list of runs: ranges of sorted
    // atoms (consecutive bins along the last direction are contiguous) sharing one image.
    const double rc2 = options.cutoff * options.cutoff;
    const bool full = options.full;
    const int n_threads = detail::resolve_threads(options.num_threads, n_atoms);
    const int n_chunks = n_threads == 1 ? 1 : static_cast<int>(std::min<int64_t>(n_bins, 16 * n_threads));
    double volume = 1.0;
    for (int k = 0; k < 3; ++k) volume *= (box.periodic[k] ? 1.0 : (smax[k] - smin[k])) * box.width[k];
    const double density = (std::isfinite(volume) && volume > 0) ? n / volume : 0.0;
    const double expected = std::min(density * 4.18879 * rc2 * options.cutoff * (full ? 1.0 : 0.5), 256.0);

    result.buffers_.resize(n_chunks);
    result.buffer_of_.resize(n);
    result.start_in_.resize(n);
    std::vector<int32_t> counts(n);
    const auto& images = result.images_;
    const int32_t w0 = 2 * grid.reach[0] + 1, w1 = 2 * grid.reach[1] + 1, w2 = 2 * grid.reach[2] + 1;
    const int32_t ic1 = image_count[1], ic2 = image_count[2];
    parallel_chunks(n_chunks, n_threads, [&](int c) {
        const int64_t bin_begin = n_bins * c / n_chunks, bin_end = n_bins * (c + 1) / n_chunks;
        auto& buffer = result.buffers_[c];
        buffer.reserve(static_cast<size_t>(expected * 1.2 * (start[bin_end] - start[bin_begin])) + 16);
        // Raw local pointers: the compiler cannot prove the buffer writes leave these alone.
        const double* __restrict X = xs.data();
        const double* __restrict Y = ys.data();
        const double* __restrict Z = zs.data();
        const int32_t* __restrict idx = sorted_idx.data();
        constexpr int64_t kBlock = 64;
        alignas(64) double d2[kBlock];
        struct Run {
            int64_t begin, end;
            double sx, sy, sz;  // Cartesian image vector
            int32_t image;
        };
        std::vector<Run> runs;
        runs.reserve(static_cast<size_t>(w0) * w1 * w2);
        for (int64_t bin = bin_begin; bin < bin_end; ++bin) {
            if (start[bin] == start[bin + 1]) continue;
            const int32_t b0 = static_cast<int32_t>(bin / (static_cast<int64_t>(nb1) * nb2));
            const int32_t b1 = static_cast<int32_t>((bin / nb2) % nb1);
            const int32_t b2 = static_cast<int32_t>(bin % nb2);
            runs.clear();
            const Step* s0 = &steps[0][static_cast<size_t>(b0) * w0];
            const Step* s1 = &steps[1][static_cast<size_t>(b1) * w1];
            const Step* s2 = &steps[2][static_cast<size_t>(b2) * w2];
            for (int32_t o0 = 0; o0 < w0; ++o0) {
                if (s0[o0].bin < 0) continue;
                for (int32_t o1 = 0; o1 < w1; ++o1) {
                    if (s1[o1].bin < 0) continue;
                    const int64_t base = (static_cast<int64_t>(s0[o0].bin) * nb1 + s1[o1].bin) * nb2;
                    const int32_t t0 = s0[o0].image, t1 = s1[o1].image;
                    for (int32_t o2 = 0; o2 < w2; ++o2) {
                        if (s2[o2].bin < 0) continue;
                        const int32_t t2 = s2[o2].image;
                        const int64_t nbin = base + s2[o2].bin;
                        const int32_t id = ((t0 - image_min[0]) * ic1 + (t1 - image_min[1])) * ic2 + (t2 - image_min[2]);
                        if (!runs.empty() && runs.back().image == id && runs.back().end == start[nbin]) {
                            runs.back().end = start[nbin + 1];  // extend: next bin along the last direction
                            continue;
                        }
                        if (start[nbin] == start[nbin + 1]) continue;
                        runs.push_back({start[nbin], start[nbin + 1],
                                        t0 * cell[0] + t1 * cell[3] + t2 * cell[6],
                                        t0 * cell[1] + t1 * cell[4] + t2 * cell[7],
                                        t0 * cell[2] + t1 * cell[5] + t2 * cell[8], id});
                    }
                }
            }
            int64_t candidates = 0;
            for (const Run& run : runs) candidates += run.end - run.begin;
            for (int64_t q = start[bin]; q < start[bin + 1]; ++q) {
                const int32_t i = sorted_idx[q];
                const double xi = X[q], yi = Y[q], zi = Z[q];
                const size_t before = buffer.size();
                NeighborList::Pair* out = buffer.grow(static_cast<size_t>(candidates));
                size_t m = 0;
                for (const Run& run : runs) {
                    const double ox = run.sx - xi, oy = run.sy - yi, oz = run.sz - zi;
                    // Squared distances of a block first (vectorizable), then the sparse selection.
                    for (int64_t p0 = run.begin; p0 < run.end; p0 += kBlock) {
                        const int64_t len = std::min<int64_t>(kBlock, run.end - p0);
                        for (int64_t k = 0; k < len; ++k) {
                            const double dx = X[p0 + k] + ox, dy = Y[p0 + k] + oy, dz = Z[p0 + k] + oz;
                            d2[k] = dx * dx + dy * dy + dz * dz;
                        }
                        if (full) {
                            // Branch-free selection: ~1 in 4 candidates is a pair, so a branch
                            // would mispredict often. Every candidate is written, kept ones advance.
                            const bool self_image = run.image == zero_image;
                            for (int64_t k = 0; k < len; ++k) {
                                const int32_t j = idx[p0 + k];
                                out[m] = {j, run.image};
                                m += static_cast<size_t>((d2[k] < rc2) & !(self_image & (j == i)));
                            }
                            continue;
                        }
                        for (int64_t k = 0; k < len; ++k) {
                            if (d2[k] >= rc2) continue;
                            const int32_t j = idx[p0 + k];
                            if (j == i && run.image == zero_image) continue;
                            if (!full && j <= i) {
                                if (j < i) continue;
                                const int32_t* t = &images[3 * static_cast<size_t>(run.image)];
                                if (!positive_shift(t[0], t[1], t[2])) continue;  // j == i: S = T
                            }
                            out[m++] = {j, run.image};
                        }
                    }
                }
                buffer.commit(m);
                result.buffer_of_[i] = c;
                result.start_in_[i] = static_cast<int64_t>(before);
                counts[i] = static_cast<int32_t>(m);
            }
        }
    });
    result.offset_.resize(static_cast<size_t>(n) + 1);
    result.offset_[0] = 0;
    for (int32_t a = 0; a < n; ++a) result.offset_[a + 1] = result.offset_[a] + counts[a];
    result.total_ = result.offset_[n];
    result.wrap_ = std::move(wrap);
}
}  // namespace

NeighborList compute_neighbors(const double* positions, int64_t n_atoms, const NeighborOptions& options) {
    NeighborList result;
    double estimated = 0.0;
    try {
        compute_neighbors_into(positions, n_atoms, options, result, estimated);
    } catch (const std::bad_alloc&) {
        int64_t found = 0;
        for (const auto& buffer : result.buffers_) found += static_cast<int64_t>(buffer.size());
        result = NeighborList();  // its buffers go to the pool, which is then emptied
        release_pair_pool();
        rethrow_with_size(n_atoms, options.cutoff, estimated, found);
    } catch (const std::length_error&) {
        rethrow_with_size(n_atoms, options.cutoff, estimated, 0);
    }
    return result;
}

namespace {
// Large pair buffers are kept for the next call instead of being freed: an MD loop asks for the same
// sizes every step, and fresh memory costs a page fault plus zeroing per page (as much time as the
// search itself). Bounded, so a one-off huge list does not pin memory forever.
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kPoolMaxBlocks = 16;
constexpr size_t kPoolMaxBytes = size_t(512) << 20;
std::mutex pool_mutex;
std::vector<std::pair<void*, size_t>> pool;  // (block, bytes)

void* take_from_pool(size_t bytes, size_t* got) {
    std::lock_guard<std::mutex> lock(pool_mutex);
    size_t best = pool.size();
    for (size_t k = 0; k < pool.size(); ++k) {
        if (pool[k].second >= bytes && (best == pool.size() || pool[k].second < pool[best].second)) best = k;
    }
    if (best == pool.size()) return nullptr;
    void* p = pool[best].first;
    *got = pool[best].second;
    pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(best));
    return p;
}

}  // namespace

// Frees every pooled block: after an allocation failed, memory kept for reuse is better given back.
void release_pair_pool() noexcept {
    std::lock_guard<std::mutex> lock(pool_mutex);
    for (const auto& block : pool) std::free(block.first);
    pool.clear();
}

namespace {
void give_to_pool(void* p, size_t bytes) noexcept {
    if (p == nullptr) return;
    if (bytes >= 2 * kHugePage) {
        std::lock_guard<std::mutex> lock(pool_mutex);
        size_t total = bytes;
        for (const auto& b : pool) total += b.second;
        if (pool.size() < kPoolMaxBlocks && total <= kPoolMaxBytes) {
            try {
                pool.emplace_back(p, bytes);
                return;
            } catch (...) {  // called from destructors: free instead of throwing
            }
        }
    }
    std::free(p);
}
}  // namespace

NeighborList::PairBuffer& NeighborList::PairBuffer::operator=(PairBuffer&& o) noexcept {
    if (this != &o) {
        give_to_pool(data_, cap_ * sizeof(Pair));
        data_ = o.data_;
        size_ = o.size_;
        cap_ = o.cap_;
        o.data_ = nullptr;
        o.size_ = o.cap_ = 0;
    }
    return *this;
}

NeighborList::PairBuffer::~PairBuffer() { give_to_pool(data_, cap_ * sizeof(Pair)); }

void NeighborList::PairBuffer::reserve(size_t n) {
    if (n <= cap_) return;
    size_t bytes = n * sizeof(Pair);
    void* p = nullptr;
    if (bytes >= 2 * kHugePage) {
        size_t got = 0;
        p = take_from_pool(bytes, &got);
        if (p != nullptr) {
            bytes = got;
        } else {
            // 2 MB aligned and advised as huge pages: one page fault per 2 MB instead of per 4 kB.
            bytes = (bytes + kHugePage - 1) / kHugePage * kHugePage;
            p = std::aligned_alloc(kHugePage, bytes);
#ifdef MADV_HUGEPAGE
            if (p != nullptr) madvise(p, bytes, MADV_HUGEPAGE);
#endif
        }
    } else {
        p = std::malloc(bytes);
    }
    if (p == nullptr && bytes >= 2 * kHugePage) {
        release_pair_pool();  // blocks kept for reuse may be what is missing: free them, try once more
        p = std::aligned_alloc(kHugePage, bytes);
#ifdef MADV_HUGEPAGE
        if (p != nullptr) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    }
    if (p == nullptr) throw std::bad_alloc();
    if (size_ > 0) std::memcpy(p, data_, size_ * sizeof(Pair));
    give_to_pool(data_, cap_ * sizeof(Pair));
    data_ = static_cast<Pair*>(p);
    cap_ = bytes / sizeof(Pair);
}

void NeighborList::write(int64_t* i, int64_t* j, int64_t* shifts, int num_threads) const {
    write_offset(i, j, shifts, 0, num_threads);
}

void NeighborList::write_offset(int64_t* i, int64_t* j, int64_t* shifts, int64_t atom_offset, int num_threads) const {
    if (total_ == 0) return;
    const int32_t n = static_cast<int32_t>(offset_.size() - 1);
    const int n_threads = detail::resolve_threads(num_threads, total_ / 64);
    const int n_chunks = n_threads == 1 ? 1 : std::min<int>(n, 16 * n_threads);
    const int32_t* wrap = wrap_.data();
    const int32_t* images = images_.data();
    parallel_chunks(n_chunks, n_threads, [&](int c) {
        const int32_t a_begin = static_cast<int32_t>(static_cast<int64_t>(n) * c / n_chunks);
        const int32_t a_end = static_cast<int32_t>(static_cast<int64_t>(n) * (c + 1) / n_chunks);
        for (int32_t a = a_begin; a < a_end; ++a) {
            const int64_t out = offset_[a], count = offset_[a + 1] - out;
            if (count == 0) continue;
            const Pair* src = buffers_[buffer_of_[a]].data() + start_in_[a];
            const int32_t wa0 = wrap[3 * a], wa1 = wrap[3 * a + 1], wa2 = wrap[3 * a + 2];
            const int64_t ia = a + atom_offset;
            for (int64_t q = 0; q < count; ++q) {
                const int32_t jj = src[q].j;
                const int32_t* t = images + 3 * static_cast<size_t>(src[q].image);
                i[out + q] = ia;
                j[out + q] = jj + atom_offset;
                // Shift relative to the unwrapped positions: S = T + wrap_i - wrap_j.
                int64_t* s = shifts + 3 * (out + q);
                s[0] = t[0] + wa0 - wrap[3 * jj];
                s[1] = t[1] + wa1 - wrap[3 * jj + 1];
                s[2] = t[2] + wa2 - wrap[3 * jj + 2];
            }
        }
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
    // Errors inside worker threads are kept and rethrown on the calling thread, the first structure's
    // first; a lack of memory stays a NeighborListTooLarge (MemoryError), not a bad-input error.
    std::vector<std::exception_ptr> errors(n_structures);
    parallel_chunks(static_cast<int>(n_structures), n_threads, [&](int b) {
        NeighborOptions o = options[b];
        o.num_threads = 1;
        try {
            lists[b] = compute_neighbors(positions + 3 * ptr[b], ptr[b + 1] - ptr[b], o);
        } catch (...) {
            errors[b] = std::current_exception();
        }
    });
    for (int64_t b = 0; b < n_structures; ++b) {
        if (!errors[b]) continue;
        const std::string where = "structure " + std::to_string(b) + ": ";
        try {
            std::rethrow_exception(errors[b]);
        } catch (const std::bad_alloc& e) {
            throw NeighborListTooLarge(where + e.what());
        } catch (const std::exception& e) {
            throw std::invalid_argument(where + e.what());
        }
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
