// Public C++ entry point of the neighbor list: one function, a plain options struct, a result.
// Pair convention (same as ASE's 'ijS'): vector = positions[j] - positions[i] + shifts @ cell,
// with |vector| < cutoff; cell rows are the lattice vectors.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <new>
#include <string>
#include <utility>
#include <vector>

namespace mlsim {

struct NeighborOptions {
    double cutoff = 0.0;
    // Lattice vectors as rows (row-major 3x3); ignored along directions without pbc.
    std::array<double, 9> cell{};
    bool has_cell = false;
    std::array<bool, 3> pbc{false, false, false};
    // true: both (i, j) and (j, i); false: each pair once (i < j, or i == j with positive shift).
    bool full = true;
    // 0 = use all hardware threads.
    int num_threads = 0;
};

// Thrown when the list cannot fit in memory: refused up front from the estimated pair count, or
// an allocation failed while searching (in any thread). A std::bad_alloc, so pybind11 raises it as
// MemoryError and callers that only know the standard type still catch it; what() says how many
// pairs were estimated and how much memory that needs.
class NeighborListTooLarge : public std::bad_alloc {
public:
    explicit NeighborListTooLarge(std::string message) : message_(std::move(message)) {}
    const char* what() const noexcept override { return message_.c_str(); }

private:
    std::string message_;
};

// Pairs grouped by i in increasing order; the order inside one i is fixed by the algorithm, so the
// output is identical for identical input whatever the number of threads.
class NeighborList {
public:
    int64_t size() const { return total_; }
    // Writes size() entries to i and j and 3 * size() to shifts (row-major).
    void write(int64_t* i, int64_t* j, int64_t* shifts, int num_threads = 0) const;
    // Same, but adds `offset` to the atom indices (batched structures).
    void write_offset(int64_t* i, int64_t* j, int64_t* shifts, int64_t offset, int num_threads) const;

    // Filled by the kernel. Pairs are found bin by bin into per-chunk buffers holding the neighbor
    // and an image id; write() gathers them per atom i in input order and expands the shifts.
    struct Pair {
        int32_t j;
        int32_t image;  // index into images_ (3 ints: the image of the wrapped positions)
    };
    // Append-only buffer of trivially copyable pairs (no zero-filling when growing, unlike vector).
    class PairBuffer {
    public:
        PairBuffer() = default;
        PairBuffer(const PairBuffer&) = delete;
        PairBuffer& operator=(const PairBuffer&) = delete;
        PairBuffer(PairBuffer&& o) noexcept : data_(o.data_), size_(o.size_), cap_(o.cap_) { o.data_ = nullptr; o.size_ = o.cap_ = 0; }
        PairBuffer& operator=(PairBuffer&& o) noexcept;
        ~PairBuffer();
        void reserve(size_t n);
        // Room for `extra` more pairs; returns where the next pair goes. commit(m) keeps m of them.
        Pair* grow(size_t extra) {
            if (size_ + extra > cap_) reserve(std::max(2 * cap_, size_ + extra));
            return data_ + size_;
        }
        void commit(size_t m) { size_ += m; }
        size_t size() const { return size_; }
        const Pair* data() const { return data_; }

    private:
        Pair* data_ = nullptr;
        size_t size_ = 0, cap_ = 0;
    };
    std::vector<PairBuffer> buffers_;
    std::vector<int32_t> buffer_of_;   // per atom i: which buffer holds its pairs
    std::vector<int64_t> start_in_;    // per atom i: first pair in that buffer
    std::vector<int64_t> offset_;      // per atom i: first pair in the output (size n + 1)
    std::vector<int32_t> wrap_;        // per atom: integer cell translation removed by wrapping
    std::vector<int32_t> images_;      // 3 per image id
    int64_t total_ = 0;
};

// Throws std::invalid_argument (naming the argument) on bad input: non-finite positions,
// cutoff <= 0 or not finite, pbc without a cell, a cell singular along its periodic directions;
// NeighborListTooLarge when the estimated list exceeds the memory available, or memory runs out.
NeighborList compute_neighbors(const double* positions, int64_t n_atoms, const NeighborOptions& options);

// Many independent structures: atoms ptr[b] .. ptr[b+1] of positions with options[b]; the
// structures are spread over the threads (each one searched single-threaded).
std::vector<NeighborList> compute_neighbors_batch(const double* positions, const int64_t* ptr,
                                                  const std::vector<NeighborOptions>& options, int num_threads);
// Concatenates batch results; atom indices become global (offset by ptr[b]).
int64_t batch_size(const std::vector<NeighborList>& lists);
void write_batch(const std::vector<NeighborList>& lists, const int64_t* ptr, int64_t* i, int64_t* j,
                 int64_t* shifts, int num_threads);

// Validated geometry shared by the CPU and CUDA kernels (host code only).
namespace detail {
struct Box {
    std::array<double, 9> box{};  // rows: cell rows where periodic, orthonormal complement elsewhere
    std::array<double, 9> inv{};  // inverse of box: fractional s = r @ inv
    std::array<double, 9> cell{};  // the user cell, zero rows where not periodic
    std::array<double, 3> width{};  // perpendicular widths of box
    std::array<bool, 3> periodic{};
};
struct Grid {
    std::array<int32_t, 3> nbins{1, 1, 1};
    std::array<int32_t, 3> reach{1, 1, 1};   // bins searched on each side
    std::array<double, 3> origin{};          // fractional origin of bin 0
    std::array<double, 3> inv_width{};       // bins per unit fractional coordinate
};
// Bins are at least cutoff / subdivisions wide; the search reaches ceil(subdivisions) bins around.
Box make_box(const NeighborOptions& options);
// smin/smax: fractional extent of the atoms along non-periodic directions.
Grid make_grid(const Box& box, double cutoff, int64_t n_atoms, const double* smin, const double* smax,
               int subdivisions = 2);
// make_grid with the subdivision (1 or 2) that a cost model says searches fastest on the CPU.
Grid choose_grid(const Box& box, double cutoff, int64_t n_atoms, const double* smin, const double* smax);
void check_cutoff(double cutoff);
int resolve_threads(int requested, int64_t work);
// Expected number of pairs for n_atoms uniformly spread over the box (periodic directions) and over
// the atoms' extent smin..smax (fractional, non-periodic directions); an estimate, not a bound.
double estimate_pairs(const Box& box, double cutoff, int64_t n_atoms, const double* smin, const double* smax,
                      bool full);
// Bytes a list of `pairs` pairs needs at its peak: the search buffers plus the int64 i, j, shifts.
double pair_bytes(double pairs);
// Memory this process can still obtain: MemAvailable + SwapFree (Linux), else physical memory from
// sysconf, lowered to RLIMIT_AS when that is set. 0 when unknown.
double available_memory_bytes();
// Throws NeighborListTooLarge (before anything large is allocated) when the estimated list of
// n_atoms atoms cannot fit in available_memory_bytes().
void check_fits(const Box& box, double cutoff, int64_t n_atoms, const double* smin, const double* smax, bool full);
}  // namespace detail

}  // namespace mlsim
