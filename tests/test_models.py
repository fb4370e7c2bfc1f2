"""Physics of mlsim.models: exact forces/stress, symmetries, batching, periodic images, TorchScript."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mlsim.models import (
    Ensemble,
    PaiNNModel,
    build_model,
    compute_properties,
    load_metadata,
    load_model,
    save_model,
)
from mlsim.models._base import upgrade_state_dict

SPECS = {
    "ani": {"architecture": "ani", "hyperparameters": {"hidden": [16, 8]}},
    "painn": {"architecture": "painn", "hyperparameters": {"features": 16, "num_interactions": 2}},
}


def _model(
    arch: str, elements: list[int], seed: int = 0, cutoff: float | None = None
) -> torch.nn.Module:
    """A small random-weight float64 model (random weights exercise every code path)."""
    torch.manual_seed(seed)
    spec = {**SPECS[arch], "elements": elements, "self_energies": {z: -0.1 * z for z in elements}}
    spec["hyperparameters"] = dict(spec["hyperparameters"])
    if cutoff is not None:
        spec["hyperparameters"]["radial_cutoff" if arch == "ani" else "cutoff"] = cutoff
        if arch == "ani":
            spec["hyperparameters"]["angular_cutoff"] = min(3.5, cutoff - 0.5)
    return build_model(spec).double()


def _inputs(atoms_list) -> tuple[torch.Tensor, ...]:
    """Pack ASE Atoms into the batched model inputs (float64)."""
    numbers = torch.tensor(np.concatenate([a.numbers for a in atoms_list]), dtype=torch.long)
    pos = torch.tensor(np.concatenate([a.positions for a in atoms_list]), dtype=torch.float64)
    cell = torch.tensor(np.stack([a.cell.array for a in atoms_list]), dtype=torch.float64)
    pbc = torch.tensor(np.stack([a.pbc for a in atoms_list]))
    batch = torch.cat(
        [torch.full((len(a),), k, dtype=torch.long) for k, a in enumerate(atoms_list)]
    )
    return numbers, pos, cell, pbc, batch


def _ethanol(seed: int = 0):
    """Ethanol with a random distortion so no symmetry hides an error."""
    a = molecule("CH3CH2OH")
    a.positions += np.random.default_rng(seed).normal(scale=0.08, size=a.positions.shape)
    return a


def _random_rotation(seed: int) -> torch.Tensor:
    """A random proper rotation matrix."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return torch.tensor(q)


@pytest.mark.parametrize("arch", ["ani", "painn"])
def test_forces_are_minus_energy_gradient_by_finite_differences(arch: str) -> None:
    """Autograd forces agree with central differences of the energy (float64, h = 1e-5 A)."""
    model = _model(arch, [1, 6, 8])
    numbers, pos, cell, pbc, batch = _inputs([_ethanol()])
    forces = compute_properties(model, numbers, pos, cell, pbc, batch)["forces"]
    h = 1e-5
    for atom, comp in [(0, 0), (2, 1), (5, 2), (8, 0)]:
        plus, minus = pos.clone(), pos.clone()
        plus[atom, comp] += h
        minus[atom, comp] -= h
        de = (model(numbers, plus, cell, pbc, batch) - model(numbers, minus, cell, pbc, batch)) / (
            2 * h
        )
        assert forces[atom, comp].item() == pytest.approx(-de.item(), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("arch", ["ani", "painn"])
def test_rotation_translation_permutation(arch: str) -> None:
    """Energy invariant, forces equivariant under rotation, translation and atom permutation."""
    model = _model(arch, [1, 6, 8])
    numbers, pos, cell, pbc, batch = _inputs([_ethanol(1)])
    ref = compute_properties(model, numbers, pos, cell, pbc, batch)
    rot = _random_rotation(3)
    moved = pos @ rot.T + torch.tensor([1.3, -2.0, 0.7], dtype=torch.float64)
    out = compute_properties(model, numbers, moved, cell, pbc, batch)
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=0, atol=1e-10)
    torch.testing.assert_close(out["forces"], ref["forces"] @ rot.T, rtol=0, atol=1e-10)
    perm = torch.tensor([4, 0, 8, 2, 1, 7, 3, 6, 5])
    out = compute_properties(model, numbers[perm], pos[perm], cell, pbc, batch)
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=0, atol=1e-10)
    torch.testing.assert_close(out["forces"], ref["forces"][perm], rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", ["ani", "painn"])
def test_batch_equals_separate_structures(arch: str) -> None:
    """A batch of different structures gives the same energies/forces as one-by-one evaluation."""
    model = _model(arch, [1, 6, 8])
    mols = [_ethanol(2), molecule("H2O"), _ethanol(4), molecule("CH4")]
    both = compute_properties(model, *_inputs(mols))
    sep_e = [compute_properties(model, *_inputs([m]))["energy"] for m in mols]
    sep_f = [compute_properties(model, *_inputs([m]))["forces"] for m in mols]
    torch.testing.assert_close(both["energy"], torch.cat(sep_e), rtol=0, atol=1e-10)
    torch.testing.assert_close(both["forces"], torch.cat(sep_f), rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", ["ani", "painn"])
def test_periodic_stress_matches_finite_strain_and_supercell_is_extensive(arch: str) -> None:
    """Stress = (1/V) dE/d(strain) by central differences; a 2x1x1 supercell has twice the energy."""
    model = _model(arch, [13, 29], cutoff=4.0)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms[1].symbol = "Al"
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(
        atoms.cell.array + np.array([[0, 0.1, 0], [0.05, 0, 0], [0, 0, 0.2]]), scale_atoms=True
    )
    numbers, pos, cell, pbc, batch = _inputs([atoms])
    out = compute_properties(model, numbers, pos, cell, pbc, batch, stress=True)
    vol = abs(np.linalg.det(atoms.cell.array))
    h = 1e-5
    for a, b in [(0, 0), (1, 2), (2, 1), (2, 2)]:
        es = []
        for sign in (1, -1):
            eps = torch.eye(3, dtype=torch.float64)
            eps[a, b] += sign * h
            es.append(model(numbers, pos @ eps, cell @ eps, pbc, batch).item())
        assert out["stress"][0, a, b].item() == pytest.approx(
            (es[0] - es[1]) / (2 * h) / vol, rel=1e-5, abs=1e-9
        )
    scripted = torch.jit.script(model)
    for _ in range(2):  # profile without gradients first, then ask for stress
        scripted(numbers, pos, cell, pbc, batch)
    again = compute_properties(scripted, numbers, pos, cell, pbc, batch, stress=True)
    torch.testing.assert_close(again["stress"], out["stress"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(again["forces"], out["forces"], rtol=1e-9, atol=1e-12)
    big = atoms.repeat((2, 1, 1))
    e_big = model(*_inputs([big]))
    assert e_big.item() == pytest.approx(2 * out["energy"].item(), rel=1e-10)


def test_all_pairs_path_equals_neighbor_op() -> None:
    """The pure-torch all-pairs path and mlsim's neighbor op find the same pairs and vectors."""
    from mlsim.models._graph import neighbor_pairs, pair_vectors

    rng = np.random.default_rng(7)
    pos = torch.tensor(rng.uniform(0, 7, size=(40, 3)))
    batch = torch.tensor([0] * 15 + [1] * 25)
    cell = torch.zeros(2, 3, 3, dtype=torch.float64)
    pbc = torch.zeros(2, 3, dtype=torch.bool)
    found = []
    for limit in (1000, 0):  # all-pairs, then the op
        i, j, shifts = neighbor_pairs(pos, cell, pbc, batch, 3.0, limit)
        vec = pair_vectors(pos, cell, batch, i, j, shifts)
        lo, hi = torch.minimum(i, j), torch.maximum(i, j)
        sign = torch.where(i < j, 1.0, -1.0).to(vec.dtype).unsqueeze(1)
        found.append(sorted(zip(lo.tolist(), hi.tolist(), (vec * sign).round(decimals=9).tolist())))
    assert found[0] == found[1] and len(found[0]) > 20
    assert all(batch[a] == batch[b] for a, b, _ in found[0])


def test_torchscript_round_trip_identical(tmp_path) -> None:
    """save_model -> load_model gives bitwise-identical energies, members and metadata."""
    torch.manual_seed(0)
    spec = {
        "architecture": "ensemble",
        "members": [
            {
                **SPECS["ani"],
                "elements": [1, 6, 8],
                "self_energies": {1: -13.6, 6: -1029.0, 8: -2041.0},
            },
            {
                **SPECS["painn"],
                "elements": [1, 6, 8],
                "self_energies": {1: -13.6, 6: -1029.0, 8: -2041.0},
            },
        ],
    }
    model = build_model(spec)
    assert isinstance(model, Ensemble)
    save_model(model, tmp_path / "model.pt", spec)
    loaded = load_model(tmp_path / "model.pt")
    inputs = _inputs([_ethanol(5), molecule("H2O")])
    inputs = (inputs[0], inputs[1].float(), inputs[2].float(), inputs[3], inputs[4])
    torch.testing.assert_close(loaded(*inputs), model(*inputs), rtol=0, atol=0)
    members = loaded.member_energies(*inputs)
    assert members.shape == (2, 2)
    torch.testing.assert_close(members.mean(0), loaded(*inputs), rtol=0, atol=0)
    # The calls above profiled the graph without gradients; forces must still be right afterwards
    # (TorchScript's optimizer once dropped gradients here). Optimized kernels may differ in the
    # last float32 bits, hence the tolerance.
    f1 = compute_properties(loaded, *inputs)["forces"]
    f2 = compute_properties(model, *inputs)["forces"]
    torch.testing.assert_close(f1, f2, rtol=1e-5, atol=1e-6)
    assert loaded.cutoff == pytest.approx(5.2) and loaded.elements == [1, 6, 8]
    meta = load_metadata(tmp_path / "model.pt")
    assert meta["units"]["energy"] == "eV" and meta["elements"] == [1, 6, 8]


def test_unknown_element_raises_clear_error(tmp_path) -> None:
    """An atomic number outside the model's element list is rejected, naming the element."""
    model = _model("painn", [1, 6, 8])
    numbers, pos, cell, pbc, batch = _inputs([molecule("H2O")])
    bad = numbers.clone()
    bad[0] = 26
    with pytest.raises(ValueError, match="atomic number 26"):
        model(bad, pos, cell, pbc, batch)
    save_model(model, tmp_path / "m.pt", {**SPECS["painn"], "elements": [1, 6, 8]})
    with pytest.raises(Exception, match="atomic number 26"):
        load_model(tmp_path / "m.pt")(bad, pos.float(), cell.float(), pbc, batch)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model({"architecture": "schnet", "elements": [1]})


def test_bad_inputs_raise_value_errors() -> None:
    """NaN coordinates, wrong shapes and missing cells are reported, not silently evaluated."""
    model = _model("ani", [1, 8])
    numbers, pos, cell, pbc, batch = _inputs([molecule("H2O")])
    nan = pos.clone()
    nan[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        compute_properties(model, numbers, nan, cell, pbc, batch)
    with pytest.raises(ValueError, match="positions must have shape"):
        compute_properties(model, numbers, pos[:2], cell, pbc, batch)
    with pytest.raises(ValueError, match="cell must have shape"):
        compute_properties(model, numbers, pos, cell[0], pbc, batch)
    with pytest.raises(ValueError, match="stress needs a periodic cell"):
        compute_properties(model, numbers, pos, cell, pbc, batch, stress=True)


@pytest.mark.parametrize("arch", ["ani", "painn"])
def test_energy_from_pairs_ignores_pairs_beyond_cutoff_and_scripts(arch: str) -> None:
    """A list built with cutoff + 1.5 A gives forward's energy, forces and stress, also scripted."""
    from mlsim.neighbors import neighbor_list

    model = _model(arch, [1, 6, 8], cutoff=3.0)
    crystal = bulk("C", "diamond", a=3.6, cubic=True)
    crystal.positions += np.random.default_rng(3).normal(scale=0.05, size=crystal.positions.shape)
    for atoms in (_ethanol(2), crystal):
        inputs = _inputs([atoms])
        i, j, s = neighbor_list(atoms.positions, 4.5, atoms.cell.array, atoms.pbc, full=False)
        pairs = tuple(torch.as_tensor(a) for a in (i, j, s))
        d = np.linalg.norm(atoms.positions[j] - atoms.positions[i] + s @ atoms.cell.array, axis=1)
        assert (d > 3.0).sum() >= 5  # the list really carries pairs the model must ignore
        stress = bool(atoms.pbc.all())
        ref = compute_properties(model, *inputs, stress=stress)
        scripted = torch.jit.script(model)
        # Several calls: TorchScript's profiling executor optimises after warm-up runs and once
        # lost gradients there; every call must keep exact derivatives.
        for _ in range(4):
            got = compute_properties(scripted, *inputs, stress=stress, pairs=pairs)
            for key, val in ref.items():
                torch.testing.assert_close(got[key], val, rtol=0, atol=1e-10)


def test_compute_properties_names_overlapping_atoms_and_their_structure() -> None:
    """Coincident atoms in the second structure of a batch: the error names that structure, the
    two atoms (indices inside it, elements) and their distance; no NaN comes back."""
    model = _model("painn", [1, 6, 8])
    water, eth = molecule("H2O"), _ethanol(1)
    eth.positions[8] = eth.positions[0]
    inputs = _inputs([water, eth])
    with pytest.raises(
        ValueError, match=r"atom 0 \(C\) and atom 8 \(H\) of structure 1 \(C2H6O, 9 atoms\) are 0 A"
    ):
        compute_properties(model, *inputs)
    with pytest.raises(ValueError, match=r"structure 11 \(C2H6O"):
        compute_properties(model, *inputs, first_structure=10)
    # Without the distance check the coincident pair is what makes the result NaN: still refused.
    with pytest.raises(ValueError, match=r"non-finite .* structure 1 \(C2H6O"):
        compute_properties(model, *inputs, min_distance=None)


@pytest.mark.parametrize("z", [119, -1, 0, 26])
def test_compute_properties_rejects_unknown_or_impossible_atomic_numbers(z: int) -> None:
    """Z outside 1..118 or unknown to the model: a ValueError naming the atom, not an IndexError."""
    model = _model("ani", [1, 6, 8])
    numbers, pos, cell, pbc, batch = _inputs([_ethanol()])
    numbers = numbers.clone()
    numbers[3] = z
    message = "Fe \\(Z=26\\), which the model does not know" if z == 26 else "not an element"
    with pytest.raises(ValueError, match=message) as err:
        compute_properties(model, numbers, pos, cell, pbc, batch)
    assert "atom 3" in str(err.value) and "Og" not in str(err.value)
    with pytest.raises(ValueError, match=f"atomic number {z} is not supported"):
        model(numbers, pos, cell, pbc, batch)  # the model itself, eager or scripted
    with pytest.raises(Exception, match=f"atomic number {z} is not supported"):
        torch.jit.script(model)(numbers, pos, cell, pbc, batch)


@pytest.mark.parametrize("scripted", [False, True])
def test_neighbor_list_too_large_for_memory_is_a_memory_error(scripted: bool) -> None:
    """A cutoff of 10 km in a 3 A periodic cell is refused up front as MemoryError (with the
    estimated pair count), also when the op runs inside a TorchScript model."""
    torch.manual_seed(0)
    model = PaiNNModel([1], cutoff=1e4, features=4, num_interactions=1).double()
    if scripted:
        model = torch.jit.script(model)
    numbers = torch.tensor([1, 1])
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    cell = 3.0 * torch.eye(3, dtype=torch.float64).unsqueeze(0)
    pbc = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(MemoryError, match="pairs estimated"):
        compute_properties(model, numbers, pos, cell, pbc, torch.zeros(2, dtype=torch.long))


# --- model files of earlier versions; blocks -----------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def test_load_trainable_of_shipped_model_matches_load_model() -> None:
    """examples/ethanol/model.pt (saved before the blocks existed, old state-dict keys): the eager
    model rebuilt from its spec gives the archive's energies and forces."""
    from mlsim.data import read
    from mlsim.models._io import load_trainable

    path = ROOT / "examples" / "ethanol" / "model.pt"
    scripted = load_model(path)
    eager, meta = load_trainable(path)
    assert meta["architecture"] == "painn" and isinstance(eager, PaiNNModel)
    structures = read(ROOT / "examples" / "ethanol" / "ethanol_test_dft.extxyz.gz")[:8]
    numbers = torch.tensor(np.concatenate([s.numbers for s in structures]))
    pos = torch.tensor(np.concatenate([s.positions for s in structures]), dtype=torch.float32)
    cell = torch.zeros(len(structures), 3, 3)
    pbc = torch.zeros(len(structures), 3, dtype=torch.bool)
    batch = torch.cat([torch.full((len(s.numbers),), k) for k, s in enumerate(structures)])
    ref = compute_properties(scripted, numbers, pos, cell, pbc, batch)
    got = compute_properties(eager, numbers, pos, cell, pbc, batch)
    torch.testing.assert_close(got["energy"], ref["energy"], rtol=0, atol=1e-6)
    torch.testing.assert_close(got["forces"], ref["forces"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["ani", "painn"])
def test_state_dicts_with_pre_block_key_names_load(arch: str) -> None:
    """Weights saved before the element table, shift, scale and radial basis became blocks
    (keys species_map, self_energy, energy_scale, freqs) load into today's models, also as
    ensemble members; the result is the same model."""
    model = _model(arch, [1, 6, 8], seed=1)
    renamed = {v: k for k, v in model.renamed_state_dict_keys().items()}
    old = {}
    for key, value in model.state_dict().items():
        old[renamed.get(key, key)] = value
    assert "self_energy" in old and "atomic_shift.self_energy" not in old
    fresh = _model(arch, [1, 6, 8], seed=2)
    fresh.load_state_dict(old)
    inputs = _inputs([_ethanol(3)])
    torch.testing.assert_close(fresh(*inputs), model(*inputs), rtol=0, atol=0)
    ens = Ensemble([_model(arch, [1, 6, 8], seed=3)]).double()
    ens.load_state_dict({f"members.0.{k}": v for k, v in old.items()})
    torch.testing.assert_close(ens(*inputs), model(*inputs), rtol=0, atol=0)
    # Code that matches keys itself (a weight average restored from an old checkpoint) renames.
    old_ens = {f"members.0.{k}": v for k, v in old.items()}
    assert set(old_ens) != set(ens.state_dict())
    assert set(upgrade_state_dict(ens, old_ens)) == set(ens.state_dict())


def test_blocks_values_and_scripting() -> None:
    """Radial bases and cutoffs have their defining values; every block scripts."""
    from mlsim.models.blocks import (
        AtomicShift,
        BesselRBF,
        CosineCutoff,
        ElementEmbedding,
        ElementIndex,
        EnergyScale,
        GaussianRBF,
        PolynomialCutoff,
    )

    d = torch.linspace(0.5, 6.0, 23, dtype=torch.float64)
    n = torch.arange(1, 5, dtype=torch.float64)
    bessel = BesselRBF(4, 5.0)(d)
    torch.testing.assert_close(bessel, torch.sin(d[:, None] * n * np.pi / 5.0) / d[:, None])
    gauss = GaussianRBF(6, 5.0)
    at_centres = gauss(gauss.centres.double())
    torch.testing.assert_close(at_centres.diagonal(), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(CosineCutoff(5.0)(d), 0.5 * (torch.cos(d * np.pi / 5.0) + 1.0))
    poly = PolynomialCutoff(5.0)
    x = torch.tensor([0.0, 4.999999, 5.0, 5.5], dtype=torch.float64, requires_grad=True)
    y = poly(x)
    assert y[0].item() == 1.0 and abs(y[1].item()) < 1e-12 and y[2:].abs().max() == 0
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.abs().max() < 1e-3  # flat at both ends
    index = ElementIndex([8, 1, 6])
    torch.testing.assert_close(index(torch.tensor([1, 6, 8, 1])), torch.tensor([1, 2, 0, 1]))
    with pytest.raises(ValueError, match="atomic number 7 is not supported"):
        index(torch.tensor([7]))
    with pytest.raises(ValueError, match="distinct atomic numbers"):
        ElementIndex([1, 1])
    shift = AtomicShift([8, 1], {1: -13.6, 8: -2041.0})
    torch.testing.assert_close(shift(torch.tensor([1, 0])), torch.tensor([-13.6, -2041.0]))
    torch.testing.assert_close(EnergyScale(2.0)(torch.tensor([1.5])), torch.tensor([3.0]))
    torch.manual_seed(0)
    emb = ElementEmbedding(3, 4)
    torch.manual_seed(0)
    torch.testing.assert_close(emb.weight, torch.nn.Embedding(3, 4).weight)  # same seeded init
    for block, arg in [
        (BesselRBF(4, 5.0), d),
        (GaussianRBF(6, 5.0), d),
        (CosineCutoff(5.0), d),
        (PolynomialCutoff(5.0), d),
        (index, torch.tensor([1, 6])),
        (emb, torch.tensor([0, 2])),
        (shift, torch.tensor([0, 1])),
        (EnergyScale(2.0), d),
    ]:
        torch.testing.assert_close(torch.jit.script(block)(arg), block(arg))
