"""Fault injection for models, the ASE calculator and the neighbor list (issue #17).

Damaged model files (flipped bytes, truncation, foreign files), a device that is not there,
NaN-producing weights and a neighbor list that runs out of memory must each end in a clear,
catchable error that names the file, member, structure or pair count: never NaN results, a
wrong answer or an aborted process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule

from mlsim.models import PaiNNModel, compute_properties, load_model, save_model

SPEC = {"architecture": "painn", "elements": [1, 6, 8]}
REPO = Path(__file__).resolve().parents[1]


def _inputs() -> tuple[torch.Tensor, ...]:
    """Model inputs (float64) for one slightly distorted ethanol."""
    a = molecule("CH3CH2OH")
    a.positions += np.random.default_rng(3).normal(scale=0.05, size=a.positions.shape)
    return (
        torch.tensor(a.numbers),
        torch.tensor(a.positions),
        torch.zeros(1, 3, 3, dtype=torch.float64),
        torch.zeros(1, 3, dtype=torch.bool),
        torch.zeros(len(a), dtype=torch.long),
    )


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A small saved PaiNN model (~50 kB)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(
        PaiNNModel([1, 6, 8], cutoff=4.0, features=8, num_interactions=1).double(), path, SPEC
    )
    return path


def _outputs(path: Path) -> dict[str, torch.Tensor]:
    """Energy and forces of the fixed ethanol from the model file at `path`."""
    torch.set_num_threads(1)
    return compute_properties(load_model(path), *_inputs())


def _flipped(src: Path, dst: Path, offset: int, mask: int) -> Path:
    """Copy of src with the byte at offset XOR-ed with mask."""
    data = bytearray(src.read_bytes())
    data[offset] ^= mask
    dst.write_bytes(bytes(data))
    return dst


def _check_damaged(path: Path, ref: dict[str, torch.Tensor]) -> str:
    """'error' for a clear ValueError naming the file, 'same' for bit-identical outputs."""
    try:
        out = _outputs(path)
    except ValueError as exc:
        assert str(path) in str(exc), exc
        return "error"
    # Anything that loads must still give exactly the intact model's numbers: no NaN, no drift.
    assert torch.isfinite(out["energy"]).all() and torch.isfinite(out["forces"]).all()
    assert torch.equal(out["energy"], ref["energy"]) and torch.equal(out["forces"], ref["forces"])
    return "same"


def test_flipped_bytes_in_weights_name_the_damaged_member(model_file, tmp_path) -> None:
    """A flipped byte inside any weight tensor is caught by the CRC check, naming the member."""
    import zipfile

    ref = _outputs(model_file)
    with zipfile.ZipFile(model_file) as z:
        members = [i for i in z.infolist() if "/data/" in i.filename and i.file_size > 0]
    assert members
    for info in members:
        # Stored (uncompressed) members: the data starts after the 30-byte local header + name.
        with open(model_file, "rb") as fh:
            fh.seek(info.header_offset + 26)
            name_len, extra_len = np.frombuffer(fh.read(4), dtype="<u2")
        offset = info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size // 2
        bad = _flipped(model_file, tmp_path / "bad.pt", offset, 0x40)
        with pytest.raises(ValueError, match=r"bad\.pt is damaged: archive member") as err:
            _outputs(bad)
        assert str(bad) in str(err.value) and info.filename in str(err.value)
    assert _check_damaged(model_file, ref) == "same"


def test_flipped_bytes_at_random_offsets_never_give_nan_or_wrong_results(
    model_file, tmp_path
) -> None:
    """40 random single-byte flips: each gives a clear error or bit-identical outputs."""
    ref = _outputs(model_file)
    size = model_file.stat().st_size
    rng = np.random.default_rng(17)
    seen = {"error": 0, "same": 0}
    for k in range(40):
        bad = _flipped(
            model_file, tmp_path / f"bad{k}.pt", int(rng.integers(size)), int(rng.integers(1, 256))
        )
        seen[_check_damaged(bad, ref)] += 1
    assert seen["error"] > 20  # most bytes of a model are weights and code, all CRC-protected


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_truncated_model_file_says_truncated(model_file, tmp_path, keep) -> None:
    """A model file cut short (an interrupted copy) is reported as truncated, naming the file."""
    data = model_file.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[:n])
    # The message starts with the path (whose test folder name holds "truncated" too).
    with pytest.raises(ValueError, match=r"cut\.pt is truncated") as err:
        load_model(bad)
    assert str(err.value).startswith(f"{bad} is truncated")


def test_foreign_file_is_not_an_mlsim_model(tmp_path) -> None:
    """A text file or a plain zip named model.pt gets 'not an mlsim model', naming the file."""
    import zipfile

    text = tmp_path / "notes.pt"
    text.write_text("hello\n" * 100)
    with pytest.raises(
        ValueError, match=r"notes\.pt is truncated, damaged or not an mlsim model"
    ) as err:
        load_model(text)
    assert str(text) in str(err.value)
    other = tmp_path / "other.pt"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "not a model")
    with pytest.raises(ValueError, match="not a TorchScript model") as err:
        load_model(other)
    assert str(other) in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_gpu_says_cuda_is_not_available(model_file) -> None:
    """device='cuda' on a CPU-only machine: not a misleading 'not a TorchScript archive'."""
    with pytest.raises(ValueError, match="CUDA is not available") as err:
        load_model(model_file, device="cuda")
    assert str(model_file) in str(err.value) and "TorchScript" not in str(err.value)
    with pytest.raises(ValueError, match="bad device"):
        load_model(model_file, device="tpu:7")


@pytest.fixture(scope="module")
def nan_model_file(tmp_path_factory) -> Path:
    """An intact archive whose weights contain a NaN (as a damaged training run would leave)."""
    torch.manual_seed(0)
    model = PaiNNModel([1, 6, 8], cutoff=4.0, features=8, num_interactions=1).double()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    save_model(model, path, SPEC)
    return path


def test_nan_outputs_raise_naming_the_structure(nan_model_file) -> None:
    """compute_properties and the ASE calculator refuse NaN results, naming the structure."""
    from mlsim.ase import MLCalculator

    model = load_model(nan_model_file)
    with pytest.raises(ValueError, match=r"non-finite .*structure 0 \(C2H6O, 9 atoms\)"):
        compute_properties(model, *_inputs())
    atoms = molecule("CH3CH2OH")
    atoms.calc = MLCalculator(nan_model_file)
    with pytest.raises(ValueError, match=r"non-finite .*structure 0 \(C2H6O"):
        atoms.get_potential_energy()


def test_evaluate_cli_fails_instead_of_printing_nan(nan_model_file, capsys) -> None:
    """`mlsim evaluate` on a NaN model: exit status 1 and an error, not 'MAE nan' and 0."""
    from mlsim.cli import main

    data = REPO / "examples" / "ethanol" / "ethanol_test_dft.extxyz.gz"
    if not data.is_file():
        pytest.skip("example data not present")
    status = main(["evaluate", str(nan_model_file), str(data), "--json", "--no-progress"])
    captured = capsys.readouterr()
    assert status == 1
    assert "non-finite" in captured.err and "structure 0" in captured.err
    assert "nan" not in captured.out.lower()


_OOM_SCRIPT = textwrap.dedent(
    """
    import resource
    import numpy as np
    import torch
    from mlsim.neighbors import neighbor_list, neighbor_list_torch

    def vm_size():
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    # Two dense clumps far apart: the bounding box hides the density, so the up-front estimate
    # lets the search start, and the worker threads run out of memory while finding ~7e7 pairs.
    rng = np.random.default_rng(0)
    n = 6000
    pos = np.concatenate([rng.uniform(0, 3, (n, 3)), rng.uniform(0, 3, (n, 3)) + 50.0])
    torch.set_num_threads(2)
    limit = vm_size() + (256 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for name, call in [
        ("numpy", lambda: neighbor_list(pos, 6.0, full=True)),
        ("torch", lambda: neighbor_list_torch(torch.from_numpy(pos), 6.0)),
    ]:
        try:
            call()
            print(name, "no error")
        except MemoryError as exc:
            print(name, "MemoryError:", exc)
    """
)


def test_neighbor_list_out_of_memory_raises_memory_error_in_subprocess() -> None:
    """Worker threads that run out of memory give MemoryError (with the pair count), not SIGABRT."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", _OOM_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"status {proc.returncode}\n{proc.stdout}\n{proc.stderr[-2000:]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout
    for name, line in zip(["numpy", "torch"], lines, strict=True):
        assert line.startswith(f"{name} MemoryError: neighbor list too large"), line
        assert "pairs" in line and "12000 atoms" in line, line
