// Fused CPU kernel of mlsim's inference PaiNN (mlsim/models/_fast.py): energy and its exact
// gradient with respect to positions and cell, in one call, with a hand-written reverse pass.
//
// The math is FastPaiNN._evaluate_torch line by line (that TorchScript version is the reference
// the tests compare against to 1e-12 in float64); what differs is the execution: one loop over the
// half pair list per layer and direction (forward, then reverse) with every per-pair quantity in
// registers or a feature-length scratch row, instead of (pairs, 3, features) tensors. Memory is
// O(atoms * features + pairs), time is one pass over the pairs per layer and direction.
//
// Registers torch.ops.mlsim_fast.painn_energy (the energy, whose autograd node gives forces and
// stress) and painn_energy_grad (energy, gradients and shortest pair distance as plain tensors).
// Built into libmlsim_torch.so by CMake (no Python symbols: C++ hosts such as OpenMM load it);
// mlsim/models/_fast.py compiles this file on first use only where that library lacks the ops
// (an op library built before the kernel moved here). Single-threaded: the callers (MD engines,
// ASE) run one evaluation per step.

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

namespace {

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// y (n x fout) = x (n x fin) @ wt (fin x fout) + b (b may be null). With the sizes known at
// compile time (FIN, FOUT > 0) each output row is accumulated in registers; otherwise the loop
// order keeps the inner loop contiguous so it still vectorises without reassociating sums.
template <typename T, int FIN, int FOUT>
void linear(const T* __restrict x, int64_t n, int64_t fin, const T* __restrict wt,
            const T* __restrict b, int64_t fout, T* __restrict y) {
  if constexpr (FIN > 0 && FOUT > 0) {
    for (int64_t r = 0; r < n; ++r) {
      T acc[FOUT];
      for (int o = 0; o < FOUT; ++o) acc[o] = b ? b[o] : T(0);
      const T* xr = x + r * FIN;
      for (int k = 0; k < FIN; ++k) {
        const T xk = xr[k];
        const T* w = wt + k * FOUT;
        for (int o = 0; o < FOUT; ++o) acc[o] += xk * w[o];
      }
      std::copy(acc, acc + FOUT, y + r * FOUT);
    }
    return;
  }
  for (int64_t r = 0; r < n; ++r) {
    T* yr = y + r * fout;
    const T* xr = x + r * fin;
    for (int64_t o = 0; o < fout; ++o) yr[o] = b ? b[o] : T(0);
    for (int64_t k = 0; k < fin; ++k) {
      const T xk = xr[k];
      const T* w = wt + k * fout;
      for (int64_t o = 0; o < fout; ++o) yr[o] += xk * w[o];
    }
  }
}

// gx (n x fin) += gy (n x fout) @ w (fout x fin): the input gradient of `linear`.
template <typename T, int FIN, int FOUT>
void linear_back(const T* __restrict gy, int64_t n, int64_t fout, const T* __restrict w,
                 int64_t fin, T* __restrict gx) {
  if constexpr (FIN > 0 && FOUT > 0) {
    for (int64_t r = 0; r < n; ++r) {
      T acc[FIN];
      T* gxr = gx + r * FIN;
      std::copy(gxr, gxr + FIN, acc);
      const T* gyr = gy + r * FOUT;
      for (int o = 0; o < FOUT; ++o) {
        const T go = gyr[o];
        const T* wr = w + o * FIN;
        for (int k = 0; k < FIN; ++k) acc[k] += go * wr[k];
      }
      std::copy(acc, acc + FIN, gxr);
    }
    return;
  }
  for (int64_t r = 0; r < n; ++r) {
    T* gxr = gx + r * fin;
    const T* gyr = gy + r * fout;
    for (int64_t o = 0; o < fout; ++o) {
      const T go = gyr[o];
      const T* wr = w + o * fin;
      for (int64_t k = 0; k < fin; ++k) gxr[k] += go * wr[k];
    }
  }
}

template <typename T>
const T* ptr(const std::vector<at::Tensor>& w, size_t k) {
  return w[k].data_ptr<T>();
}

// Indices of the weight list (order fixed by FastPaiNN.kernel_weights).
enum W : size_t {
  EMBEDDING,
  PHI0,
  SPLINE,
  PHI_W1,
  PHI_W1T,
  PHI_B1,
  PHI_W2,
  PHI_W2T,
  PHI_B2,
  UPD_UV,
  UPD_UVT,
  UPD_W1,
  UPD_W1T,
  UPD_B1,
  UPD_W2,
  UPD_W2T,
  UPD_B2,
  RO_W1,
  RO_W1T,
  RO_B1,
  RO_W2,
  RO_B2,
  SCALE,
  SELF_ENERGY,
  NUM_WEIGHTS
};

// Per-pair work for one direction of a half pair: receiver r gets the message of sender s along
// su = +-u. Separate functions with __restrict pointers (reads and writes are different buffers)
// so the feature loops vectorise; FC > 0 fixes the feature count at compile time.
template <typename T, int FC>
inline void message_into(int64_t f, T* __restrict sr, T* __restrict vr, const T* __restrict phis,
                         const T* __restrict vs, const T* __restrict w, const T su[3], bool with_v) {
  if (FC > 0) f = FC;
  for (int64_t q = 0; q < f; ++q) sr[q] += phis[q] * w[q];
  for (int c = 0; c < 3; ++c) {
    const T uc = su[c];
    T* __restrict vrc = vr + c * f;
    for (int64_t q = 0; q < f; ++q) vrc[q] += uc * (phis[2 * f + q] * w[2 * f + q]);
    if (with_v) {
      const T* __restrict vsc = vs + c * f;
      for (int64_t q = 0; q < f; ++q) vrc[q] += vsc[q] * (phis[f + q] * w[f + q]);
    }
  }
}

// Reverse of message_into: given dE/ds_r (gsr) and dE/dv_r (gvr), accumulate dE/dphi_s (gphis),
// dE/dv_s (gvs) when the layer has them, and per-feature lanes of dE/dd (gd) and dE/du (gu)
// (summed over features by the caller; lanes keep the loops free of reductions).
template <typename T, int FC, bool WITH_V>
inline void message_back(int64_t f, const T* __restrict gsr, const T* __restrict gvr,
                         const T* __restrict phis, const T* __restrict vs, const T* __restrict w,
                         const T* __restrict dw, const T* __restrict su, T sign,
                         T* __restrict gphis, T* __restrict gvs, T* __restrict gd,
                         T* __restrict gu) {
  if (FC > 0) f = FC;
  const T su0 = su[0], su1 = su[1], su2 = su[2];
  // WITH_V is a template argument: a branch inside the loop would stop it vectorising.
  for (int64_t q = 0; q < f; ++q) {
    const T gxs = gsr[q];
    const T gxvs = gvr[q] * su0 + gvr[f + q] * su1 + gvr[2 * f + q] * su2;
    T gdq = gxs * phis[q] * dw[q] + gxvs * phis[2 * f + q] * dw[2 * f + q];
    const T xvs = sign * (phis[2 * f + q] * w[2 * f + q]);
    gu[q] += gvr[q] * xvs;
    gu[f + q] += gvr[f + q] * xvs;
    gu[2 * f + q] += gvr[2 * f + q] * xvs;
    if (WITH_V) {
      gphis[q] += gxs * w[q];
      gphis[2 * f + q] += gxvs * w[2 * f + q];
      const T gxvv = gvr[q] * vs[q] + gvr[f + q] * vs[f + q] + gvr[2 * f + q] * vs[2 * f + q];
      gdq += gxvv * phis[f + q] * dw[f + q];
      gphis[f + q] += gxvv * w[f + q];
      const T xvv = phis[f + q] * w[f + q];
      gvs[q] += gvr[q] * xvv;
      gvs[f + q] += gvr[f + q] * xvv;
      gvs[2 * f + q] += gvr[2 * f + q] * xvv;
    }
    gd[q] += gdq;
  }
}

template <typename T, int FC>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run(
    const at::Tensor& species_t,
    const at::Tensor& pos_t,
    const at::Tensor& cell_t,
    const at::Tensor& batch_t,
    const at::Tensor& i_t,
    const at::Tensor& j_t,
    const at::Tensor& shifts_t,
    bool periodic,
    bool need_grad,
    bool need_cell_grad,
    int64_t num_structures,
    const std::vector<at::Tensor>& w,
    double cutoff_d,
    double* min_d2_out) {
  const int64_t n = pos_t.size(0);
  const int64_t f = FC > 0 ? FC : w[EMBEDDING].size(1);
  const int64_t f2 = w[RO_W1].size(0);
  TORCH_CHECK(FC == 0 || f2 == FC / 2, "painn_energy: readout width must be features / 2");
  const int64_t f3 = 3 * f;
  const int64_t layers = w[PHI_W1].size(0);
  // spline: (layers, knots, 6, 3F) quintic coefficients per interval of width cutoff / knots
  const int64_t knots = w[SPLINE].size(1);
  const T cutoff = T(cutoff_d);
  const T inv_h = T(double(knots) / cutoff_d);

  const int64_t* species = species_t.data_ptr<int64_t>();
  const int64_t num_species = w[EMBEDDING].size(0);
  for (int64_t a = 0; a < n; ++a) {
    TORCH_CHECK_INDEX(species[a] >= 0 && species[a] < num_species,
                      "painn_energy: element index out of range for atom ", a);
    TORCH_CHECK_INDEX(batch_t.data_ptr<int64_t>()[a] >= 0 &&
                          batch_t.data_ptr<int64_t>()[a] < num_structures,
                      "painn_energy: structure index out of range for atom ", a);
  }
  const T* pos = pos_t.data_ptr<T>();
  const T* cell = cell_t.data_ptr<T>();
  const int64_t* batch = batch_t.data_ptr<int64_t>();
  const int64_t* pi = i_t.data_ptr<int64_t>();
  const int64_t* pj = j_t.data_ptr<int64_t>();
  const T* shifts = shifts_t.data_ptr<T>();
  const int64_t npairs = i_t.size(0);

  // ---- geometry of the half list; pairs at or beyond the cutoff are dropped ----
  std::vector<int64_t> pa, pb, porig;
  std::vector<T> pu, pd, px;
  std::vector<int64_t> pk;
  pa.reserve(npairs);
  pb.reserve(npairs);
  porig.reserve(npairs);
  pu.reserve(3 * npairs);
  pd.reserve(npairs);
  pk.reserve(npairs);
  px.reserve(npairs);
  // Shortest pair of the whole list (the callers' overlapping-atoms check), before the cutoff.
  T min_d2 = std::numeric_limits<T>::infinity();
  for (int64_t p = 0; p < npairs; ++p) {
    const int64_t a = pi[p], b = pj[p];
    // A caller's own pair list (energy_from_pairs) must not index outside the atoms.
    TORCH_CHECK_INDEX(a >= 0 && a < n && b >= 0 && b < n, "painn_energy: pair ", p, " (", a,
                      ", ", b, ") indexes outside the ", n, " atoms");
    T vec[3];
    for (int c = 0; c < 3; ++c) vec[c] = pos[3 * b + c] - pos[3 * a + c];
    if (periodic) {
      const T* s = shifts + 3 * p;
      const T* cl = cell + 9 * batch[a];
      for (int c = 0; c < 3; ++c) vec[c] += s[0] * cl[c] + s[1] * cl[3 + c] + s[2] * cl[6 + c];
    }
    const T d2 = vec[0] * vec[0] + vec[1] * vec[1] + vec[2] * vec[2];
    // A NaN distance stays the answer (NaN compares false), not hidden behind a later one.
    if (d2 < min_d2 || d2 != d2) min_d2 = d2;
    if (!(d2 < cutoff * cutoff)) continue;
    const T d = std::sqrt(d2);
    pa.push_back(a);
    pb.push_back(b);
    porig.push_back(p);
    for (int c = 0; c < 3; ++c) pu.push_back(vec[c] / d);
    pd.push_back(d);
    const T t = d * inv_h;
    const int64_t k = std::min<int64_t>(static_cast<int64_t>(t), knots - 1);
    pk.push_back(k);
    px.push_back(t - T(k));
  }
  if (min_d2_out) *min_d2_out = double(min_d2);
  const int64_t h = static_cast<int64_t>(pa.size());
  const T* spline = ptr<T>(w, SPLINE);

  // Filter of layer `layer` (3F values) and, if dw != null, its derivative d/dd, for pair p.
  auto filter = [&](int64_t p, int64_t layer, T* __restrict wv, T* __restrict dw) {
    const T x = px[p];
    const T* c0 = spline + (layer * knots + pk[p]) * 6 * f3;
    const T* c1 = c0 + f3;
    const T* c2 = c0 + 2 * f3;
    const T* c3 = c0 + 3 * f3;
    const T* c4 = c0 + 4 * f3;
    const T* c5 = c0 + 5 * f3;
    for (int64_t q = 0; q < f3; ++q)
      wv[q] = c0[q] + x * (c1[q] + x * (c2[q] + x * (c3[q] + x * (c4[q] + x * c5[q]))));
    if (dw) {
      for (int64_t q = 0; q < f3; ++q)
        dw[q] = (c1[q] + x * (T(2) * c2[q] + x * (T(3) * c3[q] + x * (T(4) * c4[q] + x * (T(5) * c5[q]))))) * inv_h;
    }
  };

  // ---- forward ----
  std::vector<T> s(n * f), v(n * 3 * f, T(0));
  const T* emb = ptr<T>(w, EMBEDDING);
  for (int64_t a = 0; a < n; ++a)
    std::copy(emb + species[a] * f, emb + (species[a] + 1) * f, s.begin() + a * f);
  // Saved for the reverse pass, per layer.
  std::vector<std::vector<T>> s_phi(layers), s_h1(layers), s_vin(layers), s_uv(layers),
      s_vn(layers), s_hu(layers), s_av(layers), s_dot(layers);
  std::vector<T> wv(f3), dw(f3);
  for (int64_t l = 0; l < layers; ++l) {
    std::vector<T>& phi = s_phi[l];
    phi.resize(n * f3);
    if (l == 0) {
      const T* tab = ptr<T>(w, PHI0);
      for (int64_t a = 0; a < n; ++a)
        std::copy(tab + species[a] * f3, tab + (species[a] + 1) * f3, phi.begin() + a * f3);
    } else {
      std::vector<T>& h1 = s_h1[l];
      h1.resize(n * f);
      linear<T, FC, FC>(s.data(), n, f, ptr<T>(w, PHI_W1T) + l * f * f, ptr<T>(w, PHI_B1) + l * f, f,
                h1.data());
      // h1 is kept as silu'(h1) for the reverse pass: one exp per element, not two.
      std::vector<T> a1(n * f);
      for (int64_t q = 0; q < n * f; ++q) {
        const T x = h1[q], sg = sigmoid(x);
        a1[q] = x * sg;
        h1[q] = sg * (T(1) + x * (T(1) - sg));
      }
      linear<T, FC, 3 * FC>(a1.data(), n, f, ptr<T>(w, PHI_W2T) + l * f * f3, ptr<T>(w, PHI_B2) + l * f3, f3,
                phi.data());
      s_vin[l] = v;
    }
    std::vector<T> sm(s), vm(v);
    const T* vin = v.data();  // v before this layer's messages (zero in layer 0, unused there)
    for (int64_t p = 0; p < h; ++p) {
      const int64_t a = pa[p], b = pb[p];
      filter(p, l, wv.data(), nullptr);
      const T* u = pu.data() + 3 * p;
      const T up[3] = {u[0], u[1], u[2]};
      const T um[3] = {-u[0], -u[1], -u[2]};
      message_into<T, FC>(f, sm.data() + a * f, vm.data() + a * 3 * f, phi.data() + b * f3,
                          vin + b * 3 * f, wv.data(), up, l > 0);
      message_into<T, FC>(f, sm.data() + b * f, vm.data() + b * 3 * f, phi.data() + a * f3,
                          vin + a * 3 * f, wv.data(), um, l > 0);
    }
    // update: uv = v_m @ Wuv^T (rows = atom x component), gated mixing
    std::vector<T>& uv = s_uv[l];
    uv.resize(n * 3 * 2 * f);
    linear<T, FC, 2 * FC>(vm.data(), n * 3, f, ptr<T>(w, UPD_UVT) + l * f * 2 * f, nullptr, 2 * f, uv.data());
    std::vector<T>& vn = s_vn[l];
    std::vector<T>& dot = s_dot[l];
    vn.assign(n * f, T(0));
    dot.assign(n * f, T(0));
    std::vector<T> hin(n * 2 * f);
    for (int64_t a = 0; a < n; ++a) {
      const T* uva = uv.data() + a * 6 * f;
      for (int c = 0; c < 3; ++c)
        for (int64_t q = 0; q < f; ++q) {
          const T uu = uva[c * 2 * f + q], vv = uva[c * 2 * f + f + q];
          vn[a * f + q] += vv * vv;
          dot[a * f + q] += uu * vv;
        }
      for (int64_t q = 0; q < f; ++q) {
        vn[a * f + q] = std::sqrt(vn[a * f + q] + T(1e-8));
        hin[a * 2 * f + q] = sm[a * f + q];
        hin[a * 2 * f + f + q] = vn[a * f + q];
      }
    }
    std::vector<T>& hu = s_hu[l];
    hu.resize(n * f);
    linear<T, 2 * FC, FC>(hin.data(), n, 2 * f, ptr<T>(w, UPD_W1T) + l * 2 * f * f, ptr<T>(w, UPD_B1) + l * f,
              f, hu.data());
    std::vector<T> ah(n * f);
    for (int64_t q = 0; q < n * f; ++q) {
      const T x = hu[q], sg = sigmoid(x);
      ah[q] = x * sg;
      hu[q] = sg * (T(1) + x * (T(1) - sg));  // kept as silu'(hu)
    }
    std::vector<T>& av = s_av[l];
    av.resize(n * f3);
    linear<T, FC, 3 * FC>(ah.data(), n, f, ptr<T>(w, UPD_W2T) + l * f * f3, ptr<T>(w, UPD_B2) + l * f3, f3,
              av.data());
    for (int64_t a = 0; a < n; ++a) {
      const T* ava = av.data() + a * f3;
      for (int64_t q = 0; q < f; ++q)
        s[a * f + q] = sm[a * f + q] + ava[f + q] * dot[a * f + q] + ava[2 * f + q];
      if (l < layers - 1) {
        const T* uva = uv.data() + a * 6 * f;
        for (int c = 0; c < 3; ++c)
          for (int64_t q = 0; q < f; ++q)
            v[a * 3 * f + c * f + q] = vm[a * 3 * f + c * f + q] + ava[q] * uva[c * 2 * f + q];
      }
    }
  }

  // ---- readout ----
  std::vector<T> hr(n * f2);
  linear<T, FC, FC / 2>(s.data(), n, f, ptr<T>(w, RO_W1T), ptr<T>(w, RO_B1), f2, hr.data());
  const T* ro_w2 = ptr<T>(w, RO_W2);
  const T ro_b2 = ptr<T>(w, RO_B2)[0];
  const T scale = ptr<T>(w, SCALE)[0];
  const T* self_energy = ptr<T>(w, SELF_ENERGY);
  auto opts = pos_t.options();
  at::Tensor energy_t = at::zeros({num_structures}, opts);
  T* energy = energy_t.data_ptr<T>();
  std::vector<T> gs(n * f, T(0)), ghr(n * f2);
  for (int64_t a = 0; a < n; ++a) {
    T o = ro_b2;
    for (int64_t q = 0; q < f2; ++q) {
      const T x = hr[a * f2 + q];
      const T sg = sigmoid(x);
      o += x * sg * ro_w2[q];
      ghr[a * f2 + q] = scale * ro_w2[q] * sg * (T(1) + x * (T(1) - sg));
    }
    energy[batch[a]] += o * scale + self_energy[species[a]];
  }

  if (!need_grad) return {energy_t, at::Tensor(), at::Tensor()};

  // ---- reverse pass ----
  linear_back<T, FC, FC / 2>(ghr.data(), n, f2, ptr<T>(w, RO_W1), f, gs.data());
  std::vector<T> gv(n * 3 * f, T(0));
  at::Tensor gpos_t = at::zeros({n, 3}, opts);
  at::Tensor gcell_t = at::zeros({num_structures, 3, 3}, opts);
  T* gpos = gpos_t.data_ptr<T>();
  T* gcell = gcell_t.data_ptr<T>();
  std::vector<T> gd_lane(f), gu_lane(3 * f);
  for (int64_t l = layers - 1; l >= 0; --l) {
    const bool last = l == layers - 1;
    const std::vector<T>& uv = s_uv[l];
    const std::vector<T>& vn = s_vn[l];
    const std::vector<T>& hu = s_hu[l];
    const std::vector<T>& av = s_av[l];
    const std::vector<T>& dot = s_dot[l];
    // update
    std::vector<T> gav(n * f3), guv(n * 3 * 2 * f);
    for (int64_t a = 0; a < n; ++a) {
      const T* ava = av.data() + a * f3;
      const T* uva = uv.data() + a * 6 * f;
      const T* gsa = gs.data() + a * f;
      const T* gva = gv.data() + a * 3 * f;
      T* gava = gav.data() + a * f3;
      for (int64_t q = 0; q < f; ++q) {
        gava[q] = T(0);
        gava[f + q] = gsa[q] * dot[a * f + q];
        gava[2 * f + q] = gsa[q];
      }
      for (int c = 0; c < 3; ++c)
        for (int64_t q = 0; q < f; ++q) {
          const T uu = uva[c * 2 * f + q], vv = uva[c * 2 * f + f + q];
          const T gdot = gsa[q] * ava[f + q];
          T gu = gdot * vv;
          if (!last) {
            gava[q] += gva[c * f + q] * uu;
            gu += gva[c * f + q] * ava[q];
          }
          guv[a * 6 * f + c * 2 * f + q] = gu;
          guv[a * 6 * f + c * 2 * f + f + q] = gdot * uu;
        }
    }
    std::vector<T> gah(n * f, T(0));
    linear_back<T, FC, 3 * FC>(gav.data(), n, f3, ptr<T>(w, UPD_W2) + l * f3 * f, f, gah.data());
    for (int64_t q = 0; q < n * f; ++q) gah[q] *= hu[q];  // hu holds silu'(hu)
    std::vector<T> ghin(n * 2 * f, T(0));
    linear_back<T, 2 * FC, FC>(gah.data(), n, f, ptr<T>(w, UPD_W1) + l * f * 2 * f, 2 * f, ghin.data());
    std::vector<T> gsm(gs);
    for (int64_t a = 0; a < n; ++a) {
      const T* uva = uv.data() + a * 6 * f;
      for (int64_t q = 0; q < f; ++q) {
        gsm[a * f + q] += ghin[a * 2 * f + q];
        const T r = ghin[a * 2 * f + f + q] / vn[a * f + q];
        for (int c = 0; c < 3; ++c) guv[a * 6 * f + c * 2 * f + f + q] += r * uva[c * 2 * f + f + q];
      }
    }
    std::vector<T> gvm(gv);
    linear_back<T, FC, 2 * FC>(guv.data(), n * 3, 2 * f, ptr<T>(w, UPD_UV) + l * 2 * f * f, f, gvm.data());

    // message
    const std::vector<T>& phi = s_phi[l];
    std::vector<T> gphi;
    std::vector<T> gvin;
    const T* vin = nullptr;
    if (l > 0) {
      gphi.assign(n * f3, T(0));
      gvin = gvm;
      vin = s_vin[l].data();
    }
    T* gphi_p = l > 0 ? gphi.data() : nullptr;
    T* gvin_p = l > 0 ? gvin.data() : nullptr;
    for (int64_t p = 0; p < h; ++p) {
      const int64_t a = pa[p], b = pb[p];
      filter(p, l, wv.data(), dw.data());
      const T* u = pu.data() + 3 * p;
      const T up[3] = {u[0], u[1], u[2]};
      const T um[3] = {-u[0], -u[1], -u[2]};
      std::fill(gd_lane.begin(), gd_lane.end(), T(0));
      std::fill(gu_lane.begin(), gu_lane.end(), T(0));
      if (l > 0) {
        // receiver a, sender b, along +u; then receiver b, sender a, along -u
        message_back<T, FC, true>(f, gsm.data() + a * f, gvm.data() + a * 3 * f,
                                  phi.data() + b * f3, vin + b * 3 * f, wv.data(), dw.data(), up,
                                  T(1), gphi_p + b * f3, gvin_p + b * 3 * f, gd_lane.data(),
                                  gu_lane.data());
        message_back<T, FC, true>(f, gsm.data() + b * f, gvm.data() + b * 3 * f,
                                  phi.data() + a * f3, vin + a * 3 * f, wv.data(), dw.data(), um,
                                  T(-1), gphi_p + a * f3, gvin_p + a * 3 * f, gd_lane.data(),
                                  gu_lane.data());
      } else {
        message_back<T, FC, false>(f, gsm.data() + a * f, gvm.data() + a * 3 * f,
                                   phi.data() + b * f3, nullptr, wv.data(), dw.data(), up, T(1),
                                   nullptr, nullptr, gd_lane.data(), gu_lane.data());
        message_back<T, FC, false>(f, gsm.data() + b * f, gvm.data() + b * 3 * f,
                                   phi.data() + a * f3, nullptr, wv.data(), dw.data(), um, T(-1),
                                   nullptr, nullptr, gd_lane.data(), gu_lane.data());
      }
      T gd = T(0), gu[3] = {T(0), T(0), T(0)};
      for (int64_t q = 0; q < f; ++q) gd += gd_lane[q];
      for (int c = 0; c < 3; ++c)
        for (int64_t q = 0; q < f; ++q) gu[c] += gu_lane[c * f + q];
      // d = |vec|, u = vec / d  ->  dE/dvec
      const T d = pd[p];
      const T gdotu = gu[0] * u[0] + gu[1] * u[1] + gu[2] * u[2];
      T gvec[3];
      for (int c = 0; c < 3; ++c) {
        gvec[c] = gd * u[c] + (gu[c] - gdotu * u[c]) / d;
        gpos[3 * b + c] += gvec[c];
        gpos[3 * a + c] -= gvec[c];
      }
      if (periodic && need_cell_grad) {
        const T* sh = shifts + 3 * porig[p];
        T* gc = gcell + 9 * batch[a];
        for (int r = 0; r < 3; ++r)
          for (int c = 0; c < 3; ++c) gc[3 * r + c] += sh[r] * gvec[c];
      }
    }
    if (l > 0) {
      // phi = W2 silu(W1 s + b1) + b2
      const std::vector<T>& h1 = s_h1[l];
      std::vector<T> ga1(n * f, T(0));
      linear_back<T, FC, 3 * FC>(gphi.data(), n, f3, ptr<T>(w, PHI_W2) + l * f3 * f, f, ga1.data());
      for (int64_t q = 0; q < n * f; ++q) ga1[q] *= h1[q];  // h1 holds silu'(h1)
      linear_back<T, FC, FC>(ga1.data(), n, f, ptr<T>(w, PHI_W1) + l * f * f, f, gsm.data());
      gs = std::move(gsm);
      gv = std::move(gvin);
    }
  }
  return {energy_t, gpos_t, gcell_t};
}

// Energy (B,), dE/dpos (N, 3) and dE/dcell (B, 3, 3) (the last two only with need_grad).
std::tuple<at::Tensor, at::Tensor, at::Tensor> evaluate(
    const at::Tensor& species,
    const at::Tensor& pos,
    const at::Tensor& cell,
    const at::Tensor& batch,
    const at::Tensor& i,
    const at::Tensor& j,
    const at::Tensor& shifts,
    bool periodic,
    bool need_grad,
    bool need_cell_grad,
    int64_t num_structures,
    at::TensorList weights,
    double cutoff,
    double* min_d2 = nullptr) {
  TORCH_CHECK(pos.device().is_cpu(), "mlsim_fast::painn_energy runs on the CPU only");
  TORCH_CHECK(weights.size() == NUM_WEIGHTS, "painn_energy: expected ", int(NUM_WEIGHTS),
              " weight tensors, got ", weights.size());
  const auto dtype = pos.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "painn_energy: float32 or float64 only");
  std::vector<at::Tensor> w;
  w.reserve(weights.size());
  for (const auto& t : weights) {
    TORCH_CHECK(t.scalar_type() == dtype, "painn_energy: weights and positions differ in dtype");
    w.push_back(t.contiguous());
  }
  auto sp = species.to(at::kLong).contiguous();
  auto p = pos.contiguous();
  auto c = cell.to(dtype).contiguous();
  auto bt = batch.to(at::kLong).contiguous();
  auto ii = i.to(at::kLong).contiguous();
  auto jj = j.to(at::kLong).contiguous();
  auto sh = shifts.to(dtype).contiguous();
  const int64_t f = w[EMBEDDING].size(1);
#define MLSIM_RUN(T, FC) \
  run<T, FC>(sp, p, c, bt, ii, jj, sh, periodic, need_grad, need_cell_grad, num_structures, w, \
             cutoff, min_d2)
  // Common widths get a compiled-in feature count (fully unrolled, vectorised feature loops).
  if (dtype == at::kDouble) {
    if (f == 32) return MLSIM_RUN(double, 32);
    if (f == 64) return MLSIM_RUN(double, 64);
    if (f == 128) return MLSIM_RUN(double, 128);
    return MLSIM_RUN(double, 0);
  }
  if (f == 32) return MLSIM_RUN(float, 32);
  if (f == 64) return MLSIM_RUN(float, 64);
  if (f == 128) return MLSIM_RUN(float, 128);
  return MLSIM_RUN(float, 0);
#undef MLSIM_RUN
}

// Without autograd (no input requires a gradient, or under no_grad): the energy only, no
// reverse pass.
at::Tensor painn_energy_cpu(const at::Tensor& species, const at::Tensor& pos,
                            const at::Tensor& cell, const at::Tensor& batch, const at::Tensor& i,
                            const at::Tensor& j, const at::Tensor& shifts, bool periodic,
                            int64_t num_structures, at::TensorList weights, double cutoff) {
  return std::get<0>(evaluate(species, pos, cell, batch, i, j, shifts, periodic, false, false,
                              num_structures, weights, cutoff));
}

// With autograd: the forward call also runs the reverse pass (it is one fused loop and costs
// less than keeping what a later backward would need); the node's backward only scales the
// stored gradients by the incoming dL/dE. One node, so no surrogate that graph rewrites (e.g.
// torch.jit.freeze deleting .detach()) could break. First derivatives only.
class PainnEnergyFunction : public torch::autograd::Function<PainnEnergyFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& species,
                            const at::Tensor& pos, const at::Tensor& cell, const at::Tensor& batch,
                            const at::Tensor& i, const at::Tensor& j, const at::Tensor& shifts,
                            bool periodic, int64_t num_structures, at::TensorList weights,
                            double cutoff) {
    at::AutoDispatchBelowADInplaceOrView guard;
    // (forward runs with grad mode off; painn_energy_autograd checked it before)
    const bool need_pos = pos.requires_grad();
    const bool need_cell = periodic && cell.requires_grad();
    auto out = evaluate(species, pos.detach(), cell.detach(), batch, i, j, shifts, periodic,
                        need_pos || need_cell, need_cell, num_structures, weights, cutoff);
    at::Tensor gpos = std::get<1>(out);
    at::Tensor gcell = need_cell ? std::get<2>(out) : at::zeros_like(cell);
    ctx->save_for_backward({gpos, gcell, batch});
    ctx->saved_data["num_weights"] = static_cast<int64_t>(weights.size());
    ctx->saved_data["cell_dtype"] = static_cast<int64_t>(cell.scalar_type());
    return std::get<0>(out);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& g = grad_out[0];  // dL/dE, (B,)
    // One entry per forward input: species, pos, cell, batch, i, j, shifts, periodic,
    // num_structures, each weight, cutoff.
    torch::autograd::variable_list grads(10 + ctx->saved_data["num_weights"].toInt());
    if (ctx->needs_input_grad(1)) {
      // one structure: dL/dE is a single number (broadcast), no gather by structure index
      grads[1] = g.numel() == 1 ? saved[0] * g : saved[0] * g.index_select(0, saved[2]).unsqueeze(1);
    }
    if (ctx->needs_input_grad(2)) {
      const auto cell_dtype = static_cast<at::ScalarType>(ctx->saved_data["cell_dtype"].toInt());
      grads[2] = (saved[1] * g.view({-1, 1, 1})).to(cell_dtype);
    }
    return grads;
  }
};

at::Tensor painn_energy_autograd(const at::Tensor& species, const at::Tensor& pos,
                                 const at::Tensor& cell, const at::Tensor& batch,
                                 const at::Tensor& i, const at::Tensor& j,
                                 const at::Tensor& shifts, bool periodic, int64_t num_structures,
                                 at::TensorList weights, double cutoff) {
  const bool need = pos.requires_grad() || (periodic && cell.requires_grad());
  if (!at::GradMode::is_enabled() || !need) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return painn_energy_cpu(species, pos.detach(), cell.detach(), batch, i, j, shifts, periodic,
                            num_structures, weights, cutoff);
  }
  return PainnEnergyFunction::apply(species, pos, cell, batch, i, j, shifts, periodic,
                                    num_structures, weights, cutoff);
}

// Model element index of each atom from its atomic number; a number the model does not know is a
// ValueError naming it and the known ones (the message of mlsim.models._graph.element_indices).
at::Tensor species_of(const at::Tensor& numbers, const at::Tensor& species_map) {
  auto z = numbers.to(at::kLong).contiguous();
  auto map = species_map.to(at::kLong).contiguous();
  const int64_t* zp = z.data_ptr<int64_t>();
  const int64_t* mp = map.data_ptr<int64_t>();
  const int64_t size = map.numel();
  at::Tensor out = at::empty_like(z);
  int64_t* op = out.data_ptr<int64_t>();
  for (int64_t a = 0; a < z.numel(); ++a) {
    const int64_t k = (zp[a] >= 0 && zp[a] < size) ? mp[zp[a]] : -1;
    if (k < 0) {
      std::string known;
      for (int64_t q = 0; q < size; ++q)
        if (mp[q] >= 0) known += (known.empty() ? "" : ", ") + std::to_string(q);
      TORCH_CHECK_VALUE(false, "element with atomic number ", zp[a],
                        " is not supported by this model (it knows atomic numbers [", known, "])");
    }
    op[a] = k;
  }
  return out;
}

// Energy (B,), dE/dpos (N, 3), dE/dcell (B, 3, 3) (zeros unless cell_grad) and the shortest
// distance in the pair list (0-dim float64, inf for none), in the weights' dtype, as plain
// tensors without autograd: the forces of an MD step or an ASE call for the cost of the fused
// pass alone (no graph, no backward call). It takes the model's inputs as they come (atomic
// numbers, any float dtype, pbc) so that the caller needs no tensor ops of its own; inputs are
// read as constants, whatever their requires_grad.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> painn_energy_grad(
    const at::Tensor& numbers, const at::Tensor& pos, const at::Tensor& cell,
    const at::Tensor& pbc, const at::Tensor& batch, const at::Tensor& i, const at::Tensor& j,
    const at::Tensor& shifts, at::TensorList weights, const at::Tensor& species_map,
    double cutoff, bool cell_grad) {
  at::AutoDispatchBelowADInplaceOrView guard;
  TORCH_CHECK(weights.size() == NUM_WEIGHTS, "painn_energy_grad: expected ", int(NUM_WEIGHTS),
              " weight tensors, got ", weights.size());
  TORCH_CHECK(cell.dim() == 3 && pbc.dim() == 2 && pbc.size(0) == cell.size(0),
              "painn_energy_grad: cell (B, 3, 3) and pbc (B, 3) expected");
  const auto dtype = weights[EMBEDDING].scalar_type();
  auto pb = pbc.to(at::kBool).contiguous();
  bool periodic = false;
  for (int64_t q = 0; q < pb.numel(); ++q) periodic = periodic || pb.data_ptr<bool>()[q];
  const bool need_cell = periodic && cell_grad;
  const int64_t num_structures = cell.size(0);
  double min_d2 = 0.0;
  auto out = evaluate(species_of(numbers, species_map), pos.detach().to(dtype),
                      cell.detach().to(dtype), batch, i, j, shifts, periodic, true, need_cell,
                      num_structures, weights, cutoff, &min_d2);
  at::Tensor gcell = need_cell ? std::get<2>(out)
                               : at::zeros({num_structures, 3, 3}, pos.options().dtype(dtype));
  return {std::get<0>(out), std::get<1>(out), gcell,
          at::scalar_tensor(std::sqrt(min_d2), pos.options().dtype(at::kDouble))};
}

}  // namespace

TORCH_LIBRARY(mlsim_fast, m) {
  m.def(
      "painn_energy(Tensor species, Tensor pos, Tensor cell, Tensor batch, Tensor i, Tensor j, "
      "Tensor shifts, bool periodic, int num_structures, Tensor[] weights, float cutoff) -> Tensor");
  m.def(
      "painn_energy_grad(Tensor numbers, Tensor pos, Tensor cell, Tensor pbc, Tensor batch, "
      "Tensor i, Tensor j, Tensor shifts, Tensor[] weights, Tensor species_map, float cutoff, "
      "bool cell_grad) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mlsim_fast, CPU, m) {
  m.impl("painn_energy", TORCH_FN(painn_energy_cpu));
}

// Under every dispatch key (autograd included): its outputs are constants, no graph is recorded.
TORCH_LIBRARY_IMPL(mlsim_fast, CompositeImplicitAutograd, m) {
  m.impl("painn_energy_grad", TORCH_FN(painn_energy_grad));
}

TORCH_LIBRARY_IMPL(mlsim_fast, Autograd, m) {
  m.impl("painn_energy", TORCH_FN(painn_energy_autograd));
}
