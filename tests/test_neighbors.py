"""Neighbor list: C++ cell list vs a brute-force NumPy reference, ASE, and the torch ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlsim import _core
from mlsim.neighbors import neighbor_list, neighbor_list_batch_torch, neighbor_list_torch


def brute_force(positions, cutoff, cell, pbc, full=True):
    """All (i, j, S) with |R[j] - R[i] + S @ cell| < cutoff, by looping over enough images."""
    pos = np.asarray(positions, dtype=np.float64)
    n = len(pos)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if n == 0:
        return set()
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    wrap = np.zeros((n, 3), dtype=np.int64)
    reach = np.zeros(3, dtype=np.int64)
    if pbc.any():
        # Non-periodic rows (possibly zero) replaced by the orthogonal complement of periodic ones.
        aux = cell.copy()
        aux[~pbc] = np.linalg.svd(cell[pbc])[2][pbc.sum() :]
        frac = pos @ np.linalg.inv(aux)
        wrap[:, pbc] = np.floor(frac[:, pbc]).astype(np.int64)
        volume = abs(np.linalg.det(aux))
        for k in range(3):
            if pbc[k]:
                width = volume / np.linalg.norm(np.cross(aux[(k + 1) % 3], aux[(k + 2) % 3]))
                reach[k] = int(np.ceil(cutoff / width)) + 1
    wrapped = pos - wrap @ cell
    ranges = [np.arange(-r, r + 1) for r in reach]
    images = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T
    pairs = set()
    for t in images:
        d = wrapped[None, :, :] - wrapped[:, None, :] + t @ cell
        ii, jj = np.nonzero(np.einsum("ijk,ijk->ij", d, d) < cutoff * cutoff)
        for a, b in zip(ii.tolist(), jj.tolist()):
            if a == b and not t.any():
                continue
            s = tuple((t + wrap[a] - wrap[b]).tolist())
            if not full:
                if b < a or (a == b and s <= (0, 0, 0)):
                    continue
            pairs.add((a, b, *s))
    return pairs


def as_set(i, j, s):
    """Pair tuples (i, j, S0, S1, S2) from arrays; asserts no duplicates."""
    rows = np.column_stack([np.asarray(i), np.asarray(j), np.asarray(s)]).tolist()
    result = set(map(tuple, rows))
    assert len(result) == len(rows), "duplicate pairs"
    return result


def check_vectors(positions, cutoff, cell, i, j, s):
    """Every returned pair vector is shorter than the cutoff."""
    if len(i) == 0:
        return
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell)
    d = positions[j] - positions[i] + s @ cell
    assert np.all(np.linalg.norm(d, axis=1) < cutoff * (1 + 1e-12))


@st.composite
def systems(draw):
    """Random triclinic cell (possibly much smaller than the cutoff), pbc mask, atoms in/out of it."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(0, 40))
    pbc = np.array(draw(st.lists(st.booleans(), min_size=3, max_size=3)))
    lengths = rng.uniform(1.5, 8.0, 3)
    cell = np.diag(lengths) + rng.uniform(-0.4, 0.4, (3, 3)) * lengths[:, None]
    frac = rng.uniform(-0.3, 1.3, (n, 3))  # some atoms outside the cell
    positions = frac @ cell
    cutoff = draw(st.floats(0.5, 9.0))
    full = draw(st.booleans())
    return seed, positions, cell, pbc, cutoff, full


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(systems())
def test_matches_brute_force(system):
    seed, positions, cell, pbc, cutoff, full = system
    i, j, s = neighbor_list(positions, cutoff, cell, pbc, full=full)
    assert i.dtype == j.dtype == s.dtype == np.int64 and s.shape == (len(i), 3)
    got = as_set(i, j, s)
    want = brute_force(positions, cutoff, cell, pbc, full=full)
    assert got == want, f"seed={seed} pbc={pbc} cutoff={cutoff} full={full}"
    check_vectors(positions, cutoff, cell, i, j, s)
    assert np.all(np.diff(i) >= 0), "pairs are grouped by increasing i"


def _fcc(a, reps, rattle, seed):
    """Rattled fcc crystal: positions and cubic cell."""
    basis = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    grid = np.array(np.meshgrid(*[np.arange(reps)] * 3, indexing="ij")).reshape(3, -1).T
    pos = ((grid[:, None, :] + basis[None]).reshape(-1, 3)) * a
    pos += np.random.default_rng(seed).normal(0, rattle, pos.shape)
    return pos, np.eye(3) * a * reps


@pytest.mark.parametrize("cutoff", [2.0, 3.7, 6.0])
@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, True), (False, False, False)])
@pytest.mark.parametrize("seed", [0, 1])
def test_rotated_crystal_matches_brute_force(cutoff, pbc, seed):
    """Rotating a periodic system (cell and atoms together) leaves the pair set unchanged."""
    pos, cell = _fcc(3.6, 3, 0.1, seed)
    rng = np.random.default_rng(seed + 100)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = q * np.sign(np.diag(r))
    want = brute_force(pos, cutoff, cell, pbc)
    got = as_set(*neighbor_list(pos @ rot, cutoff, cell @ rot, pbc))
    assert got == want, f"seed={seed}"


def test_full_is_half_plus_reverse():
    pos, cell = _fcc(3.6, 3, 0.1, 3)
    full = as_set(*neighbor_list(pos, 5.0, cell, True, full=True))
    half = as_set(*neighbor_list(pos, 5.0, cell, True, full=False))
    mirrored = {(b, a, -s0, -s1, -s2) for a, b, s0, s1, s2 in half}
    assert len(half) * 2 == len(full)
    assert half | mirrored == full


@pytest.mark.parametrize("name", ["Cu", "NaCl", "H2O", "slab"])
def test_matches_ase(name):
    ase_build = pytest.importorskip("ase.build")
    from ase.neighborlist import neighbor_list as ase_nl

    if name == "Cu":
        atoms = ase_build.bulk("Cu", "fcc", a=3.6).repeat((2, 3, 2))  # primitive triclinic cells
    elif name == "NaCl":
        atoms = ase_build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
    elif name == "H2O":
        atoms = ase_build.molecule("H2O")
    else:
        atoms = ase_build.fcc111("Al", size=(2, 2, 3), vacuum=5.0)
    atoms.rattle(0.05, seed=1)
    for cutoff in (1.5, 4.0, 7.5):
        ai, aj, a_s = ase_nl("ijS", atoms, cutoff)
        pbc = atoms.pbc.copy()
        cell = atoms.cell.array if atoms.cell.rank == 3 or pbc.any() else None
        got = as_set(*neighbor_list(atoms.positions, cutoff, cell, pbc))
        assert got == as_set(ai, aj, a_s), f"{name} cutoff={cutoff}"


def test_edge_cases():
    empty = neighbor_list(np.zeros((0, 3)), 3.0)
    assert all(len(a) == 0 for a in empty) and empty[2].shape == (0, 3)
    i, j, s = neighbor_list(np.zeros((1, 3)), 3.0)
    assert len(i) == 0
    # One atom in a 2 A periodic cube with a 2.5 A cutoff sees its 6 nearest images.
    i, j, s = neighbor_list(np.zeros((1, 3)), 2.5, np.eye(3) * 2.0, True)
    assert len(i) == 6 and set(map(tuple, s.tolist())) == {
        (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)
    }  # fmt: skip
    # float32 input, atoms far outside the cell.
    pos, cell = _fcc(3.6, 2, 0.05, 5)
    shifted = pos + 37.3 * cell[0] - 11 * cell[2]
    a = as_set(*neighbor_list(pos.astype(np.float32), 3.0, cell, True))
    b = as_set(*neighbor_list(shifted, 3.0, cell, True))
    assert a == b == brute_force(pos, 3.0, cell, True)
    # Slab with a zero third vector and pbc only in-plane.
    cell2 = np.array([[4.0, 0, 0], [1.0, 4.0, 0], [0, 0, 0]])
    pos2 = np.random.default_rng(2).uniform(0, 4, (10, 3))
    pbc2 = (True, True, False)
    assert as_set(*neighbor_list(pos2, 3.0, cell2, pbc2)) == brute_force(pos2, 3.0, cell2, pbc2)
    # Output is deterministic, whatever the number of threads.
    big, big_cell = _fcc(3.6, 6, 0.1, 6)
    r1 = _core.neighbor_list(big, 5.0, big_cell, (True, True, True), True, 1)
    r2 = _core.neighbor_list(big, 5.0, big_cell, (True, True, True), True, 2)
    assert all(np.array_equal(x, y) for x, y in zip(r1, r2))
    # Sparse system without pbc (two clusters 1 km apart): bins are capped, pairs still exact.
    rng = np.random.default_rng(3)
    sparse = np.concatenate([rng.uniform(0, 3, (20, 3)), rng.uniform(0, 3, (20, 3)) + 1e4])
    assert as_set(*neighbor_list(sparse, 1.2)) == brute_force(sparse, 1.2, None, False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"positions": np.full((2, 3), np.nan)}, "NaN"),
        ({"positions": np.array([[0, 0, np.inf]])}, "NaN or infinite"),
        ({"cutoff": 0.0}, "cutoff"),
        ({"cutoff": -1.0}, "cutoff"),
        ({"cutoff": float("nan")}, "cutoff"),
        ({"positions": np.zeros((4, 2))}, "shape"),
        ({"positions": np.array(["a", "b", "c"]).reshape(1, 3)}, "dtype"),
        ({"cell": np.zeros((3, 3)), "pbc": True}, "singular"),
        ({"cell": np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1]]), "pbc": True}, "singular"),
        ({"cell": np.eye(2)}, "cell must have shape"),
        ({"pbc": True}, "cell is None"),
        ({"pbc": [True, False]}, "pbc"),
    ],
)
def test_bad_input(kwargs, message):
    args = {"positions": np.zeros((3, 3)), "cutoff": 2.0, "cell": None, "pbc": False}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        neighbor_list(**args)


def test_core_validates_without_python_checks():
    with pytest.raises(ValueError, match="singular"):
        _core.neighbor_list(np.zeros((2, 3)), 1.0, np.zeros((3, 3)), (True, False, False))
    with pytest.raises(ValueError, match="NaN"):
        _core.neighbor_list(np.full((2, 3), np.nan), 1.0, None, (False, False, False))
    with pytest.raises(ValueError, match="positions must have shape"):
        _core.neighbor_list(np.zeros((2, 4)), 1.0, None, (False, False, False))


# ---- torch ops -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_op_matches_numpy(dtype):
    pos, cell = _fcc(3.6, 3, 0.1, 7)
    pbc = (True, False, True)
    want = neighbor_list(pos, 4.5, cell, pbc)
    got = torch.ops.mlsim.neighbor_list(
        torch.tensor(pos, dtype=dtype),
        torch.tensor(cell, dtype=dtype),
        torch.tensor(pbc),
        4.5,
        True,
    )
    assert all(t.dtype == torch.int64 for t in got)
    if dtype == torch.float64:
        assert all(np.array_equal(a, b.numpy()) for a, b in zip(want, got))
    else:  # float32 rounding may move pairs sitting at the cutoff; none do here
        assert as_set(*[t.numpy() for t in got]) == as_set(*want)


def test_torch_op_in_torchscript_and_gradient():
    @torch.jit.script
    def energy(pos: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
        i, j, s = torch.ops.mlsim.neighbor_list(pos, cell, pbc, 3.0, True)
        d = pos[j] - pos[i] + s.to(pos.dtype) @ cell
        r = torch.linalg.norm(d, dim=1)
        return (0.5 * (3.0 - r) ** 2).sum()

    pos_np, cell_np = _fcc(3.6, 2, 0.1, 8)
    pos = torch.tensor(pos_np, requires_grad=True)
    cell = torch.tensor(cell_np)
    pbc = torch.tensor([True, True, True])
    e = energy(pos, cell, pbc)
    (grad,) = torch.autograd.grad(e, pos)
    # Central finite difference on one coordinate.
    h = 1e-5
    for atom, k in [(0, 0), (5, 2)]:
        p1, p2 = pos.detach().clone(), pos.detach().clone()
        p1[atom, k] += h
        p2[atom, k] -= h
        fd = (energy(p1, cell, pbc) - energy(p2, cell, pbc)) / (2 * h)
        assert abs(fd.item() - grad[atom, k].item()) < 1e-6


def test_torch_wrappers_and_batch():
    rng = np.random.default_rng(11)
    structures = []
    for b in range(4):
        n = int(rng.integers(0, 12))
        cell = np.diag(rng.uniform(3, 6, 3)) + rng.uniform(-0.5, 0.5, (3, 3))
        pbc = rng.random(3) < 0.5 if b else np.array([False] * 3)
        structures.append((rng.uniform(0, 1, (n, 3)) @ cell, cell, pbc))
    ptr = np.cumsum([0] + [len(s[0]) for s in structures])
    pos = torch.tensor(np.concatenate([s[0] for s in structures]))
    cells = torch.tensor(np.stack([s[1] for s in structures]))
    pbcs = torch.tensor(np.stack([s[2] for s in structures]))
    for full in (True, False):
        i, j, s = neighbor_list_batch_torch(pos, cells, pbcs, torch.tensor(ptr), 3.5, full)
        want = set()
        for b, (p, c, pb) in enumerate(structures):
            ref = brute_force(p, 3.5, c, pb, full=full)
            want |= {(a + ptr[b], q + ptr[b], *sh) for a, q, *sh in ref}
            single = neighbor_list_torch(
                torch.tensor(p), 3.5, torch.tensor(c), torch.tensor(pb), full
            )
            assert as_set(*[t.numpy() for t in single]) == ref
        assert as_set(i.numpy(), j.numpy(), s.numpy()) == want
    # No cell, no pbc through the wrapper.
    i, j, s = neighbor_list_torch(torch.zeros((2, 3)), 1.0)
    assert len(i) == 2 and not s.any()


def test_torch_op_bad_input():
    pos = torch.zeros((3, 3))
    cell = torch.eye(3)
    pbc = torch.tensor([True, True, True])
    with pytest.raises(ValueError, match="cutoff"):
        torch.ops.mlsim.neighbor_list(pos, cell, pbc, -1.0, True)
    with pytest.raises(ValueError, match="positions must have shape"):
        torch.ops.mlsim.neighbor_list(torch.zeros(3), cell, pbc, 1.0, True)
    with pytest.raises(ValueError, match="dtype"):
        torch.ops.mlsim.neighbor_list(pos, cell.double(), pbc, 1.0, True)
    with pytest.raises(ValueError, match="pbc"):
        torch.ops.mlsim.neighbor_list(pos, cell, pbc.int(), 1.0, True)
    with pytest.raises(ValueError, match="singular"):
        torch.ops.mlsim.neighbor_list(pos, torch.zeros((3, 3)), pbc, 1.0, True)
    with pytest.raises(ValueError, match="ptr"):
        torch.ops.mlsim.neighbor_list_batch(
            pos, cell[None], pbc[None], torch.tensor([0, 2]), 1.0, True
        )


@pytest.mark.skipif(
    not (torch.cuda.is_available() and _core.cuda_built()),
    reason="needs a GPU and an extension built with the CUDA kernels",
)
@pytest.mark.parametrize("pbc", [(True, True, True), (True, False, False), (False, False, False)])
@pytest.mark.parametrize("full", [True, False])
def test_cuda_op_matches_cpu(pbc, full):
    pos, cell = _fcc(3.6, 4, 0.1, 12)
    pos = pos + np.array([1.0, -7.0, 30.0])  # some atoms outside the cell
    args = (torch.tensor(cell), torch.tensor(pbc), 4.2, full)
    want = torch.ops.mlsim.neighbor_list(torch.tensor(pos), *args)
    got = torch.ops.mlsim.neighbor_list(
        torch.tensor(pos, device="cuda"), args[0].cuda(), args[1].cuda(), *args[2:]
    )
    assert all(t.device.type == "cuda" for t in got)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(want, got))
    # Tiny periodic cell (many images) and the batched op.
    small = torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.1, 0.9]], dtype=torch.float64)
    cell2 = torch.eye(3, dtype=torch.float64) * 1.7
    pbc2 = torch.tensor(pbc)
    want = torch.ops.mlsim.neighbor_list(small, cell2, pbc2, 3.0, full)
    got = torch.ops.mlsim.neighbor_list(small.cuda(), cell2.cuda(), pbc2.cuda(), 3.0, full)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(want, got))
    ptr = torch.tensor([0, 2, 2, 4])
    pos_b = torch.cat([small, small + 0.3])
    cells, pbcs = cell2.expand(3, 3, 3).contiguous(), pbc2.expand(3, 3).contiguous()
    want = torch.ops.mlsim.neighbor_list_batch(pos_b, cells, pbcs, ptr, 3.0, full)
    got = torch.ops.mlsim.neighbor_list_batch(
        pos_b.cuda(), cells.cuda(), pbcs.cuda(), ptr.cuda(), 3.0, full
    )
    assert all(torch.equal(a, b.cpu()) for a, b in zip(want, got))


# ---- memory limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_side", "cutoff", "pbc"),
    [(6, 1000.0, True), (6, 1e300, True), (6, 1e8, (True, False, True))],
)
def test_absurd_cutoff_is_refused_up_front(n_side, cutoff, pbc):
    """Lists that cannot fit (density x cutoff sphere x N beyond the memory available) raise
    MemoryError naming the estimated pair count at once, before any large allocation."""
    import time

    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(n_side)
    start = time.perf_counter()
    for call in (
        lambda: neighbor_list(atoms.positions, cutoff, atoms.cell.array, pbc),
        lambda: neighbor_list_torch(
            torch.tensor(atoms.positions),
            cutoff,
            torch.tensor(atoms.cell.array),
            torch.tensor(np.broadcast_to(pbc, (3,)).copy()),
        ),
    ):
        with pytest.raises(MemoryError, match=r"pairs estimated for 864 atoms .*GB of memory"):
            call()
    assert time.perf_counter() - start < 5.0


def test_absurd_atom_count_is_refused_up_front():
    """200,000 atoms within 20 A of each other (4e10 pairs, > 1 TB) are refused up front, also
    by the batched op, which names the structure."""
    pos = np.random.default_rng(0).uniform(0.0, 10.0, (200_000, 3))
    with pytest.raises(MemoryError, match=r"e\+10 pairs estimated for 200000 atoms"):
        neighbor_list(pos, 20.0)
    pt = torch.from_numpy(pos)
    with pytest.raises(MemoryError, match=r"structure 1: neighbor list too large"):
        neighbor_list_batch_torch(
            pt,
            torch.zeros(2, 3, 3, dtype=torch.float64),
            torch.zeros(2, 3, dtype=torch.bool),
            torch.tensor([0, 10, len(pos)]),
            20.0,
        )


def test_large_cutoffs_that_fit_are_not_refused():
    """No false refusal: one atom in a 1 A periodic cell with a 20 A cutoff (33,500 images), and
    a molecule with a 1e12 A cutoff (every pair, no overflow)."""
    i, j, s = neighbor_list(np.zeros((1, 3)), 20.0, np.eye(3), True)
    assert abs(len(i) - 4.0 / 3.0 * np.pi * 20.0**3) < 0.01 * len(i)
    check_vectors(np.zeros((1, 3)), 20.0, np.eye(3), i, j, s)
    pos = np.random.default_rng(1).uniform(0, 3, (7, 3))
    i, j, s = neighbor_list(pos, 1e12)
    assert len(i) == 7 * 6 and not s.any()


def test_numpy_core_and_op_library_are_separate():
    """mlsim._core (NumPy) works in a process where torch cannot be imported, and the torch ops
    come from the op library that mlsim.neighbors.ops_library_path names."""
    import subprocess
    import sys

    from mlsim.neighbors import ops_library_path

    code = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch now raises ImportError
        "import numpy as np\n"
        "from mlsim import _core\n"
        "i, j, s = _core.neighbor_list(np.array([[0.0, 0, 0], [1.0, 0, 0]]), 1.5, None, "
        "(False, False, False), True, 1)\n"
        "print(sorted(zip(i.tolist(), j.tolist())))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[(0, 1), (1, 0)]"
    assert ops_library_path() in torch.ops.loaded_libraries
