"""mlsim.models.optimize_for_inference: same energies as the trained PaiNN, exact forces, every path.

Reference hierarchy: the original model (autograd) -> the TorchScript backend (spline filters,
hand-written reverse pass) -> the fused C++ kernel. The spline is the only approximation, so the
first comparison is at the spline's accuracy and the second at float64 rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mlsim.models import (
    Ensemble,
    PaiNNModel,
    _fast,
    build_model,
    compute_properties,
    load_model,
    optimize_for_inference,
)
from mlsim.models._fast import kernel_available, spline_error
from mlsim.models._uncertainty import committee_properties

SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "ethanol" / "model.pt"
KERNEL, WHY = kernel_available()
needs_kernel = pytest.mark.skipif(not KERNEL, reason=f"C++ kernel not buildable here: {WHY}")
BACKENDS = ["torch", pytest.param("cpp", marks=needs_kernel)]


def _painn(elements: list[int], features: int = 16, layers: int = 3, seed: int = 0, **hp):
    """A random-weight float64 PaiNN (16 features: the kernel's runtime-width code path)."""
    torch.manual_seed(seed)
    spec = {
        "architecture": "painn",
        "elements": elements,
        "self_energies": {z: -0.1 * z for z in elements},
        "hyperparameters": {"features": features, "num_interactions": layers, **hp},
    }
    return build_model(spec).double().eval()


def _shipped() -> torch.nn.Module:
    """The shipped ethanol model (32 features: the kernel's compiled-width path), as float64."""
    if not SHIPPED.is_file():
        pytest.skip("examples/ethanol/model.pt is not present")
    return _fast._eager_painn(load_model(SHIPPED)).double()


def _inputs(atoms_list, dtype=torch.float64) -> tuple[torch.Tensor, ...]:
    """Batched model inputs for ASE Atoms objects."""
    numbers = torch.tensor(np.concatenate([a.numbers for a in atoms_list]), dtype=torch.long)
    pos = torch.tensor(np.concatenate([a.positions for a in atoms_list]), dtype=dtype)
    cell = torch.tensor(np.stack([a.cell.array for a in atoms_list]), dtype=dtype)
    pbc = torch.tensor(np.stack([a.pbc for a in atoms_list]))
    batch = torch.cat(
        [torch.full((len(a),), k, dtype=torch.long) for k, a in enumerate(atoms_list)]
    )
    return numbers, pos, cell, pbc, batch


def _ethanol(seed: int = 0):
    """Ethanol, randomly distorted so that no symmetry hides an error."""
    a = molecule("CH3CH2OH")
    a.positions += np.random.default_rng(seed).normal(scale=0.08, size=a.positions.shape)
    return a


def _water_box(seed: int = 0):
    """A small periodic box of water-like H/O/C atoms (self-images within the cutoff)."""
    rng = np.random.default_rng(seed)
    a = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))
    a.set_chemical_symbols(["O", "H", "H", "C"] * 2)
    a.positions += rng.normal(scale=0.1, size=a.positions.shape)
    a.set_cell(a.cell.array + np.array([[0, 0.2, 0], [0.1, 0, 0], [0, 0, 0.3]]), scale_atoms=True)
    return a


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


def _network_energy(model, numbers) -> torch.Tensor:
    """Sum of the element self energies (subtracted to compare the network's part)."""
    return model.atomic_shift.self_energy[model.element_index.species_map[numbers]].sum()


def test_spline_reproduces_the_filters_and_default_is_accurate() -> None:
    """The quintic filter tables are within 1e-9 (values) and 1e-7 (slopes) of the network."""
    err = spline_error(_shipped())
    assert err["value"] < 1e-9 and err["derivative"] < 1e-7
    coarse = spline_error(_shipped(), knots=64)
    assert coarse["derivative"] > 10 * err["derivative"]  # the error does fall with the spacing


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["shipped", "random"])
def test_matches_original_model_float64(backend: str, which: str) -> None:
    """Energies within 1e-9 relative (network part) and forces, stress within 1e-6 of max |F|."""
    model = _shipped() if which == "shipped" else _painn([1, 6, 8])
    fast = optimize_for_inference(model, backend=backend)
    for atoms, stress in [([_ethanol(1)], False), ([_water_box()], True)]:
        args = _inputs(atoms)
        ref = compute_properties(model, *args, stress=stress)
        out = compute_properties(fast, *args, stress=stress)
        e_net = float(ref["energy"].detach().sum() - _network_energy(model, args[0]))
        de = float((out["energy"] - ref["energy"]).detach().abs().sum())
        assert de < 1e-9 * abs(e_net) + 1e-12
        assert _max_rel(out["forces"], ref["forces"]) < 1e-6
        if stress:
            assert _max_rel(out["stress"], ref["stress"]) < 1e-6


@needs_kernel
@pytest.mark.parametrize("features", [16, 32])
def test_kernel_equals_torch_backend_to_rounding(features: int) -> None:
    """The C++ kernel computes the TorchScript backend's numbers (float64: 1e-12) for batches of
    molecules and periodic cells with self-images: energies, forces and stress."""
    model = _painn([1, 6, 8], features=features, layers=2, seed=features)
    ref = optimize_for_inference(model, backend="torch")
    fast = optimize_for_inference(model, backend="cpp")
    for batch, stress in [
        ([_water_box(1), _ethanol(2), _water_box(2)], False),
        ([_water_box(3), _water_box(4)], True),
    ]:
        args = _inputs(batch)
        a = compute_properties(ref, *args, stress=stress)
        b = compute_properties(fast, *args, stress=stress)
        torch.testing.assert_close(b["energy"], a["energy"], rtol=1e-13, atol=1e-12)
        assert _max_rel(b["forces"], a["forces"]) < 1e-12
        if stress:
            assert _max_rel(b["stress"], a["stress"]) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_forces_and_stress_are_exact_gradients_of_the_fast_energy(backend: str) -> None:
    """Central differences of the fast model's own energy (energy conservation in MD)."""
    model = _painn([1, 6, 8], features=32, layers=2, seed=3)
    fast = optimize_for_inference(model, backend=backend)
    atoms = _water_box(3)
    numbers, pos, cell, pbc, batch = _inputs([atoms])
    out = compute_properties(fast, numbers, pos, cell, pbc, batch, stress=True)
    h = 1e-5
    for atom, comp in [(0, 0), (3, 1), (5, 2), (7, 0)]:
        plus, minus = pos.clone(), pos.clone()
        plus[atom, comp] += h
        minus[atom, comp] -= h
        de = (fast(numbers, plus, cell, pbc, batch) - fast(numbers, minus, cell, pbc, batch)) / (
            2 * h
        )
        assert out["forces"][atom, comp].item() == pytest.approx(-de.item(), rel=1e-6, abs=1e-8)
    vol = abs(np.linalg.det(atoms.cell.array))
    for a, b in [(0, 0), (1, 2), (2, 1)]:
        es = []
        for sign in (1, -1):
            eps = torch.eye(3, dtype=torch.float64)
            eps[a, b] += sign * h
            es.append(fast(numbers, pos @ eps, cell @ eps, pbc, batch).item())
        expect = (es[0] - es[1]) / (2 * h) / vol
        assert out["stress"][0, a, b].item() == pytest.approx(expect, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_precomputed_pairs_with_skin_and_no_pairs(backend: str) -> None:
    """energy_from_pairs ignores pairs beyond the cutoff; isolated atoms give shift + readout."""
    from mlsim.neighbors import neighbor_list

    model = _painn([1, 6, 8], cutoff=4.0)
    fast = optimize_for_inference(model, backend=backend)
    atoms = _water_box(4)
    args = _inputs([atoms])
    i, j, s = neighbor_list(atoms.positions, 5.0, atoms.cell.array, atoms.pbc, full=False)
    pairs = tuple(torch.as_tensor(x, dtype=torch.long) for x in (i, j, s))
    ref = compute_properties(model, *args)
    out = compute_properties(fast, *args, pairs=pairs)
    assert _max_rel(out["forces"], ref["forces"]) < 1e-6
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-12, atol=1e-10)
    far = _inputs([molecule("H2O")])
    far = (far[0], far[1] * 10.0, *far[2:])  # 10 A apart: beyond the 4 A cutoff
    ref = compute_properties(model, *far)
    out = compute_properties(fast, *far)
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-12, atol=1e-12)
    assert float(out["forces"].abs().max()) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_deviation_is_rounding(backend: str) -> None:
    """In float32 the fast model differs from the original by float32 rounding only."""
    model = _shipped().float()
    fast = optimize_for_inference(model, backend=backend)
    args = _inputs([_ethanol(5), _water_box(5)], dtype=torch.float32)
    ref = compute_properties(model, *args)
    out = compute_properties(fast, *args)
    assert out["energy"].dtype == torch.float32
    assert _max_rel(out["forces"], ref["forces"]) < 2e-5
    assert float((out["energy"] - ref["energy"]).detach().abs().max()) < 2e-3  # |E| ~ 1e3 eV


def test_loaded_model_file_ensemble_and_ase_paths() -> None:
    """A model.pt, an ensemble (committee spread) and MLCalculator(fast=True) give the same
    numbers as the original model."""
    from mlsim.ase import MLCalculator

    if not SHIPPED.is_file():
        pytest.skip("examples/ethanol/model.pt is not present")
    original = load_model(SHIPPED)
    fast = optimize_for_inference(SHIPPED)
    assert fast.elements == original.elements and fast.cutoff == original.cutoff
    atoms = _ethanol(6)
    ref = atoms.copy()
    ref.calc = MLCalculator(original)
    got = atoms.copy()
    got.calc = MLCalculator(SHIPPED, fast=True)
    assert got.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=2e-4)
    np.testing.assert_allclose(got.get_forces(), ref.get_forces(), atol=1e-4)

    members = [_painn([1, 6, 8], seed=k) for k in range(3)]
    ens = Ensemble(members).double()
    fast_ens = optimize_for_inference(ens)  # the kernel where it builds, else TorchScript
    args = _inputs([_ethanol(7)])
    a = committee_properties(ens, *args)
    b = committee_properties(fast_ens, *args)
    for key in ("energy", "forces", "energy_std", "forces_std"):
        assert _max_rel(b[key], a[key]) < 1e-6, key


@needs_kernel
def test_survives_torch_jit_freeze_as_openmm_torch_applies_it() -> None:
    """openmm-torch freezes TorchForce modules, which deletes .detach(): forces must survive."""
    from mlsim.openmm._module import OpenMMEnergyForces

    model = _painn([1, 6, 8], features=32, layers=2)
    atoms = _ethanol(8)
    pos = torch.tensor(atoms.positions / 10.0)
    ref = torch.jit.script(OpenMMEnergyForces(model, atoms.numbers))
    for backend in ("torch", "cpp"):
        fast = optimize_for_inference(model, backend=backend)
        frozen = torch.jit.freeze(torch.jit.script(OpenMMEnergyForces(fast, atoms.numbers)).eval())
        for _ in range(3):  # the profiling executor optimises after the first calls
            e0, f0 = ref(pos)
            e1, f1 = frozen(pos)
            assert float(e1.detach()) == pytest.approx(float(e0.detach()), abs=1e-8)
            assert _max_rel(f1, f0) < 1e-6


def test_scripted_save_load_and_bad_inputs(tmp_path) -> None:
    """The fast model saves and loads as TorchScript; unknown elements, non-PaiNN models and bad
    options fail with clear errors."""
    model = _painn([1, 8])
    fast = optimize_for_inference(model, backend="torch")
    path = tmp_path / "fast.pt"
    torch.jit.save(fast, str(path))
    back = torch.jit.load(str(path))
    args = _inputs([molecule("H2O")])
    torch.testing.assert_close(back(*args), fast(*args))
    # TorchScript re-raises the model's ValueError as torch.jit.Error.
    with pytest.raises((ValueError, torch.jit.Error), match="atomic number 6"):
        fast(*_inputs([molecule("CH4")]))
    ani = build_model(
        {"architecture": "ani", "elements": [1, 8], "hyperparameters": {"hidden": [8]}}
    )
    with pytest.raises(TypeError, match="PaiNN"):
        optimize_for_inference(ani)
    with pytest.raises(ValueError, match="backend"):
        optimize_for_inference(model, backend="gpu")
    assert isinstance(model, PaiNNModel)


@needs_kernel
def test_kernel_rejects_pairs_outside_the_atoms() -> None:
    """A caller's pair list that indexes past the atoms is an error, not a memory fault."""
    fast = optimize_for_inference(_painn([1, 8]), backend="cpp")
    args = _inputs([molecule("H2O")])
    i, j, shifts = torch.tensor([0, 1]), torch.tensor([1, 3]), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises((IndexError, RuntimeError, torch.jit.Error), match="outside the 3 atoms"):
        fast.energy_from_pairs(*args, i, j, shifts)


@needs_kernel
def test_kernel_library_path_is_the_loaded_library() -> None:
    """A C++ host (OpenMM without Python) must dlopen this file before a backend='cpp' module."""
    path = Path(_fast.kernel_library_path())
    assert path.is_file() and path.suffix == ".so"


def test_cpp_backend_without_a_kernel_says_why(monkeypatch) -> None:
    """backend='cpp' raises with the build error when the kernel cannot be built; 'auto' falls
    back to the TorchScript backend."""
    monkeypatch.setattr(_fast, "kernel_available", lambda: (False, "no compiler (test)"))
    model = _painn([1, 8])
    with pytest.raises(RuntimeError, match="no compiler"):
        optimize_for_inference(model, backend="cpp")
    fast = optimize_for_inference(model, backend="auto")
    assert not fast.use_kernel


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_gradients_equal_autograd_of_the_fast_energy(backend: str) -> None:
    """compute_properties takes energy_and_gradients (no autograd) for a fast model; its forces
    and stress equal autograd's derivatives of the same model's energy (float64 rounding), for
    batches of molecules and periodic cells, with and without a caller's pair list."""
    from mlsim.neighbors import neighbor_list

    model = _painn([1, 6, 8], features=32, layers=2, seed=4)
    fast = optimize_for_inference(model, backend=backend)
    for batch, stress in [([_ethanol(3), _ethanol(4)], False), ([_water_box(6)], True)]:
        args = _inputs(batch)
        direct = compute_properties(fast, *args, stress=stress)
        # Positions that require grad select the autograd path (the caller keeps its graph).
        pos = args[1].clone().requires_grad_(True)
        graph = compute_properties(fast, args[0], pos, *args[2:], stress=stress)
        assert direct["forces"].grad_fn is None and graph["forces"].grad_fn is None
        torch.testing.assert_close(direct["energy"], graph["energy"].detach(), rtol=1e-13, atol=0)
        assert _max_rel(direct["forces"], graph["forces"]) < 1e-12
        if stress:
            assert _max_rel(direct["stress"], graph["stress"]) < 1e-12
            a = batch[0]
            i, j, s = neighbor_list(a.positions, 5.5, a.cell.array, a.pbc, full=False)
            pairs = tuple(torch.as_tensor(x, dtype=torch.long) for x in (i, j, s))
            listed = compute_properties(fast, *args, stress=True, pairs=pairs)
            assert _max_rel(listed["forces"], graph["forces"]) < 1e-12
            assert _max_rel(listed["stress"], graph["stress"]) < 1e-12
    # energy_and_gradients itself: dE/dcell of a periodic cell, and the shortest pair distance.
    numbers, pos, cell, pbc, batch = _inputs([_water_box(7)])
    i, j, s = fast.pairs(pos, cell, pbc, batch)
    _, gpos, gcell, dmin = fast.energy_and_gradients(numbers, pos, cell, pbc, batch, i, j, s, True)
    c = cell.clone().requires_grad_(True)
    p = pos.clone().requires_grad_(True)
    grads = torch.autograd.grad(fast(numbers, p, c, pbc, batch).sum(), [p, c])
    assert _max_rel(gpos, grads[0]) < 1e-12 and _max_rel(gcell, grads[1]) < 1e-12
    vec = pos[j] - pos[i] + s.double() @ cell[0]
    assert float(dmin) == pytest.approx(float(vec.norm(dim=1).min()), rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_user_paths_keep_every_safety_check(backend: str) -> None:
    """The direct path of compute_properties and MLCalculator(fast=...) refuse what the plain
    path refuses, with the same messages: overlapping atoms (also via a periodic image and with
    the calculator's reused list), unknown elements, non-finite positions, non-finite results."""
    from ase import Atoms

    from mlsim.ase import MLCalculator

    model = _painn([1, 6, 8])
    fast = optimize_for_inference(model, backend=backend)
    atoms = _ethanol(9)
    atoms.positions[7] = atoms.positions[2] + [0.05, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"atom 2 \(O\) and atom 7 \(H\) .*0\.05 A apart"):
        compute_properties(fast, *_inputs([atoms]))
    for skin in (0.5, 0.0):
        mol = _ethanol(9)
        mol.calc = MLCalculator(model, skin=skin, fast=backend)
        mol.get_forces()
        mol.positions[7] = mol.positions[2]  # onto the O: the reused list holds the pair
        with pytest.raises(ValueError, match=r"atom 2 \(O\) and atom 7 \(H\) .* 0 A apart"):
            mol.get_forces()
    box = Atoms("OH", positions=[[0.02, 1, 1], [5.97, 1, 1]], cell=[6, 6, 6], pbc=True)
    box.calc = MLCalculator(model, fast=backend)
    with pytest.raises(ValueError, match=r"atom 0 \(O\) and atom 1 \(H\) .*0\.05 A apart"):
        box.get_potential_energy()
    chloro = molecule("CH3Cl")
    chloro.calc = MLCalculator(model, fast=backend)
    with pytest.raises(ValueError, match=r"Cl \(Z=17\)"):
        chloro.get_potential_energy()
    broken = _ethanol(10)
    broken.calc = MLCalculator(model, fast=backend)
    broken.get_potential_energy()
    broken.positions[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        broken.get_forces()
    # A damaged model (NaN weights) is named, not returned.
    damaged = optimize_for_inference(model, backend=backend)
    damaged.ro_w2.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"non-finite .*structure 0 \(C2H6O"):
        compute_properties(damaged, *_inputs([_ethanol(11)]))
    # min_distance beyond the cutoff is still checked (by the separate search).
    far = _inputs([molecule("H2O")])
    far = (far[0], far[1] * 3.0, *far[2:])
    with pytest.raises(ValueError, match="closer than 6.0 A"):
        compute_properties(fast, *far, min_distance=6.0)


def test_calculator_check_state_agrees_with_ase() -> None:
    """MLCalculator's faster check_state reports what ASE's compare_atoms reports, change by
    change (positions by 1e-16 A or 1e-7 A, cell, pbc, numbers, a new array, NaN)."""
    from ase.calculators.calculator import compare_atoms

    from mlsim.ase import MLCalculator

    calc = MLCalculator(_painn([1, 6, 8]), fast=False)
    base = _ethanol(12)
    calc.atoms = base.copy()
    cases = []
    for edit in range(8):
        a = base.copy()
        if edit == 1:
            a.positions[3, 1] += 1e-16
        elif edit == 2:
            a.positions[3, 1] += 1e-7
        elif edit == 3:
            a.cell = np.eye(3) * 10.0
        elif edit == 4:
            a.pbc = [True, False, False]
        elif edit == 5:
            a.numbers[0] = 1
        elif edit == 6:
            a.set_initial_magnetic_moments(np.ones(len(a)))
        elif edit == 7:
            a.positions[0, 0] = np.nan
        cases.append(a)
    for a in cases:
        assert sorted(calc.check_state(a)) == sorted(compare_atoms(calc.atoms, a))
    assert calc.check_state(cases[0]) == [] and calc.check_state(cases[2]) == ["positions"]
