"""Reference methods that turn a Structure into (energy eV, forces eV/A): pyscf DFT, tblite xTB, any ASE calculator."""

from __future__ import annotations

import importlib
import time
from typing import Any, Protocol

import numpy as np

from mlsim.data._structure import Structure
from mlsim.units import ANGSTROM_PER_BOHR, EV_PER_HARTREE

__all__ = [
    "AseLabeller",
    "LabelFailure",
    "Labeller",
    "PySCFLabeller",
    "make_calculator",
    "make_labeller",
]


class LabelFailure(RuntimeError):
    """The method could not produce a result for this structure (e.g. SCF did not converge)."""


class Labeller(Protocol):
    """A reference method: `labeller(structure) -> (energy eV, forces eV/A, extra info)`.

    For periodic structures the extra info may hold "stress": the (3, 3) stress tensor in
    eV/A^3, ASE's sign convention (positive = tensile), which becomes the Structure's stress label.

    An optional `settings` dict (method name, charge, spin, functional, basis, density_fit: what
    applies) is stored with every label, and a resumed run must use the same; without it the name
    alone is checked.
    """

    name: str

    def __call__(self, s: Structure) -> tuple[float, np.ndarray, dict[str, Any]]: ...


class PySCFLabeller:
    """Kohn-Sham DFT with pyscf: restricted (RKS) for closed shells, UKS when spin > 0; density fitting by default."""

    def __init__(
        self,
        functional: str = "b3lyp",
        basis: str = "6-31g*",
        *,
        density_fit: bool = True,
        charge: int = 0,
        spin: int = 0,
        threads: int | None = None,
        conv_tol: float = 1e-9,
        max_cycle: int = 100,
        newton_cycles: int = 50,
    ) -> None:
        import pyscf

        self.functional, self.basis = functional, basis
        self.density_fit, self.charge, self.spin = density_fit, charge, spin
        self.threads, self.conv_tol, self.max_cycle = threads, conv_tol, max_cycle
        self.newton_cycles = newton_cycles
        self.name = f"{functional.upper()}/{basis.upper()}"
        self.program = f"pyscf {pyscf.__version__}"
        # What a resumed run must repeat; threads and SCF limits do not change converged labels.
        self.settings: dict[str, Any] = {
            "method": self.name,
            "functional": functional,
            "basis": basis,
            "density_fit": bool(density_fit),
            "charge": int(charge),
            "spin": int(spin),
        }

    def __call__(self, s: Structure) -> tuple[float, np.ndarray, dict[str, Any]]:
        """Run SCF + analytic gradient; raise LabelFailure if SCF does not converge (with a Newton retry)."""
        from ase.data import chemical_symbols
        from pyscf import dft, gto, lib

        if s.periodic:
            raise ValueError(
                "the pyscf DFT labeller handles molecules only (structure is periodic)"
            )
        if self.threads:
            lib.num_threads(self.threads)
        t0 = time.perf_counter()
        try:
            mol = gto.M(
                atom=[
                    (chemical_symbols[z], p) for z, p in zip(s.numbers, s.positions, strict=True)
                ],
                unit="Angstrom",
                basis=self.basis,
                charge=self.charge,
                spin=self.spin,
                verbose=0,
            )
        except RuntimeError as exc:  # pyscf: odd electron count for the given spin, unknown basis
            raise ValueError(f"pyscf cannot build the molecule: {exc}") from exc
        mf = dft.RKS(mol) if self.spin == 0 else dft.UKS(mol)
        mf.xc = self.functional
        if self.density_fit:
            mf = mf.density_fit()
        mf.conv_tol, mf.max_cycle = self.conv_tol, self.max_cycle
        mf.kernel()
        newton = False
        if not mf.converged:
            # Second-order SCF from where DIIS stopped rescues most oscillating cases.
            newton = True
            mf2 = mf.newton()
            mf2.max_cycle = self.newton_cycles
            mf2.kernel(mf.mo_coeff, mf.mo_occ)
            mf = mf2
        if not mf.converged:
            raise LabelFailure(
                f"SCF did not converge ({self.max_cycle} DIIS cycles, then "
                f"{self.newton_cycles} Newton cycles)"
            )
        grad = mf.nuc_grad_method().kernel()  # Hartree/Bohr
        energy = float(mf.e_tot) * EV_PER_HARTREE
        forces = -np.asarray(grad) * (EV_PER_HARTREE / ANGSTROM_PER_BOHR)
        info = {
            "method": self.name,
            "program": self.program,
            "density_fit": bool(self.density_fit),
            "scf_newton": newton,
            "label_seconds": round(time.perf_counter() - t0, 3),
        }
        return energy, forces, info


class AseLabeller:
    """Any ASE calculator as a reference method; its CalculationFailed becomes LabelFailure.

    `settings` adds what the calculator was built with (e.g. charge and spin for xTB) to the
    settings stored with every label and checked when a run resumes.
    """

    def __init__(
        self, calculator: Any, name: str | None = None, settings: dict[str, Any] | None = None
    ) -> None:
        self.calc = calculator
        self.name = name or type(calculator).__name__
        self.settings: dict[str, Any] = {"method": self.name, **(settings or {})}

    def __call__(self, s: Structure) -> tuple[float, np.ndarray, dict[str, Any]]:
        """Evaluate energy and forces, and the stress (info["stress"], eV/A^3) when fully periodic
        and the calculator implements it (tblite xTB, EMT, most DFT codes)."""
        from ase.calculators.calculator import CalculationFailed

        atoms = s.to_atoms()
        atoms.info.clear()
        # A fresh start for every structure: calculators that restart from the previous result
        # (tblite's xTB takes its charges as the SCC guess) would otherwise give labels that
        # depend on which structures the same worker labelled before (~5e-4 eV/A for xTB).
        reset = getattr(self.calc, "reset", None)  # every ase Calculator has it; duck types may not
        if callable(reset):
            reset()
        atoms.calc = self.calc
        t0 = time.perf_counter()
        stress = None
        try:
            energy = float(atoms.get_potential_energy())
            forces = np.array(atoms.get_forces(), dtype=float)
            if s.pbc.all() and "stress" in getattr(self.calc, "implemented_properties", ()):
                stress = np.array(atoms.get_stress(voigt=False), dtype=float)
        except CalculationFailed as exc:
            raise LabelFailure(str(exc)) from exc
        info: dict[str, Any] = {
            "method": self.name,
            "label_seconds": round(time.perf_counter() - t0, 4),
        }
        if stress is not None:
            if not np.isfinite(stress).all():
                raise LabelFailure(f"{self.name} returned a non-finite stress")
            info["stress"] = stress
        return energy, forces, info


def make_labeller(method: str, **options: Any) -> Labeller:
    """The labeller for a registered method ('dft', 'xtb', plug-ins; see mlsim.data._references)
    or 'package.module:CalculatorClass' (an ASE calculator built with no arguments).

    Options a method does not take are dropped (the command line passes DFT options to xTB);
    None values mean the method's default.
    """
    if ":" in method:
        # A calculator built with no arguments: charge and spin do not reach it, so not recorded.
        calc, name = make_calculator(method)
        return AseLabeller(calc, name)
    from mlsim.data._references import get_reference

    ref = get_reference(method)
    return ref.build(**{k: v for k, v in options.items() if k in ref.options})


def make_calculator(method: str, *, charge: int = 0, spin: int = 0) -> tuple[Any, str]:
    """Return (ASE calculator, name) for 'xtb' (tblite GFN2-xTB) or 'package.module:CalculatorClass'."""
    if method == "xtb":
        from tblite.ase import TBLite

        calc = TBLite(method="GFN2-xTB", charge=charge, multiplicity=spin + 1, verbosity=0)
        return calc, "GFN2-xTB"
    if ":" in method:
        mod_name, _, cls_name = method.partition(":")
        try:
            cls = getattr(importlib.import_module(mod_name), cls_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load calculator {method!r}: {exc}") from exc
        return cls(), cls_name
    raise ValueError(f"unknown calculator {method!r}: use xtb or module:CalculatorClass")
