"""ASE calculator for mlsim models: energy, forces, stress (periodic) and ensemble uncertainty."""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import (
    Calculator,
    PropertyNotImplementedError,
    all_changes,
    equal,
)

from mlsim.models._properties import MIN_DISTANCE
from mlsim.models._uncertainty import committee_properties

__all__ = ["MLCalculator"]


class MLCalculator(Calculator):
    """Drop-in ASE calculator for an mlsim model (a model.pt path or a loaded/eager model).

    Results are in ASE units: energy/free_energy eV, forces eV/A, stress eV/A^3 (Voigt, ASE sign)
    and, for ensembles (committees), "uncertainty": the standard deviation of the member energies
    (eV), and "forces_uncertainty": per atom (N,), the root mean square over members of the
    deviation of each member's force from the committee mean (eV/A). Raw spreads: multiply by a
    calibration scale (mlsim.models.calibrate, `mlsim evaluate --json`) for expected errors.

    The pair list comes from mlsim's C++ neighbor list with cutoff + skin and is passed to the
    model's `energy_from_pairs`; it is reused while the atoms (count, numbers), cell and pbc are
    unchanged and no atom moved by skin/2 or more since it was built (so no pair can have come
    within the cutoff unseen). skin=0 disables reuse: the model builds its own list every call.
    `neighbor_list_builds` counts the lists built here.

    fast=True evaluates `mlsim.models.optimize_for_inference(model)` instead of the model: the
    same energies (radial filters tabulated to ~1e-10) with hand-written forces in a fused C++
    kernel, ~10x cheaper per step for PaiNN models; "cpp" or "torch" pick its backend.

    Errors name the structure and atoms: unknown elements or atomic numbers outside 1..118, two
    atoms closer than `min_distance` (default 0.1 A; None disables the check), NaN/inf results
    (ValueError), a neighbor list too large for memory (MemoryError).

    Thread safety: one calculator may be shared by several threads. A lock makes each
    calculation and the reading of its results (get_potential_energy, get_forces, get_stress,
    get_property, calculate_properties) one atomic step, so a thread never sees the results of
    another thread's structure; the threads then take turns. For parallel speed give each thread
    its own calculator (they can share one model). Reading `calc.results` directly after
    `calc.calculate(...)` is not protected: use the get_* methods.
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "forces",
        "stress",
        "uncertainty",
        "forces_uncertainty",
    ]

    def __init__(
        self,
        model: torch.nn.Module | str | os.PathLike,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        skin: float = 0.5,
        min_distance: float | None = MIN_DISTANCE,
        fast: bool | str = False,
        **kwargs: Any,
    ) -> None:
        """Load the model (if a path) onto `device`; dtype casts a private copy; lengths in A.

        fast: False, True ("auto"), "cpp" or "torch": use an inference-optimised copy (PaiNN).
        """
        # Reentrant: calculate() runs inside get_property(), both take it.
        self._lock = threading.RLock()
        super().__init__(**kwargs)
        skin = float(skin)
        if not np.isfinite(skin) or skin < 0:
            raise ValueError(f"skin must be a finite distance >= 0 Angstrom, got {skin}")
        if min_distance is not None and not (np.isfinite(min_distance) and min_distance >= 0):
            raise ValueError(
                f"min_distance must be a distance >= 0 Angstrom or None, got {min_distance}"
            )
        self.min_distance = None if min_distance is None else float(min_distance)
        from mlsim.openmm._module import model_dtype, resolve_model

        model = resolve_model(model, device)
        if dtype is not None and dtype != model_dtype(model):
            import copy

            model = copy.deepcopy(model).to(dtype)
        if fast:
            from mlsim.models import optimize_for_inference

            backend = "auto" if fast is True else str(fast)
            model = optimize_for_inference(model, backend=backend)
        self.model = model
        self.device = torch.device(device)
        self.dtype = model_dtype(model)
        self.elements = [int(z) for z in model.elements]
        self.cutoff = float(model.cutoff)
        self.is_ensemble = hasattr(model, "member_energies")
        self.skin = skin
        # Models saved before energy_from_pairs existed still work, without list reuse.
        self.reuse_pairs = skin > 0 and hasattr(model, "energy_from_pairs")
        self.neighbor_list_builds = 0
        self._list: dict[str, Any] | None = None
        # The checked system (numbers, cell, pbc) and its tensors, reused while it is unchanged.
        self._system: dict[str, Any] | None = None
        # The Atoms that get_property is computing for (it has just copied them to self.atoms).
        self._getting: Any = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle/deepcopy support: a lock cannot be copied, the copy gets its own."""
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled/copied calculator with a fresh lock."""
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def get_property(self, name: str, atoms: Any = None, allow_calculation: bool = True) -> Any:
        """ASE's get_property (calculate if needed, then read the result) under the lock."""
        with self._lock:
            self._getting = atoms
            try:
                return super().get_property(name, atoms, allow_calculation)
            finally:
                self._getting = None

    def check_state(self, atoms: Any, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation: ASE's compare_atoms, with shortcuts.

        Same answer as ASE's (each property equal within tol); identical arrays and clearly
        moved positions are decided with one NumPy call each instead of np.allclose's several,
        which took more time than a fast model's whole evaluation of a small molecule.
        """
        old = self.atoms
        if old is None:
            return super().check_state(atoms, tol)
        check = set(all_changes).difference(self.ignored_changes)
        changes = [
            prop
            for prop, a, b in (
                ("cell", old.cell.array, atoms.cell.array),
                ("pbc", old.pbc, atoms.pbc),
            )
            if prop in check and not _same(a, b, tol)
        ]
        check.difference_update(("cell", "pbc"))
        mine, theirs = set(old.arrays), set(atoms.arrays)
        changes += sorted(check & (mine ^ theirs))
        changes += [
            prop
            for prop in sorted(check & mine & theirs)
            if not _same(old.arrays[prop], atoms.arrays[prop], tol)
        ]
        return changes

    def calculate_properties(self, atoms: Any, properties: list[str]) -> dict[str, Any]:
        """ASE's calculate_properties under the lock."""
        with self._lock:
            return super().calculate_properties(atoms, properties)

    def _pairs(
        self, atoms: Any, new_system: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Half pair list (i, j, int64 shifts) within cutoff + skin, rebuilt only when needed.

        new_system: numbers, cell or pbc changed since the last call (then the list is rebuilt).
        """
        from mlsim.neighbors import neighbor_list

        positions = np.array(atoms.positions, dtype=np.float64)
        old = self._list
        if old is not None and not new_system:
            disp = positions - old["positions"]
            max2 = float((disp * disp).sum(1).max()) if len(positions) else 0.0
            if max2 < (0.5 * self.skin) ** 2:
                return old["pairs"]
        cell = np.array(atoms.cell.array, dtype=np.float64)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        i, j, shifts = neighbor_list(
            positions, self.cutoff + self.skin, cell if pbc.any() else None, pbc, full=False
        )
        pairs = tuple(
            torch.as_tensor(a, dtype=torch.long, device=self.device) for a in (i, j, shifts)
        )
        self._list = {"positions": positions, "pairs": pairs}
        self.neighbor_list_builds += 1
        return pairs

    def _inputs(self, atoms: Any) -> tuple[tuple[torch.Tensor, ...], bool]:
        """Model inputs (numbers, positions, cell, pbc, batch) for one Atoms object, and whether
        the system (numbers, cell, pbc) differs from the last call's.

        Numbers, cell and pbc are checked and converted once per system; positions every call.
        """
        from mlsim.openmm._module import check_elements

        numbers = atoms.numbers
        cell = atoms.cell.array
        pbc = atoms.pbc
        known = self._system
        new_system = not (
            known is not None
            and _identical(known["numbers"], numbers)
            and _identical(known["cell"], cell)
            and _identical(known["pbc"], pbc)
        )
        if new_system:
            self._system = None
            numbers = np.asarray(numbers)
            check_elements(self.model, numbers)
            pbc = np.asarray(pbc, dtype=bool)
            cell = np.asarray(cell)
            if pbc.any() and abs(np.linalg.det(cell)) < 1e-9:
                raise ValueError("atoms are periodic but the cell has zero volume")
            kw = {"device": self.device}
            known = {
                "numbers": numbers.copy(),
                "cell": cell.copy(),
                "pbc": pbc.copy(),
                "tensors": (
                    torch.as_tensor(numbers, dtype=torch.long, **kw),
                    torch.as_tensor(cell, dtype=self.dtype, **kw).unsqueeze(0),
                    torch.as_tensor(pbc, **kw).unsqueeze(0),
                    torch.zeros(len(numbers), dtype=torch.long, **kw),
                ),
            }
            self._system = known
        positions = np.asarray(atoms.positions)
        if not np.isfinite(positions).all():
            raise ValueError("atoms.positions contain NaN or infinite values")
        numbers_t, cell_t, pbc_t, batch_t = known["tensors"]
        pos_t = torch.as_tensor(positions, dtype=self.dtype, device=self.device)
        return (numbers_t, pos_t, cell_t, pbc_t, batch_t), new_system

    def calculate(
        self,
        atoms: Any = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        """Evaluate the model for `atoms` and fill self.results (under the calculator's lock)."""
        with self._lock:
            self._calculate(atoms, properties, system_changes)

    def _calculate(
        self,
        atoms: Any,
        properties: list[str] | tuple[str, ...],
        system_changes: list[str],
    ) -> None:
        """calculate() proper; the caller holds the lock."""
        from mlsim.models._properties import evaluate_checked

        # ASE's Calculator.calculate, without its second copy of the atoms when get_property has
        # just made one (a copy costs ~30 us, as much as a fast model's step of a molecule).
        if atoms is not None and not (
            atoms is self.atoms
            or (self.use_cache and atoms is self._getting and self.atoms is not None)
        ):
            self.atoms = atoms.copy()
        if self._directory != "." and not os.path.isdir(self._directory):
            os.makedirs(self._directory, exist_ok=True)
        atoms = self.atoms
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                "stress needs a cell periodic in all three directions"
            )
        (numbers, positions, cell, pbc, batch), new_system = self._inputs(atoms)
        pairs = self._pairs(atoms, new_system) if self.reuse_pairs else None
        if self.is_ensemble:
            # One forward pass of every member and one backward pass each: the committee means,
            # the energy spread and the per-atom force spread for about the cost of the mean.
            committee = committee_properties(
                self.model, numbers, positions, cell, pbc, batch, pairs, self.min_distance
            )
            self.results["uncertainty"] = float(committee["energy_std"][0])
            self.results["forces_uncertainty"] = (
                committee["forces_std"].cpu().to(torch.float64).numpy()
            )
            if not want_stress:
                energy = float(committee["energy"].sum())
                self.results["energy"] = energy
                self.results["free_energy"] = energy
                self.results["forces"] = committee["forces"].cpu().to(torch.float64).numpy()
                return
        elif "uncertainty" in properties or "forces_uncertainty" in properties:
            raise PropertyNotImplementedError(
                "uncertainty needs an ensemble model (a committee: train with `ensemble: 4`)"
            )
        # Forces come with every call: MD and optimisers always ask for them next. _inputs has
        # checked the atomic numbers (once per system) and the positions (finite).
        out = evaluate_checked(
            self.model,
            numbers,
            positions,
            cell,
            pbc,
            batch,
            forces=True,
            stress=want_stress,
            pairs=pairs,
            min_distance=self.min_distance,
        )
        energy = float(out["energy"].detach().sum())
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = out["forces"].detach().cpu().to(torch.float64).numpy()
        if want_stress:
            s = out["stress"].detach().cpu().to(torch.float64).numpy()[0]
            self.results["stress"] = np.array(
                [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
            )


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape, dtype and bytes: a cheaper test than np.array_equal for small arrays."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _same(a: Any, b: Any, tol: float) -> bool:
    """ASE's equal(a, b, atol=tol) (|a - b| <= tol everywhere), deciding common cases faster."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype == b.dtype and a.tobytes() == b.tobytes():
        return True
    if a.dtype.kind == "f" and b.dtype.kind == "f" and a.size:
        # A finite largest difference above tol is a change; NaN or inf go to ASE's test.
        diff = float(np.abs(a - b).max())
        if np.isfinite(diff) and diff > tol:
            return False
    return bool(equal(a, b, atol=tol))
