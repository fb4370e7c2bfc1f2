"""The reference-method registry: built-ins, a method registered by an outside package (directly
or through the mlsim.references entry-point group), option and element checks."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

from mlsim.data import Structure, label, read
from mlsim.data import _references as refs
from mlsim.data._backends import AseLabeller, make_labeller


def _emt_reference() -> None:
    from ase.calculators.emt import EMT

    refs.register_reference(
        "emt-test", lambda: AseLabeller(EMT(), "EMT-test"), (), None, "EMT, for the tests"
    )


def _clusters(n: int) -> list[Structure]:
    rng = np.random.default_rng(0)
    base = np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0]], dtype=float)
    return [Structure([29] * 3, base + rng.normal(0, 0.05, base.shape)) for _ in range(n)]


@pytest.fixture
def clean_registry():
    saved = dict(refs._REGISTRY)
    loaded = refs._entry_points_loaded
    yield
    refs._REGISTRY.clear()
    refs._REGISTRY.update(saved)
    refs._entry_points_loaded = loaded


def test_builtins_and_checks():
    assert {"dft", "xtb"} <= set(refs.reference_names())
    refs.check_reference("xtb", {"charge": 0}, [1, 6, 8])
    with pytest.raises(ValueError, match=r"cannot treat \['U'\]"):
        refs.check_reference("xtb", {}, [1, 92])
    with pytest.raises(ValueError, match=r"\['basis'\] do not apply to method 'xtb'"):
        refs.check_reference("xtb", {"basis": "sto-3g"}, [1])
    with pytest.raises(ValueError, match="has no functions for Og"):
        refs.check_reference("dft", {"basis": "6-31g*"}, [1, 118])
    with pytest.raises(ValueError, match="unknown method 'g16'.*dft, .*xtb"):
        make_labeller("g16")


def test_registered_method_labels_like_its_calculator(tmp_path, clean_registry):
    _emt_reference()
    frames = _clusters(3)
    label(frames, tmp_path / "out.extxyz", "emt-test", progress=False)
    from ase.calculators.emt import EMT

    for s in read(tmp_path / "out.extxyz"):
        atoms = s.to_atoms()
        atoms.calc = EMT()
        assert s.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-6)  # extxyz digits
        assert s.info["method"] == "EMT-test"


def test_entry_point_plugin_is_found(monkeypatch, clean_registry):
    ep = importlib.metadata.EntryPoint(
        name="emt-test", value="tests.test_references:_emt_reference", group="mlsim.references"
    )
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda group=None: [ep] if group == "mlsim.references" else [],
    )
    monkeypatch.setattr(ep.__class__, "load", lambda self: _emt_reference)
    refs._entry_points_loaded = False
    assert "emt-test" in refs.reference_names()
    assert make_labeller("emt-test").name == "EMT-test"
    broken = importlib.metadata.EntryPoint(name="bad", value="nowhere:x", group="mlsim.references")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [broken])
    monkeypatch.setattr(ep.__class__, "load", lambda self: (_ for _ in ()).throw(ImportError("x")))
    refs._entry_points_loaded = False
    with pytest.raises(ValueError, match="reference plug-in 'bad' .* failed to load"):
        refs.get_reference("not-registered")
