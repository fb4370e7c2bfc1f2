"""OpenMM Force objects that evaluate an mlsim model: openmm-torch TorchForce or openmm.PythonForce.

TorchForce runs a TorchScript file inside OpenMM's C++ (deployable without Python). PythonForce
calls the model in-process, so it needs no TorchScript at all: it keeps working once
`torch.jit.script` is gone, and it accepts eager models straight out of training (it compiles
its glue with TorchScript only where that works, for speed).

A file written by `export_torchforce` for a molecule calls no mlsim op: `openmmtorch.TorchForce`
loads it in any process, Python or C++, that has openmm-torch (a model from
optimize_for_inference is written with its TorchScript backend there, not the C++ kernel). A
periodic one calls mlsim's ops (neighbor list, and the fused kernel of a fast model); its host
loads `mlsim.neighbors.ops_library_path()` first (`uses_mlsim_ops`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlsim._fileio import atomic_path
from mlsim.openmm._module import (
    ALL_PAIRS_MAX_ATOMS,
    DEFAULT_SKIN,
    OpenMMEnergy,
    OpenMMEnergyForces,
    model_dtype,
    pairs_only,
    resolve_model,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "ModelCallback",
    "create_force",
    "export_torchforce",
    "import_openmmtorch",
    "uses_mlsim_ops",
]

BACKENDS = ("python", "torch")
# "auto" = TorchForce when the model can be scripted and openmm-torch is installed, else
# PythonForce. benchmarks/md_speed.py (CPU time, 1 thread) measures TorchForce ~20% faster per step
# on ethanol (it skips the Python round trip; the model itself is the same) and both equal on a
# 1,000-atom box where the model dominates. PythonForce is the fallback that keeps working for
# eager models and once TorchScript is gone.
DEFAULT_BACKEND = "auto"


def import_openmmtorch() -> Any:
    """Import openmmtorch without its 'simtk.openmm is deprecated' log line (it imports simtk)."""
    if "openmmtorch" not in sys.modules and "simtk.openmm" not in sys.modules:
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            import simtk.openmm  # noqa: F401
        finally:
            logging.disable(previous)
    import openmmtorch

    _load_torch_plugins()
    return openmmtorch


def _load_torch_plugins() -> None:
    """Load openmm-torch's platform plugins if `import openmm` ran before `import torch`.

    OpenMM loads its plugins when first imported; the TorchForce kernels link libtorch and CUDA's
    nvrtc, which only resolve once torch is imported. With the other import order the plugin load
    fails silently and every Context with a TorchForce says its platform "does not support all
    required kernels". Loading the failed Torch plugins again now (torch is imported) fixes that.
    """
    import openmm

    for failure in openmm.Platform.getPluginLoadFailures():
        match = re.search(r"(/\S*libOpenMMTorch\w*\.so)", failure)
        if match is None or "OpenCL" in match.group(1) or match.group(1) in _LOADED_PLUGINS:
            continue
        try:
            openmm.Platform.loadPluginLibrary(match.group(1))
            _LOADED_PLUGINS.add(match.group(1))
        except Exception:  # noqa: BLE001 - e.g. the CUDA plugin without a GPU driver
            continue


_LOADED_PLUGINS: set[str] = set()


def export_torchforce(
    model: torch.nn.Module | str | os.PathLike,
    numbers: Sequence[int],
    path: str | os.PathLike,
    periodic: bool = False,
    atoms: Sequence[int] | None = None,
    outputs_forces: bool = True,
    dtype: torch.dtype | None = None,
    skin: float = DEFAULT_SKIN,
    self_contained: bool = True,
) -> Path:
    """Write a TorchScript file that `openmmtorch.TorchForce(path)` loads as it is; returns the path.

    forward(positions nm[, boxvectors nm]) -> energy kJ/mol (and forces kJ/mol/nm when
    outputs_forces; then call TorchForce.setOutputsForces(True)). The atomic numbers are baked in.
    Non-periodic files call no mlsim op when `model` is a model file, an eager model or a model
    from optimize_for_inference (its C++ kernel is swapped for its TorchScript backend, same
    numbers to rounding; another TorchScript model object carries its own neighbor search, which
    does); periodic files need mlsim's op library in the host, see `uses_mlsim_ops`. skin:
    neighbor-list skin (Angstrom) of periodic systems, see OpenMMEnergy. self_contained=False
    keeps a fast model's C++ kernel in a molecule's file too (~8x faster than its TorchScript
    twin on ethanol; the host then loads the op library, as for periodic files).
    """
    from mlsim.models._fast import kernel_library_path, uses_kernel, without_kernel
    from mlsim.neighbors import ops_library_path

    resolved = resolve_model(model)
    op_free = self_contained and not periodic and len(numbers) <= ALL_PAIRS_MAX_ATOMS
    if op_free or (uses_kernel(resolved) and kernel_library_path() != ops_library_path()):
        # A molecule's file stays free of custom ops; others may use only the ops of
        # libmlsim_torch.so (not a kernel compiled on the fly, which a host could not find).
        resolved = without_kernel(resolved)
    cls = OpenMMEnergyForces if outputs_forces else OpenMMEnergy
    module = cls(resolved, numbers, atoms=atoms, periodic=periodic, dtype=dtype, skin=skin).eval()
    why = ""
    if module.use_all_pairs and self_contained:
        stripped, why = _without_forward(module.model, model, numbers)
        if stripped is not None:
            module.model = stripped
    out = _save(torch.jit.script(module), path)
    if module.use_all_pairs and self_contained and uses_mlsim_ops(out):
        warnings.warn(
            f"{out} calls mlsim's neighbor-list op although the system is not periodic ({why}); "
            "its host must load mlsim.neighbors.ops_library_path() first",
            stacklevel=2,
        )
    return out


def uses_mlsim_ops(path: str | os.PathLike) -> bool:
    """Whether a TorchScript file calls mlsim's ops (torch.ops.mlsim.*, torch.ops.mlsim_fast.*);
    then its host must load the op library first.

    torch resolves every op of every method in the file when it loads it, so such a file fails
    with 'Unknown builtin op: mlsim::...' (or mlsim_fast::...) in a process that has not loaded
    `mlsim.neighbors.ops_library_path()` (torch.ops.load_library in Python; dlopen or LD_PRELOAD
    in a C++ host).
    """
    pattern = re.compile(rb"ops\.mlsim(_fast)?\.")
    with zipfile.ZipFile(path) as archive:
        return any(
            "/code/" in name and name.endswith(".py") and pattern.search(archive.read(name))
            for name in archive.namelist()
        )


def _without_forward(
    model: torch.nn.Module, source: torch.nn.Module | str | os.PathLike, numbers: Sequence[int]
) -> tuple[torch.nn.Module | None, str]:
    """`pairs_only` copy of `model` (its scripted form has no mlsim op), or None and why not.

    A TorchScript model cannot drop its compiled forward, so one read from a file is rebuilt from
    the file's spec and weights, and used only if it gives the archive's energy and forces.
    """
    if isinstance(model, torch.jit.ScriptModule):
        if not isinstance(source, (str, os.PathLike)):
            return None, "the model was given as a TorchScript object; pass its file instead"
        eager, why = _rebuild(source, model, numbers)
        if eager is None:
            return None, why
        return pairs_only(eager), ""
    return pairs_only(model), ""


def _rebuild(
    path: str | os.PathLike, scripted: torch.nn.Module, numbers: Sequence[int]
) -> tuple[torch.nn.Module | None, str]:
    """The eager model of a model file and "", or None and why it cannot match the archive."""
    from mlsim.models import build_model, load_metadata

    dtype = model_dtype(scripted)
    try:
        eager = build_model(load_metadata(path)["spec"]).to(dtype).eval()
        eager.load_state_dict(scripted.state_dict())
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        # A file from another mlsim version or a plug-in architecture that is not installed.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"{path} cannot be rebuilt from its spec: {first[:200]}"
    # The archive's compiled code is the model; a rebuild by this mlsim must agree with it (code
    # may change between versions). Compared on a jittered grid of the system's atoms.
    n = len(numbers)
    side = 1
    while side**3 < n:
        side += 1
    idx = torch.arange(n)
    grid = torch.stack([idx // (side * side), (idx // side) % side, idx % side], 1)
    jitter = torch.rand(n, 3, generator=torch.Generator().manual_seed(0)) - 0.5
    args = (
        torch.tensor([int(z) for z in numbers]),
        (1.3 * grid + 0.3 * jitter).to(dtype),
        torch.zeros(1, 3, 3, dtype=dtype),
        torch.zeros(1, 3, dtype=torch.bool),
        torch.zeros(n, dtype=torch.long),
    )
    results = []
    for m in (scripted, eager):
        pos = args[1].clone().requires_grad_(True)
        e = m(args[0], pos, *args[2:]).sum()
        results.append((e.detach(), torch.autograd.grad(e, pos)[0]))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    (e_ref, f_ref), (e_new, f_new) = results
    scale = float(f_ref.abs().max()) + 1.0
    if not (
        torch.allclose(e_new, e_ref, rtol=tol, atol=tol)
        and torch.allclose(f_new, f_ref, rtol=tol, atol=tol * scale)
    ):
        return None, (
            f"the model rebuilt from the spec of {path} differs from the archive's code (energy "
            f"{float(e_new)} vs {float(e_ref)} eV on a test geometry), so the archive is exported"
        )
    return eager, ""


def _scripted_module(
    model: torch.nn.Module,
    numbers: Sequence[int],
    periodic: bool,
    atoms: Sequence[int] | None,
    outputs_forces: bool,
    dtype: torch.dtype | None,
    skin: float = DEFAULT_SKIN,
) -> torch.jit.ScriptModule:
    """The OpenMM-convention module for one system, compiled with TorchScript."""
    cls = OpenMMEnergyForces if outputs_forces else OpenMMEnergy
    module = cls(model, numbers, atoms=atoms, periodic=periodic, dtype=dtype, skin=skin).eval()
    return torch.jit.script(module)


def _save(scripted: torch.jit.ScriptModule, path: str | os.PathLike) -> Path:
    """Save a TorchScript module atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        scripted.save(str(tmp))
    return path


class ModelCallback:
    """The computation function of an openmm.PythonForce: State -> (kJ/mol, kJ/mol/nm array)."""

    def __init__(self, module: OpenMMEnergyForces) -> None:
        """Wrap an OpenMMEnergyForces module (eager or scripted)."""
        self.module = module
        self.periodic = bool(module.periodic)

    def __call__(self, state: Any) -> tuple[float, np.ndarray]:
        """Evaluate the model at the State's positions (and box)."""
        pos = torch.from_numpy(_positions_nm(state))
        box = None
        if self.periodic:
            box = torch.from_numpy(np.asarray(state.getPeriodicBoxVectors(asNumpy=True)._value))
        energy, forces = self.module(pos, box)
        return float(energy), forces.detach().to(torch.float64).numpy()

    # OpenMM pickles the callback whenever a PythonForce is serialized or copied (XmlSerializer,
    # copy.deepcopy, openmm-ml's interpolating ML/MM systems). Scripted models travel as their
    # TorchScript archive, eager ones as a regular torch pickle.
    def __getstate__(self) -> dict:
        """Picklable form: the model's bytes plus what the OpenMM wrapper baked in."""
        import io

        model = self.module.model
        buf = io.BytesIO()
        if isinstance(model, torch.jit.ScriptModule):
            torch.jit.save(model, buf)
            kind = "torchscript"
        else:
            torch.save(model, buf)
            kind = "eager"
        return {
            "kind": kind,
            "model": buf.getvalue(),
            "numbers": self.module.numbers.tolist(),
            "periodic": self.periodic,
            "dtype": str(self.module._like.dtype).removeprefix("torch."),
            "device": str(self.module._like.device),
            "skin": float(self.module.skin),
        }

    def __setstate__(self, state: dict) -> None:
        """Rebuild the model and the OpenMM wrapper from __getstate__'s dict."""
        import io

        import mlsim.neighbors  # noqa: F401 - registers the op that scripted models may call

        buf = io.BytesIO(state["model"])
        if state["kind"] == "torchscript":
            model = torch.jit.load(buf, map_location=state["device"])
        else:
            model = torch.load(buf, map_location=state["device"], weights_only=False)
        module = _callback_module(
            model.eval(),
            state["numbers"],
            state["periodic"],
            getattr(torch, state["dtype"]),
            state.get("skin", DEFAULT_SKIN),
        )
        self.__init__(module)


def _callback_module(
    model: torch.nn.Module,
    numbers: Sequence[int],
    periodic: bool,
    dtype: torch.dtype | None,
    skin: float,
) -> torch.nn.Module:
    """The PythonForce's OpenMMEnergyForces: compiled with TorchScript when the model allows
    (its glue runs ~25 us faster per step than eager code, a fifth of a fast model's step of a
    small molecule), else eager (models that TorchScript cannot compile)."""
    module = OpenMMEnergyForces(
        model, numbers, atoms=None, periodic=periodic, dtype=dtype, skin=skin
    )
    try:
        return torch.jit.script(module.eval())
    except Exception:  # noqa: BLE001 - any scripting failure: the eager module works the same
        return module.eval()


def _positions_nm(state: Any) -> np.ndarray:
    """A State's positions (nm) as a new float64 array, without units.

    State.getPositions(asNumpy=True) searches dir(state) and multiplies by a unit on every call:
    ~30 us, a third of a fast model's step of a small molecule. OpenMM States are always in nm.
    """
    try:
        out = np.empty((state._getNumParticles(), 3), dtype=np.float64)
        state._getVectorAsNumpy(state.Positions, out)
        return out
    except (AttributeError, TypeError):  # another OpenMM version: the public accessor
        return np.array(state.getPositions(asNumpy=True)._value, dtype=np.float64)


def create_force(
    model: torch.nn.Module | str | os.PathLike,
    numbers: Sequence[int],
    periodic: bool = False,
    atoms: Sequence[int] | None = None,
    backend: str = DEFAULT_BACKEND,
    path: str | os.PathLike | None = None,
    outputs_forces: bool = True,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    skin: float = DEFAULT_SKIN,
) -> Any:
    """Create an OpenMM Force for an mlsim model over `atoms` (all particles when None).

    backend "python": openmm.PythonForce evaluating the model in-process. backend "torch":
    openmm-torch TorchForce loading a TorchScript file (written to `path`, or a temporary file
    that is deleted once OpenMM has read it). "auto": "torch" when the model scripts and
    openmm-torch imports, otherwise "python". skin: neighbor-list skin (Angstrom) of periodic
    and large systems (0: search every step), see OpenMMEnergy.
    """
    import openmm

    if backend not in (*BACKENDS, "auto"):
        raise ValueError(
            f"unknown OpenMM backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}"
        )
    model = resolve_model(model, device)
    scripted = None
    if backend in ("torch", "auto"):
        try:
            import_openmmtorch()
            scripted = _scripted_module(
                model, numbers, periodic, atoms, outputs_forces, dtype, skin
            )
            backend = "torch"
        except (ImportError, RuntimeError, torch.jit.frontend.FrontendError) as exc:
            if backend == "torch":
                raise ValueError(
                    f"the TorchForce backend is not usable for this model: {exc}"
                ) from exc
            backend = "python"
    if backend == "python":
        # PythonForce hands the callback only the selected particles, so no subset inside.
        module = _callback_module(model, numbers, periodic, dtype, skin)
        force = openmm.PythonForce(ModelCallback(module))
        if atoms is not None:
            force.setParticles(list(atoms))
    else:
        openmmtorch = import_openmmtorch()
        if path is None:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                file = _save(scripted, Path(tmp) / "mlsim_force.pt")
                # TorchForce reads the file in its constructor, so the directory may go.
                force = openmmtorch.TorchForce(str(file))
        else:
            force = openmmtorch.TorchForce(str(_save(scripted, path)))
        force.setOutputsForces(outputs_forces)
    force.setUsesPeriodicBoundaryConditions(bool(periodic))
    force.setName(f"mlsim ({backend})")
    return force
