"""Inference-optimised PaiNN: a trained PaiNNModel's energy with hand-written forces, fused in C++.

`optimize_for_inference(model)` transforms a trained PaiNN (eager, a loaded model.pt, or an
ensemble of them) into a `FastPaiNN`: a TorchScript module with the interface ASE,
compute_properties and OpenMM use (forward, energy_from_pairs, elements, cutoff). Changes:

- Each layer's radial filter filt(rbf(d)) * fcut(d) depends on the distance only; it is tabulated
  once as a quintic Hermite spline (exact values, slopes and curvatures at `knots` + 1 nodes on
  [0, cutoff]), within ~1e-10 of the network (`spline_error`). The spline is the model: the forces
  are the exact gradient of the spline energy, so energy is conserved as before.
- The forces are written out by hand (reverse mode, layer by layer) instead of autograd's graph
  of hundreds of small nodes; autograd sees one node whose gradient is that result, so every
  caller that differentiates the energy (forces, stress, OpenMM) works unchanged. Second
  derivatives (training on forces) are not available: train the original model.
- backend "cpp": the whole evaluation (pairs, layers, reverse pass) is one call of a fused C++
  kernel (csrc/painn_fast_torch.cpp, built into mlsim's op library libmlsim_torch.so; compiled
  on first use only where that library predates it): no (pairs, 3, features) temporaries, no
  per-op overhead, memory O(atoms + pairs). A file of such a model needs that library in its
  host, like a periodic OpenMM export.
- energy_and_gradients returns energy, dE/dR and dE/dcell without autograd (no graph, no
  backward call): compute_properties, MLCalculator and the OpenMM modules use it.
  backend "torch": the same math in TorchScript, pairs in cache-sized chunks, the gradient passed
  to autograd as the first-order surrogate E + sum(dE/dR . (R - R0)) with R0 a copy of R (value
  exactly E, gradient exactly dE/dR); it needs no compiler and no custom op (a TorchForce file of
  it loads in a C++-only OpenMM) and is the reference the kernel is tested against (1e-12).
  "auto" takes cpp when the kernel builds.
- The first layer's scalar MLP depends only on the element (a table); the first message has no
  vector term (v = 0); the last update's vector output is never used: all three are skipped.
"""

# No `from __future__ import annotations`: TorchScript needs real class annotations.
import copy
import hashlib
import math
import os
import platform
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from mlsim.models._graph import element_indices, neighbor_pairs

__all__ = [
    "BACKENDS",
    "FastPaiNN",
    "kernel_available",
    "kernel_library_path",
    "optimize_for_inference",
    "spline_error",
    "uses_kernel",
    "without_kernel",
]

BACKENDS = ("auto", "cpp", "torch")
# Quintic spline intervals on [0, cutoff]. 256 at 5 A (h ~ 0.02 A) put the shipped model's
# filters within 9e-11 (values) and 4e-9 (slopes) of the network's, relative to their largest
# value (spline_error; cubic Hermite needs 4096 intervals for that); the table is 1.2 MB in
# float32, so it stays in cache.
DEFAULT_KNOTS = 256
# Pairs per chunk in the TorchScript backend: (chunk, 3, F) float32 temporaries of ~0.4 MB at
# F = 32 stay in a core's L2 cache (1,029 waters: 1024 -> 105 ms, 8192 -> 141 ms, unchunked 221).
DEFAULT_CHUNK = 1024
# The kernel's source, for the JIT fallback (a source checkout whose op library predates it).
_SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "painn_fast_torch.cpp"


def _silu_grad(h: Tensor) -> Tensor:
    """d silu(h) / dh = sigmoid(h) (1 + h (1 - sigmoid(h)))."""
    sg = torch.sigmoid(h)
    return sg * (1.0 + h * (1.0 - sg))


def _bessel_basis(d: Tensor, freqs: Tensor, cutoff: float) -> list[Tensor]:
    """[sin(k d)/d * fcut, fcut] (P, R+1) and its first and second d/dd, for d > 0."""
    kd = d.unsqueeze(1) * freqs
    inv_d = (1.0 / d).unsqueeze(1)
    sn = torch.sin(kd)
    rb = sn * inv_d
    rb1 = (freqs * torch.cos(kd) - rb) * inv_d
    rb2 = (-(freqs * freqs) * sn - 2.0 * rb1) * inv_d
    w = math.pi / cutoff
    fc = (0.5 * (torch.cos(d * w) + 1.0)).unsqueeze(1)
    fc1 = (-0.5 * w * torch.sin(d * w)).unsqueeze(1)
    fc2 = (-0.5 * w * w * torch.cos(d * w)).unsqueeze(1)
    return [
        torch.cat([rb * fc, fc], 1),
        torch.cat([rb1 * fc + rb * fc1, fc1], 1),
        torch.cat([rb2 * fc + 2.0 * rb1 * fc1 + rb * fc2, fc2], 1),
    ]


def _filter_matrix(model: nn.Module) -> Tensor:
    """[A | b]^T of every layer's filter Linear, (L, R+1, 3F): filt(rbf) * fcut = basis @ it."""
    return torch.stack(
        [
            torch.cat([m.filt.weight.detach().t(), m.filt.bias.detach()[None]], 0)
            for m in model.messages
        ]
    )


def _basis_exact(model: nn.Module, d: Tensor) -> list[Tensor]:
    """The basis [rbf * fcut, fcut] (P, R+1) and its first and second d/dd, in float64.

    At d = 0 it takes its limits (sin(k d)/d -> k), so a table can start there.
    """
    freqs = model.rbf.freqs.detach().to(torch.float64)
    d = d.to(torch.float64)
    pos = (d > 0).unsqueeze(1)
    basis = _bessel_basis(torch.where(d > 0, d, torch.ones_like(d)), freqs, float(model.cutoff))
    w2 = (math.pi / float(model.cutoff)) ** 2
    one = torch.ones(1, dtype=torch.float64)
    at0 = [
        torch.cat([freqs, one]),
        torch.zeros(freqs.shape[0] + 1, dtype=torch.float64),
        torch.cat([-(freqs**3) / 3.0 - 0.5 * w2 * freqs, -0.5 * w2 * one]),
    ]
    return [torch.where(pos, g, g0) for g, g0 in zip(basis, at0)]


def _filter_exact(model: nn.Module, d: Tensor) -> list[Tensor]:
    """Every layer's filter filt(rbf(d)) * fcut(d), (P, L, 3F), and its d/dd and d2/dd2 (float64).

    filt is linear in the basis, so its derivatives need only the basis's.
    """
    a = _filter_matrix(model).to(torch.float64)
    return [torch.einsum("pr,lrc->plc", g, a) for g in _basis_exact(model, d)]


def _quintic(y: Tensor, m: Tensor, k: Tensor, h: float) -> Tensor:
    """Quintic Hermite coefficients (..., K, 6, C) from node values, slopes, curvatures (..., K+1, C).

    Interval k covers [k h, (k+1) h]; with x = d/h - k in [0, 1), f(d) = sum_q c_q x^q. Value,
    slope and curvature match at every node, so the spline is C2 and its error falls as h^6
    (h^5 for the slope): 256 intervals match cubic Hermite with 4096.
    """
    m, k = m * h, k * (h * h)  # per unit x
    y0, y1 = y[..., :-1, :], y[..., 1:, :]
    m0, m1 = m[..., :-1, :], m[..., 1:, :]
    k0, k1 = k[..., :-1, :], k[..., 1:, :]
    dy = y1 - y0
    coefs = [
        y0,
        m0,
        0.5 * k0,
        10.0 * dy - 6.0 * m0 - 4.0 * m1 - 0.5 * (3.0 * k0 - k1),
        -15.0 * dy + 8.0 * m0 + 7.0 * m1 + 0.5 * (3.0 * k0 - 2.0 * k1),
        6.0 * dy - 3.0 * (m0 + m1) - 0.5 * (k0 - k1),
    ]
    return torch.stack(coefs, -2)


def _nodes(model: nn.Module, knots: int) -> tuple[Tensor, float]:
    """knots + 1 equally spaced distances on [0, cutoff] (float64) and their spacing."""
    h = float(model.cutoff) / knots
    return torch.arange(knots + 1, dtype=torch.float64) * h, h


def _spline_table(model: nn.Module, knots: int) -> Tensor:
    """Quintic coefficients (L, knots, 6, 3F) of every layer's filter on [0, cutoff] (C++ kernel)."""
    nodes, h = _nodes(model, knots)
    y, m, k = (t.transpose(0, 1) for t in _filter_exact(model, nodes))  # (L, K+1, 3F)
    return _quintic(y, m, k, h)


def _basis_table(model: nn.Module, knots: int) -> Tensor:
    """Quintic coefficients (knots, 6, R+1) of the basis on the same nodes (TorchScript backend)."""
    nodes, h = _nodes(model, knots)
    return _quintic(*_basis_exact(model, nodes), h)


def _spline_eval(table: Tensor, d: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    """Spline values and derivatives (P, L, 3F) at distances d (P,) (for checks, not speed)."""
    knots = table.shape[1]
    t = d * (knots / cutoff)
    k = t.long().clamp(max=knots - 1)
    x = (t - k.to(t.dtype)).view(-1, 1, 1)
    c = table[:, k].transpose(0, 1)  # (P, L, 6, 3F)
    w = c[:, :, 5]
    dw = 5.0 * c[:, :, 5]
    for q in range(4, 0, -1):
        w = c[:, :, q] + x * w
        dw = q * c[:, :, q] + x * dw
    return c[:, :, 0] + x * w, dw * (knots / cutoff)


def spline_error(model: nn.Module, knots: int = DEFAULT_KNOTS, samples: int = 20001) -> dict:
    """Largest deviation of the tabulated filter from the network on [0.1, cutoff] (float64).

    Returns {"value": max |W_spline - W| / max |W|, "derivative": the same for dW/dd}.
    """
    eager = _eager_painn(model)
    table = _spline_table(eager, knots)
    d = torch.linspace(0.1, float(eager.cutoff) * (1 - 1e-9), samples, dtype=torch.float64)
    w, dw, _ = _filter_exact(eager, d)
    sw, sdw = _spline_eval(table, d, float(eager.cutoff))
    return {
        "value": float((sw - w).abs().max() / w.abs().max()),
        "derivative": float((sdw - dw).abs().max() / dw.abs().max()),
    }


_KERNEL_LOCK = threading.Lock()
_KERNEL_STATE: dict[str, object] = {}


def _kernel_registered() -> bool:
    """Whether torch.ops.mlsim_fast has the kernel's ops (from libmlsim_torch.so or a JIT build)."""
    return hasattr(torch.ops, "mlsim_fast") and hasattr(torch.ops.mlsim_fast, "painn_energy_grad")


def _load_kernel() -> bool:
    """Find the C++ kernel (built into the op library) or, failing that, compile it once per
    machine and source (JIT, needs a compiler); False if neither works."""
    with _KERNEL_LOCK:
        if "ok" in _KERNEL_STATE:
            return bool(_KERNEL_STATE["ok"])
        try:  # importing mlsim.neighbors loads libmlsim_torch.so, which registers the ops
            from mlsim.neighbors import ops_library_path

            if _kernel_registered():
                _KERNEL_STATE.update(ok=True, path=ops_library_path(), error="")
                return True
        except ImportError:
            pass
        if not _SOURCE.is_file():
            _KERNEL_STATE.update(
                ok=False,
                path="",
                error=f"mlsim's op library has no fused kernel and its source {_SOURCE} is not "
                "here to compile; rebuild mlsim (`make install`)",
            )
            return False
        try:
            from torch.utils.cpp_extension import load

            # -march=native: the build is cached per machine, keyed by the source and the CPU.
            key = hashlib.sha256(_SOURCE.read_bytes() + _cpu_id().encode()).hexdigest()[:12]
            path = load(
                name=f"mlsim_fast_{key}",
                sources=[str(_SOURCE)],
                extra_cflags=["-O3", "-march=native"],
                is_python_module=False,
                verbose=False,
            )
            _KERNEL_STATE["path"] = str(path) if path else ""
            ok = _kernel_registered()
            _KERNEL_STATE["error"] = "" if ok else "the library loaded but registered no op"
        except Exception as exc:  # noqa: BLE001 - no compiler, no headers, a failed build
            ok = False
            _KERNEL_STATE["error"] = f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"
        _KERNEL_STATE["ok"] = ok
        return ok


def _cpu_id() -> str:
    """The CPU's model and flags (the -march=native build is only valid on such a CPU)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines) or platform.processor()
    except OSError:
        return platform.processor() + platform.machine()


def kernel_available() -> tuple[bool, str]:
    """Whether the fused C++ kernel builds and loads here, and the reason if it does not."""
    ok = _load_kernel()
    return ok, "" if ok else str(_KERNEL_STATE.get("error", ""))


def kernel_library_path() -> str:
    """The library that registers the kernel's ops (libmlsim_torch.so, or the JIT build): what a
    C++ host must load (dlopen) before a TorchScript file of a backend="cpp" model; "" if the
    kernel is not available."""
    return str(_KERNEL_STATE.get("path", "")) if _load_kernel() else ""


class FastPaiNN(nn.Module):
    """A trained PaiNN for inference: spline filters, analytic forces, O(pairs) memory.

    Build it with `optimize_for_inference`. The weights are buffers (no autograd on them); the
    module follows .double() / .float() like any model.
    """

    cutoff: float
    elements: list[int]
    features: int
    num_layers: int
    knots: int
    chunk: int
    use_kernel: bool

    def __init__(
        self,
        model: nn.Module,
        knots: int = DEFAULT_KNOTS,
        chunk: int = DEFAULT_CHUNK,
        use_kernel: bool = False,
    ) -> None:
        """Copy the weights of an eager PaiNNModel and tabulate its filters."""
        super().__init__()
        f = int(model.features)
        layers = len(model.messages)
        dtype = model.embedding.weight.dtype
        self.cutoff = float(model.cutoff)
        self.elements = [int(z) for z in model.elements]
        self.features = f
        self.num_layers = layers
        self.knots = int(knots)
        self.chunk = int(chunk)
        self.use_kernel = bool(use_kernel)
        msg, upd = model.messages, model.updates

        def stack(get) -> Tensor:
            return torch.stack([get(k).detach() for k in range(layers)]).contiguous()

        with torch.no_grad():
            emb = model.embedding.weight.detach()
            buffers = {
                "species_map": model.element_index.species_map,
                "self_energy": model.atomic_shift.self_energy,
                "scale": model.energy_scale.scale.reshape(1),
                "embedding": emb,
                "phi0_table": msg[0].phi(emb),
                "spline": _spline_table(model, self.knots).to(dtype),
                "basis_spline": _basis_table(model, self.knots).to(dtype),
                "filt_a": _filter_matrix(model),
                "phi_w1": stack(lambda k: msg[k].phi[0].weight),
                "phi_b1": stack(lambda k: msg[k].phi[0].bias),
                "phi_w2": stack(lambda k: msg[k].phi[2].weight),
                "phi_b2": stack(lambda k: msg[k].phi[2].bias),
                "upd_uv": stack(lambda k: upd[k].uv.weight),
                "upd_w1": stack(lambda k: upd[k].mlp[0].weight),
                "upd_b1": stack(lambda k: upd[k].mlp[0].bias),
                "upd_w2": stack(lambda k: upd[k].mlp[2].weight),
                "upd_b2": stack(lambda k: upd[k].mlp[2].bias),
                "ro_w1": model.readout[0].weight,
                "ro_b1": model.readout[0].bias,
                "ro_w2": model.readout[2].weight.reshape(-1),
                "ro_b2": model.readout[2].bias,
            }
            for name, t in buffers.items():
                self.register_buffer(name, t.detach().clone().contiguous())
            # The kernel's forward loops want (in, out) layouts, its reverse loops (out, in).
            for name in ("phi_w1", "phi_w2", "upd_uv", "upd_w1", "upd_w2"):
                t = getattr(self, name)
                self.register_buffer(name + "t", t.transpose(1, 2).contiguous())
            self.register_buffer("ro_w1t", self.ro_w1.t().contiguous())

    def float_dtype(self) -> torch.dtype:
        """The module's floating-point dtype (follows .double() / .float())."""
        return self.self_energy.dtype

    def kernel_weights(self) -> list[Tensor]:
        """The weights in the order of the C++ kernel's enum W."""
        return [
            self.embedding,
            self.phi0_table,
            self.spline,
            self.phi_w1,
            self.phi_w1t,
            self.phi_b1,
            self.phi_w2,
            self.phi_w2t,
            self.phi_b2,
            self.upd_uv,
            self.upd_uvt,
            self.upd_w1,
            self.upd_w1t,
            self.upd_b1,
            self.upd_w2,
            self.upd_w2t,
            self.upd_b2,
            self.ro_w1,
            self.ro_w1t,
            self.ro_b1,
            self.ro_w2,
            self.ro_b2,
            self.scale,
            self.self_energy,
        ]

    def _energy_kernel(
        self,
        species: Tensor,
        pos: Tensor,
        cell: Tensor,
        batch: Tensor,
        num_structures: int,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
        periodic: bool,
    ) -> Tensor:
        """Energies (B,) from the fused C++ kernel; its autograd node returns the forces."""
        raise RuntimeError("the C++ kernel is not loaded; use backend='torch'")

    def _evaluate_torch(
        self,
        species: Tensor,
        pos: Tensor,
        cell: Tensor,
        batch: Tensor,
        num_structures: int,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
        periodic: bool,
        need_cell_grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Energies (B,), dE/dpositions (N, 3), dE/dcell (B, 3, 3) from a half pair list."""
        f = self.features
        n = pos.shape[0]
        layers = self.num_layers
        zeros_like_pos = torch.zeros(0, dtype=pos.dtype, device=pos.device)
        # Geometry of the half list; pairs at or beyond the cutoff are dropped.
        vec = pos.index_select(0, j) - pos.index_select(0, i)
        if periodic:
            image = torch.bmm(shifts.unsqueeze(1), cell.index_select(0, batch.index_select(0, i)))
            vec = vec + image.squeeze(1)
        d2 = (vec * vec).sum(1)
        keep = d2 < self.cutoff * self.cutoff
        if not bool(keep.all()):
            idx = torch.nonzero(keep).squeeze(1)
            i, j, vec, d2 = i[idx], j[idx], vec[idx], d2[idx]
            shifts = shifts[idx]
        h = i.shape[0]
        d = torch.sqrt(d2)
        u = vec / d.unsqueeze(1)
        # The spline is linear in its node data, so the spline of the basis times each layer's
        # [A | b] is the kernel's spline of the filter (to rounding); a (chunk, R+1) @ (R+1, 3F)
        # product per chunk beats gathering (chunk, 6, 3F) coefficients in torch.
        inv_h = self.knots / self.cutoff
        t = d * inv_h
        knot = t.long().clamp(max=self.knots - 1)
        x = (t - knot.to(t.dtype)).unsqueeze(1)
        co = self.basis_spline.index_select(0, knot)
        g = co[:, 5]
        dg = 5.0 * g
        for q in range(4, 0, -1):
            g = torch.addcmul(co[:, q], x, g)
            dg = torch.addcmul(co[:, q] * float(q), x, dg)
        g = torch.addcmul(co[:, 0], x, g)
        dg = dg * inv_h
        # Messages flow both ways: the full list is the half list and its reverse.
        pi = torch.cat([i, j])
        pj = torch.cat([j, i])
        pu = torch.cat([u, -u])
        pg = torch.cat([g, g])
        pdg = torch.cat([dg, dg])
        npairs = 2 * h
        chunk = self.chunk

        s = self.embedding.index_select(0, species)
        v = torch.zeros(n, 3, f, dtype=pos.dtype, device=pos.device)
        saved_phi: list[Tensor] = []
        saved_h1: list[Tensor] = []
        saved_v_in: list[Tensor] = []
        saved_upd: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]] = []
        for layer in range(layers):
            if layer == 0:
                phi = self.phi0_table.index_select(0, species)
                h1 = zeros_like_pos
            else:
                h1 = torch.addmm(self.phi_b1[layer], s, self.phi_w1t[layer])
                phi = torch.addmm(
                    self.phi_b2[layer], torch.nn.functional.silu(h1), self.phi_w2t[layer]
                )
            saved_phi.append(phi)
            saved_h1.append(h1)
            saved_v_in.append(v)
            a = self.filt_a[layer]
            s_m = s.clone()
            v_m = v.clone()
            for c0 in range(0, npairs, chunk):
                ci = pi[c0 : c0 + chunk]
                cj = pj[c0 : c0 + chunk]
                xm = phi.index_select(0, cj) * torch.mm(pg[c0 : c0 + chunk], a)
                s_m.index_add_(0, ci, xm[:, :f])
                dv = pu[c0 : c0 + chunk].unsqueeze(2) * xm[:, 2 * f :].unsqueeze(1)
                if layer > 0:
                    dv = torch.addcmul(dv, v.index_select(0, cj), xm[:, f : 2 * f].unsqueeze(1))
                v_m.index_add_(0, ci, dv)
            uv = torch.matmul(v_m, self.upd_uvt[layer])
            uu = uv[:, :, :f]
            vv = uv[:, :, f:]
            vn = torch.sqrt((vv * vv).sum(1) + 1e-8)
            hu = torch.addmm(self.upd_b1[layer], torch.cat([s_m, vn], 1), self.upd_w1t[layer])
            av = torch.addmm(self.upd_b2[layer], torch.nn.functional.silu(hu), self.upd_w2t[layer])
            dot = (uu * vv).sum(1)
            s = s_m + av[:, f : 2 * f] * dot + av[:, 2 * f :]
            if layer < layers - 1:
                v = v_m + av[:, :f].unsqueeze(1) * uu
            saved_upd.append((uu, vv, vn, hu, av, dot))

        hr = torch.addmm(self.ro_b1, s, self.ro_w1t)
        out = torch.mv(torch.nn.functional.silu(hr), self.ro_w2) + self.ro_b2
        e_atom = out * self.scale + self.self_energy.index_select(0, species)
        energy = torch.zeros(num_structures, dtype=pos.dtype, device=pos.device)
        energy = energy.index_add(0, batch, e_atom)

        # Reverse pass: dE/ds, dE/dv layer by layer; dE/dd and dE/du per pair.
        gs = torch.mm(_silu_grad(hr) * (self.ro_w2 * self.scale), self.ro_w1)
        gv = torch.zeros(n, 3, f, dtype=pos.dtype, device=pos.device)
        g_d = torch.zeros(npairs, dtype=pos.dtype, device=pos.device)
        g_u = torch.zeros(npairs, 3, dtype=pos.dtype, device=pos.device)
        for layer in range(layers - 1, -1, -1):
            uu, vv, vn, hu, av, dot = saved_upd[layer]
            g_dot = gs * av[:, f : 2 * f]
            g_uu = g_dot.unsqueeze(1) * vv
            g_vv = g_dot.unsqueeze(1) * uu
            if layer == layers - 1:
                g_avv = torch.zeros_like(g_dot)
            else:
                g_avv = (gv * uu).sum(1)
                g_uu = torch.addcmul(g_uu, gv, av[:, :f].unsqueeze(1))
            g_av = torch.cat([g_avv, gs * dot, gs], 1)
            g_in = torch.mm(torch.mm(g_av, self.upd_w2[layer]) * _silu_grad(hu), self.upd_w1[layer])
            gs_m = gs + g_in[:, :f]
            g_vv = torch.addcmul(g_vv, (g_in[:, f:] / vn).unsqueeze(1), vv)
            gv_m = gv + torch.matmul(torch.cat([g_uu, g_vv], 2), self.upd_uv[layer])
            phi = saved_phi[layer]
            v_in = saved_v_in[layer]
            a = self.filt_a[layer]
            gphi = torch.zeros(n, 3 * f, dtype=pos.dtype, device=pos.device)
            gv_in = gv_m.clone()
            for c0 in range(0, npairs, chunk):
                ci = pi[c0 : c0 + chunk]
                cj = pj[c0 : c0 + chunk]
                cu = pu[c0 : c0 + chunk]
                w = torch.mm(pg[c0 : c0 + chunk], a)
                phij = phi.index_select(0, cj)
                xm = phij * w
                gdv = gv_m.index_select(0, ci)
                g_xs = gs_m.index_select(0, ci)
                g_xvs = (gdv * cu.unsqueeze(2)).sum(1)
                g_u[c0 : c0 + chunk] += (gdv * xm[:, 2 * f :].unsqueeze(1)).sum(2)
                if layer > 0:
                    g_xvv = (gdv * v_in.index_select(0, cj)).sum(1)
                    gv_in.index_add_(0, cj, gdv * xm[:, f : 2 * f].unsqueeze(1))
                else:
                    g_xvv = torch.zeros_like(g_xs)
                g_x = torch.cat([g_xs, g_xvv, g_xvs], 1)
                if layer > 0:
                    gphi.index_add_(0, cj, g_x * w)
                g_g = torch.mm(g_x * phij, a.t())
                g_d[c0 : c0 + chunk] += (g_g * pdg[c0 : c0 + chunk]).sum(1)
            gs = gs_m
            gv = gv_in
            if layer > 0:
                gs = gs + torch.mm(
                    torch.mm(gphi, self.phi_w2[layer]) * _silu_grad(saved_h1[layer]),
                    self.phi_w1[layer],
                )

        # Fold both directions back onto the half list, then vectors -> positions and cell.
        gd_h = g_d[:h] + g_d[h:]
        gu_h = g_u[:h] - g_u[h:]
        gvec = gd_h.unsqueeze(1) * u + (gu_h - (gu_h * u).sum(1, keepdim=True) * u) / d.unsqueeze(1)
        gpos = torch.zeros(n, 3, dtype=pos.dtype, device=pos.device)
        gpos = gpos.index_add(0, j, gvec).index_add(0, i, -gvec)
        gcell = torch.zeros(num_structures, 3, 3, dtype=pos.dtype, device=pos.device)
        if periodic and need_cell_grad:
            outer = shifts.unsqueeze(2) * gvec.unsqueeze(1)
            gcell = gcell.index_add(0, batch.index_select(0, i), outer)
        return energy, gpos, gcell

    def _energy(
        self,
        numbers: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
    ) -> Tensor:
        """Energies (B,) whose autograd gradient is the analytic one (see the module docstring)."""
        species = element_indices(numbers, self.species_map, self.elements)
        pos = positions.to(self.float_dtype())
        c = cell.to(pos.dtype)
        periodic = bool(pbc.any())
        nb = int(cell.shape[0])
        if self.use_kernel:
            energy = self._energy_kernel(species, pos, c, batch, nb, i, j, shifts, periodic)
        else:
            energy = self._energy_torch(species, pos, c, batch, nb, i, j, shifts, periodic)
        return energy

    def _energy_torch(
        self,
        species: Tensor,
        pos: Tensor,
        cell: Tensor,
        batch: Tensor,
        num_structures: int,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
        periodic: bool,
    ) -> Tensor:
        """Energies (B,) from _evaluate_torch, carrying its gradients as a surrogate."""
        need_cell_grad = cell.requires_grad
        # Copies made under no_grad, not .detach(): torch.jit.freeze (which openmm-torch applies
        # to every TorchForce module) deletes detach calls, and pos - pos is no surrogate.
        with torch.no_grad():
            p = pos.clone()
            cd = cell.clone()
            energy, gpos, gcell = self._evaluate_torch(
                species,
                p,
                cd,
                batch,
                num_structures,
                i,
                j,
                shifts.to(p.dtype),
                periodic,
                need_cell_grad,
            )
        # First-order surrogate: the added terms are exact zeros (value E), their gradients are
        # dE/dR and dE/dcell.
        if pos.requires_grad:
            dpos = ((pos - p) * gpos).sum(1)
            energy = energy.index_add(0, batch, dpos)
        if need_cell_grad:
            energy = energy + ((cell - cd) * gcell).sum((1, 2))
        return energy

    @torch.jit.export
    def energy_from_pairs(
        self,
        numbers: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
    ) -> Tensor:
        """Total energy (eV) per structure from a half pair list (pairs beyond cutoff ignored)."""
        return self._energy(numbers, positions, cell, pbc, batch, i, j, shifts)

    @torch.jit.export
    def pairs(
        self, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The half pair list forward uses: all pairs of one small molecule (the evaluation drops
        those beyond the cutoff), else the neighbor list within the cutoff."""
        n = positions.shape[0]
        if cell.shape[0] == 1 and n <= 64 and not bool(pbc.any()):
            # One small molecule: every pair, in one op (no neighbor-list set-up).
            ij = torch.triu_indices(n, n, 1, device=positions.device)
            shifts = torch.zeros(ij.shape[1], 3, dtype=torch.long, device=positions.device)
            return ij[0], ij[1], shifts
        pos = positions.detach().to(self.float_dtype())
        return neighbor_pairs(pos, cell.detach().to(pos.dtype), pbc, batch, self.cutoff)

    @torch.jit.export
    def energy_and_gradients(
        self,
        numbers: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
        cell_gradient: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Energies (B,) eV, dE/dpositions (N, 3), dE/dcell (B, 3, 3) and the shortest distance
        in the pair list (0-dim float64 A; inf without pairs), computed directly, not by autograd.

        The forces of a step for the cost of the evaluation alone (no graph, no backward call);
        compute_properties, MLCalculator and the OpenMM modules take this path. dE/dcell is
        zeros unless cell_gradient and the structures are periodic. Constants, not differentiable.
        """
        if self.use_kernel:
            return self._gradients_kernel(
                numbers, positions, cell, pbc, batch, i, j, shifts, cell_gradient
            )
        species = element_indices(numbers, self.species_map, self.elements)
        pos = positions.detach().to(self.float_dtype())
        c = cell.detach().to(pos.dtype)
        periodic = bool(pbc.any())
        nb = int(cell.shape[0])
        return self._gradients_torch(
            species, pos, c, batch, nb, i, j, shifts, periodic, cell_gradient
        )

    def _gradients_torch(
        self,
        species: Tensor,
        pos: Tensor,
        cell: Tensor,
        batch: Tensor,
        num_structures: int,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
        periodic: bool,
        cell_gradient: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """energy_and_gradients from the TorchScript evaluation."""
        with torch.no_grad():
            sh = shifts.to(pos.dtype)
            energy, gpos, gcell = self._evaluate_torch(
                species,
                pos,
                cell,
                batch,
                num_structures,
                i,
                j,
                sh,
                periodic,
                cell_gradient and periodic,
            )
            vec = pos.index_select(0, j) - pos.index_select(0, i)
            if periodic:
                image = torch.bmm(sh.unsqueeze(1), cell.index_select(0, batch.index_select(0, i)))
                vec = vec + image.squeeze(1)
            dmin = torch.full((), math.inf, dtype=torch.float64, device=pos.device)
            if i.shape[0] > 0:
                dmin = (vec * vec).sum(1).min().to(torch.float64).sqrt()
        return energy, gpos, gcell, dmin

    def _gradients_kernel(
        self,
        numbers: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
        cell_gradient: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """energy_and_gradients from the fused C++ kernel."""
        raise RuntimeError("the C++ kernel is not loaded; use backend='torch'")

    def forward(
        self, numbers: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor
    ) -> Tensor:
        """Total energy (eV) of each of the B structures in the batch."""
        i, j, shifts = self.pairs(positions, cell, pbc, batch)
        return self._energy(numbers, positions, cell, pbc, batch, i, j, shifts)


class _KernelFastPaiNN(FastPaiNN):
    """FastPaiNN whose evaluation is the fused C++ kernel (scripted only once it is loaded)."""

    def _energy_kernel(
        self,
        species: Tensor,
        pos: Tensor,
        cell: Tensor,
        batch: Tensor,
        num_structures: int,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
        periodic: bool,
    ) -> Tensor:
        """Energies (B,) from the fused C++ kernel; its autograd node returns the forces."""
        return torch.ops.mlsim_fast.painn_energy(
            species,
            pos,
            cell,
            batch,
            i,
            j,
            shifts,
            periodic,
            num_structures,
            self.kernel_weights(),
            self.cutoff,
        )

    def _gradients_kernel(
        self,
        numbers: Tensor,
        positions: Tensor,
        cell: Tensor,
        pbc: Tensor,
        batch: Tensor,
        i: Tensor,
        j: Tensor,
        shifts: Tensor,
        cell_gradient: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """energy_and_gradients from the fused C++ kernel (one call, no autograd node)."""
        # Element lookup, dtype casts and the periodic flag happen inside the op: each tensor op
        # here would cost a few microseconds of TorchScript dispatch.
        return torch.ops.mlsim_fast.painn_energy_grad(
            numbers,
            positions,
            cell,
            pbc,
            batch,
            i,
            j,
            shifts,
            self.kernel_weights(),
            self.species_map,
            self.cutoff,
            cell_gradient,
        )


def _is_fast(model: nn.Module) -> bool:
    """Whether `model` is a FastPaiNN (eager or scripted, either backend)."""
    name = getattr(model, "original_name", type(model).__name__)
    return name in ("FastPaiNN", "_KernelFastPaiNN")


def uses_kernel(model: nn.Module) -> bool:
    """Whether `model` (a FastPaiNN, an ensemble of them, any mlsim model) calls the C++ kernel."""
    return any(_is_fast(m) and bool(m.use_kernel) for m in model.modules())


def without_kernel(model: nn.Module) -> nn.Module:
    """An eager copy of a FastPaiNN (either backend, scripted or not; or an ensemble with such
    members) on the TorchScript backend: the same tables and weights, so the same numbers to
    rounding, and no custom op, so a file of it loads in any host with torch. Other models come
    back as they are."""
    from mlsim.models._ensemble import Ensemble

    if not any(_is_fast(m) for m in model.modules()):
        return model
    if not _is_fast(model):
        if not hasattr(model, "members"):
            raise TypeError(
                f"without_kernel: {type(model).__name__} holds FastPaiNN modules but is not an "
                "ensemble of them"
            )
        return Ensemble([without_kernel(m) for m in model.members]).eval()
    twin = FastPaiNN.__new__(FastPaiNN)
    nn.Module.__init__(twin)
    for name in ("cutoff", "features", "num_layers", "knots", "chunk"):
        setattr(twin, name, getattr(model, name))
    twin.elements = [int(z) for z in model.elements]
    twin.use_kernel = False
    for name, t in model.named_buffers():
        twin.register_buffer(name, t.detach().clone())
    return twin.eval()


def _eager_painn(model: nn.Module) -> nn.Module:
    """An eager PaiNNModel with the weights of `model` (eager, or scripted from a model.pt)."""
    from mlsim.models._painn import PaiNNModel

    if isinstance(model, PaiNNModel):
        return model
    name = getattr(model, "original_name", type(model).__name__)
    if name != "PaiNNModel":
        raise TypeError(
            f"optimize_for_inference supports PaiNN models and ensembles of them, got {name}"
        )
    state = model.state_dict()
    filt = sorted(k for k in state if k.startswith("messages.") and k.endswith(".filt.weight"))
    emb = state.get("embedding.weight")
    if emb is None or not filt:
        raise TypeError("optimize_for_inference: the scripted model does not look like a PaiNN")
    eager = PaiNNModel(
        [int(z) for z in model.elements],
        cutoff=float(model.cutoff),
        features=int(emb.shape[1]),
        num_interactions=len(filt),
        num_rbf=int(state[filt[0]].shape[1]),
    ).to(emb.dtype)
    eager.load_state_dict(state)
    return eager.eval()


def optimize_for_inference(
    model: nn.Module | str | os.PathLike,
    backend: str = "auto",
    knots: int = DEFAULT_KNOTS,
    chunk: int = DEFAULT_CHUNK,
    script: bool = True,
) -> nn.Module:
    """A fast inference copy of a trained PaiNN (or ensemble): same energy, analytic forces.

    backend: "cpp" (fused C++ kernel, CPU; RuntimeError if it cannot be built), "torch"
    (TorchScript only: no compiler, no custom op, any device), "auto" (cpp for a CPU model if it
    builds, else torch). knots: spline intervals of the radial filters on [0, cutoff]; chunk:
    pairs per chunk (torch backend). The result is scripted (script=True) for ASE,
    compute_properties and OpenMM TorchForce, on the model's device; it cannot be trained (no
    second derivatives).
    """
    from mlsim.models._ensemble import Ensemble
    from mlsim.models._io import load_model

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if knots < 4 or chunk < 1:
        raise ValueError(f"need knots >= 4 and chunk >= 1, got knots={knots}, chunk={chunk}")
    if isinstance(model, str | os.PathLike):
        model = load_model(model)
    use_kernel = False
    tensors = list(model.parameters()) + list(model.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    on_cpu = device.type == "cpu"
    if backend == "cpp" and not on_cpu:
        raise ValueError("the fused C++ kernel runs on the CPU; use backend='torch' on a GPU")
    if backend != "torch" and on_cpu:
        use_kernel, why = kernel_available()
        if backend == "cpp" and not use_kernel:
            raise RuntimeError(f"the fused C++ kernel could not be built: {why}")
    name = getattr(model, "original_name", type(model).__name__)
    if isinstance(model, Ensemble) or name == "Ensemble":
        # children(): the ModuleList of an Ensemble loaded from a model.pt cannot be iterated.
        members: Sequence[nn.Module] = list(model.members.children())
        fast: nn.Module = Ensemble(
            [optimize_for_inference(m, backend, knots, chunk, script=False) for m in members]
        )
    else:
        cls = _KernelFastPaiNN if use_kernel else FastPaiNN
        # Tables are built on the CPU (in float64) from a copy; the result goes to the device.
        eager = _eager_painn(model if on_cpu else copy.deepcopy(model).cpu())
        fast = cls(eager, knots, chunk, use_kernel).to(device)
    fast = fast.eval()
    return torch.jit.script(fast) if script else fast
