"""Deployment without mlsim: files written by `mlsim export` run in processes that never import it.

A molecule's file needs nothing but torch, openmm and openmm-torch; a periodic one needs the op
library libmlsim_torch.so loaded (torch.ops.load_library), and that library has no Python in it.
"""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule

from mlsim import units
from mlsim.data import Structure
from mlsim.neighbors import ops_library_path

openmm = pytest.importorskip("openmm")
pytest.importorskip("openmmtorch")
models = pytest.importorskip("mlsim.models")

from mlsim.cli import main  # noqa: E402
from mlsim.openmm import export_torchforce  # noqa: E402
from mlsim.openmm._forces import uses_mlsim_ops  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "examples" / "ethanol" / "model.pt"
ETHANOL_FRAMES = MODEL.parent / "ethanol_test_dft.extxyz.gz"

# The host: only torch, openmm and openmmtorch. An import hook refuses mlsim, so passing proves
# the file does not need it (not merely that nothing happened to import it).
HOST = r"""
import json
import sys


class RefuseMlsim:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mlsim":
            raise ImportError("this host must not import " + name)
        return None


sys.meta_path.insert(0, RefuseMlsim())
import torch  # before openmm, whose Torch plugins resolve against the loaded libtorch
import openmm
import openmmtorch

args = json.load(sys.stdin)
out = {"error_before_load": None}
if args["library"]:
    try:  # without the op library a periodic file must fail, naming what is missing
        openmmtorch.TorchForce(args["file"])
    except Exception as exc:
        out["error_before_load"] = str(exc)
    torch.ops.load_library(args["library"])
force = openmmtorch.TorchForce(args["file"])
force.setOutputsForces(True)
system = openmm.System()
for _ in args["positions"]:
    system.addParticle(12.0)
if args["box"]:
    force.setUsesPeriodicBoundaryConditions(True)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*v) for v in args["box"]])
system.addForce(force)
context = openmm.Context(
    system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
)
if args["box"]:
    context.setPeriodicBoxVectors(*[openmm.Vec3(*v) for v in args["box"]])
context.setPositions([openmm.Vec3(*p) for p in args["positions"]])
state = context.getState(getEnergy=True, getForces=True)
out["energy"] = state.getPotentialEnergy()._value
out["forces"] = state.getForces(asNumpy=True)._value.tolist()
out["mlsim_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "mlsim")
assert "mlsim" not in sys.modules
print(json.dumps(out))
"""


def run_host(file: Path, structure: Structure, library: str | None = None) -> dict:
    """Energy (kJ/mol) and forces (kJ/mol/nm) of `structure` from `file` in a clean process."""
    args = {
        "file": str(file),
        "library": library,
        "positions": units.positions_to_openmm(structure.positions).tolist(),
        "box": units.positions_to_openmm(structure.cell).tolist() if structure.periodic else None,
    }
    proc = subprocess.run(
        [sys.executable, "-c", HOST],
        input=json.dumps(args),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_matches_mlsim(result: dict, structure: Structure) -> None:
    """The host's energy and forces equal mlsim's compute_properties to float32 precision."""
    model = models.load_model(MODEL)
    cell = structure.cell if structure.periodic else np.zeros((3, 3))
    ref = models.compute_properties(
        model,
        torch.tensor(structure.numbers),
        torch.tensor(structure.positions, dtype=torch.float32),
        torch.tensor(cell, dtype=torch.float32).reshape(1, 3, 3),
        torch.tensor(structure.pbc).reshape(1, 3),
        torch.zeros(len(structure), dtype=torch.long),
    )
    e_ref = float(ref["energy"].detach().sum())
    f_ref = ref["forces"].detach().double().numpy()
    energy = units.energy_from_openmm(result["energy"])
    forces = units.forces_from_openmm(np.array(result["forces"]))
    # float32: ~4000 eV totals carry ~1e-4 eV of rounding; forces are O(1) eV/A.
    assert energy == pytest.approx(e_ref, rel=1e-6, abs=1e-3)
    np.testing.assert_allclose(forces, f_ref, rtol=1e-4, atol=1e-4)
    assert np.abs(f_ref).max() > 0.1  # a real test geometry, not a zero-force one


def _ethanol_box(mirror: tuple[int, int, int] | None = None, offset: float = 6.0) -> Structure:
    """Two ethanols in a 9 A periodic box; the second shifted by `offset` A (and mirrored)."""
    base = molecule("CH3CH2OH")
    second = base.positions if mirror is None else base.positions @ np.diag(mirror)
    return Structure(
        numbers=np.tile(base.numbers, 2),
        positions=np.concatenate([base.positions + 2.5, second + offset]),
        cell=np.eye(3) * 9.0,
        pbc=True,
    )


def test_exported_molecule_runs_without_mlsim(tmp_path, capsys):
    structure = Structure.from_atoms(ase.io.read(ETHANOL_FRAMES, index=0))
    assert not structure.periodic
    xyz = tmp_path / "ethanol.xyz"
    ase.io.write(xyz, structure.to_atoms(), format="xyz")
    out = tmp_path / "ethanol_openmm.pt"
    assert main(["export", str(MODEL), "--structure", str(xyz), "-o", str(out)]) == 0
    assert "needs no mlsim" in capsys.readouterr().out
    # No method of any module in the file calls an mlsim op (torch compiles them all on load).
    assert not uses_mlsim_ops(out)
    loaded = torch.jit.load(str(out))
    assert "mlsim::" not in str(loaded.graph) and "ops.mlsim" not in loaded.code
    result = run_host(out, structure)
    assert result["mlsim_modules"] == []
    assert_matches_mlsim(result, structure)


def test_exported_periodic_system_runs_with_only_the_op_library(tmp_path, capsys):
    structure = _ethanol_box(mirror=(-1, 1, 1), offset=6.5)
    path = tmp_path / "box.extxyz"
    ase.io.write(path, structure.to_atoms(), format="extxyz")
    out = tmp_path / "box_openmm.pt"
    assert main(["export", str(MODEL), "--structure", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    library = ops_library_path()
    assert f"torch.ops.load_library({library!r})" in printed and "LD_PRELOAD" in printed
    assert uses_mlsim_ops(out)
    result = run_host(out, structure, library=library)
    # Before the library is loaded the file fails, naming the op it misses.
    assert "Unknown builtin op: mlsim::neighbor_list_batch" in result["error_before_load"]
    assert result["mlsim_modules"] == []
    assert_matches_mlsim(result, structure)


def test_exports_of_objects_and_unrebuildable_files(tmp_path):
    numbers = Structure.from_atoms(molecule("CH3CH2OH")).numbers
    torch.manual_seed(0)
    eager = models.PaiNNModel([1, 6, 8], cutoff=4.0, features=16, num_interactions=2)
    ensemble = models.Ensemble([eager, models.PaiNNModel([1, 6, 8], cutoff=3.0, features=8)])
    for i, model in enumerate((eager, ensemble)):  # eager models: their forward is left out
        assert not uses_mlsim_ops(export_torchforce(model, numbers, tmp_path / f"e{i}.pt"))
    # A TorchScript object carries its compiled forward: the file works but needs the library.
    with pytest.warns(UserWarning, match="calls mlsim's neighbor-list op.*pass its file"):
        out = export_torchforce(torch.jit.script(eager), numbers, tmp_path / "s.pt")
    assert uses_mlsim_ops(out)
    # A file whose spec does not rebuild its weights is exported as it is, with the reason.
    path = tmp_path / "model.pt"
    models.save_model(eager, path, spec={"architecture": "painn", "elements": [1, 6, 8]})
    with pytest.warns(UserWarning, match="cannot be rebuilt from its spec"):
        out = export_torchforce(path, numbers, tmp_path / "f.pt")
    assert uses_mlsim_ops(out)
    # Periodic files always use the op; loading one without the library fails with an error
    # that names it (for files from models scripted by this mlsim).
    assert uses_mlsim_ops(export_torchforce(MODEL, numbers, tmp_path / "p.pt", periodic=True))
    out = export_torchforce(eager, numbers, tmp_path / "q.pt", periodic=True)
    code = "import sys, torch; torch.jit.load(sys.argv[1])"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "mlsim::neighbor_list_batch" in proc.stderr and "libmlsim_torch" in proc.stderr


def test_op_library_has_no_python_symbols():
    library = ops_library_path()
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm is not installed")
    symbols = subprocess.run([nm, "-D", library], capture_output=True, text=True, check=True)
    names = [line.split()[-1] for line in symbols.stdout.splitlines() if line.strip()]
    assert any("neighbor" in n for n in names) or len(names) > 10  # nm did read the library
    python = [n for n in names if n.startswith(("Py", "_Py"))]
    assert python == [], python[:10]
    readelf = shutil.which("readelf")
    if readelf is not None:
        dynamic = subprocess.run([readelf, "-d", library], capture_output=True, text=True).stdout
        needed = [line for line in dynamic.splitlines() if "NEEDED" in line]
        assert any("libtorch" in line for line in needed)
        assert not [line for line in needed if "python" in line.lower()], needed


CPP_HOST = r"""
// A C++ program without Python: loads the op library when given one, then an exported file, and
// evaluates it the way openmm-torch's TorchForce does (positions nm [, box nm] -> kJ/mol, kJ/mol/nm).
#include <dlfcn.h>
#include <torch/script.h>

#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
    if (argc != 4) return 2;
    if (std::string(argv[1]) != "-" && dlopen(argv[1], RTLD_NOW) == nullptr) {
        std::cerr << dlerror() << std::endl;
        return 3;
    }
    torch::jit::Module module = torch::jit::load(argv[2]);
    const int64_t n = std::stoll(argv[3]);
    std::vector<double> values;
    for (double v; std::cin >> v;) values.push_back(v);
    auto opts = torch::TensorOptions().dtype(torch::kFloat64);
    std::vector<torch::jit::IValue> inputs{torch::from_blob(values.data(), {n, 3}, opts).clone()};
    if (static_cast<int64_t>(values.size()) == 3 * n + 9) {
        inputs.push_back(torch::from_blob(values.data() + 3 * n, {3, 3}, opts).clone());
    }
    auto out = module.forward(inputs).toTuple();
    std::cout.precision(17);
    std::cout << out->elements()[0].toTensor().item<double>();
    auto forces = out->elements()[1].toTensor().to(torch::kFloat64).contiguous();
    for (int64_t k = 0; k < 3 * n; ++k) std::cout << " " << forces.data_ptr<double>()[k];
    std::cout << std::endl;
    return 0;
}
"""


@pytest.mark.slow
def test_cpp_host_without_python_runs_exported_files(tmp_path):
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    torch_dir = Path(torch.__file__).parent
    (tmp_path / "host.cpp").write_text(CPP_HOST)
    exe = tmp_path / "host"
    subprocess.run(
        [
            compiler,
            "-std=c++17",
            "-O1",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            "-isystem",
            str(torch_dir / "include"),
            "-isystem",
            str(torch_dir / "include" / "torch" / "csrc" / "api" / "include"),
            str(tmp_path / "host.cpp"),
            "-o",
            str(exe),
            f"-L{torch_dir / 'lib'}",
            f"-Wl,-rpath,{torch_dir / 'lib'}",
            "-Wl,--no-as-needed",
            "-ltorch",
            "-ltorch_cpu",
            "-lc10",
            "-ldl",
        ],
        check=True,
        timeout=900,
    )
    linked = subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout
    assert "libpython" not in linked and "libtorch_python" not in linked
    molecule_structure = Structure.from_atoms(ase.io.read(ETHANOL_FRAMES, index=0))
    box = _ethanol_box()
    for name, structure, library in (
        ("molecule", molecule_structure, "-"),
        ("box", box, ops_library_path()),
    ):
        out = export_torchforce(
            MODEL, structure.numbers, tmp_path / f"{name}.pt", periodic=structure.periodic
        )
        values = units.positions_to_openmm(structure.positions).ravel().tolist()
        if structure.periodic:
            values += units.positions_to_openmm(structure.cell).ravel().tolist()
        proc = subprocess.run(
            [str(exe), library, str(out), str(len(structure))],
            input=" ".join(map(repr, values)),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        numbers = [float(x) for x in proc.stdout.split()]
        result = {"energy": numbers[0], "forces": np.reshape(numbers[1:], (-1, 3)).tolist()}
        assert_matches_mlsim(result, structure)


def test_exported_fast_models_load_in_plain_hosts(tmp_path):
    """optimize_for_inference models: a molecule's file needs no mlsim op (the C++ kernel is
    swapped for its TorchScript twin) and runs in a host with only torch, openmm and openmm-torch;
    a periodic one calls the kernel's ops, which `uses_mlsim_ops` sees and which the op library
    provides in a host without mlsim."""
    from mlsim.models._fast import kernel_available, kernel_library_path

    ok, why = kernel_available()
    if not ok:
        pytest.skip(f"no C++ kernel: {why}")
    assert kernel_library_path() == ops_library_path()  # built into libmlsim_torch.so
    fast = models.optimize_for_inference(MODEL, backend="cpp")
    assert fast.use_kernel
    structure = Structure.from_atoms(ase.io.read(ETHANOL_FRAMES, index=1))
    out = export_torchforce(fast, structure.numbers, tmp_path / "fast_molecule.pt")
    assert not uses_mlsim_ops(out)
    result = run_host(out, structure)
    assert result["mlsim_modules"] == []
    assert_matches_mlsim(result, structure)
    # On request the molecule's file keeps the kernel (faster; its host loads the op library).
    kept = export_torchforce(fast, structure.numbers, tmp_path / "kept.pt", self_contained=False)
    assert uses_mlsim_ops(kept)

    box = _ethanol_box(mirror=(1, -1, 1), offset=6.5)
    out = export_torchforce(fast, box.numbers, tmp_path / "fast_box.pt", periodic=True)
    assert uses_mlsim_ops(out)
    with zipfile.ZipFile(out) as archive:  # the kernel is in the file, not its TorchScript twin
        code = b"".join(archive.read(n) for n in archive.namelist() if n.endswith(".py"))
    assert b"ops.mlsim_fast.painn_energy_grad" in code
    result = run_host(out, box, library=ops_library_path())
    assert "mlsim_fast::" in result["error_before_load"] or "mlsim::" in result["error_before_load"]
    assert result["mlsim_modules"] == []
    assert_matches_mlsim(result, box)


def test_export_cli_fast_keep_kernel_and_skin(tmp_path, capsys):
    """`mlsim export --fast` writes a fast model that runs in a plain host; --keep-kernel keeps
    the C++ kernel (the output then says which library to load); --skin reaches the file."""
    from mlsim.models._fast import kernel_available

    structure = Structure.from_atoms(ase.io.read(ETHANOL_FRAMES, index=2))
    xyz = tmp_path / "ethanol.xyz"
    ase.io.write(xyz, structure.to_atoms(), format="xyz")
    out = tmp_path / "fast.pt"
    assert main(["export", str(MODEL), "--structure", str(xyz), "-o", str(out), "--fast"]) == 0
    assert "needs no mlsim" in capsys.readouterr().out
    assert_matches_mlsim(run_host(out, structure), structure)
    assert main(["export", str(MODEL), "--structure", str(xyz), "-o", str(out), "--keep-kernel"])
    assert "--keep-kernel needs --fast" in capsys.readouterr().err
    assert main(["export", str(MODEL), "--structure", str(xyz), "-o", str(out), "--skin", "-1"])
    assert "--skin must be >= 0" in capsys.readouterr().err
    if kernel_available()[0]:
        kept = tmp_path / "kept.pt"
        argv = ["export", str(MODEL), "--structure", str(xyz), "-o", str(kept), "--fast"]
        assert main(argv + ["--keep-kernel"]) == 0
        assert "load_library" in capsys.readouterr().out and uses_mlsim_ops(kept)
    box = _ethanol_box()
    path = tmp_path / "box.extxyz"
    ase.io.write(path, box.to_atoms(), format="extxyz")
    boxed = tmp_path / "box.pt"
    assert (
        main(["export", str(MODEL), "--structure", str(path), "-o", str(boxed), "--skin", "0.3"])
        == 0
    )
    assert torch.jit.load(str(boxed)).skin == pytest.approx(0.3)
