"""Build models from a spec, save them as self-contained TorchScript archives, and load them back."""

from __future__ import annotations

import json
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlsim._fileio import atomic_path

__all__ = [
    "build_model",
    "load_metadata",
    "load_model",
    "load_trainable",
    "save_model",
]

_META = "mlsim.json"


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Create an eager model from a spec: {architecture, elements, self_energies, hyperparameters}.

    The architecture is looked up in the registry (`register_architecture`, plug-ins included);
    "ensemble" wraps the models of its "members" specs.
    """
    from mlsim.models._ensemble import Ensemble
    from mlsim.models._registry import get_architecture

    arch = str(spec.get("architecture", "")).lower()
    if arch == "ensemble":
        return Ensemble([build_model(m) for m in spec["members"]])
    entry = get_architecture(arch)
    se = {int(k): float(v) for k, v in (spec.get("self_energies") or {}).items()}
    hp = dict(spec.get("hyperparameters") or {})
    return entry.build(spec["elements"], se, **hp)


def _metadata(model: nn.Module, spec: dict[str, Any]) -> dict[str, Any]:
    """Everything a reader needs to use or rebuild the model, besides the weights."""
    import mlsim

    first = spec["members"][0] if spec.get("architecture") == "ensemble" else spec
    return {
        "format": "mlsim-model/1",
        "self_energies": {str(k): float(v) for k, v in (first.get("self_energies") or {}).items()},
        "hyperparameters": first.get("hyperparameters") or {},
        "ensemble_size": len(spec["members"]) if spec.get("architecture") == "ensemble" else 1,
        "mlsim_version": mlsim.__version__,
        "torch_version": torch.__version__,
        "spec": spec,
        "architecture": spec.get("architecture"),
        "elements": [int(z) for z in model.elements],
        "cutoff": float(model.cutoff),
        "units": {
            "energy": "eV",
            "length": "Angstrom",
            "forces": "eV/Angstrom",
            "stress": "eV/Angstrom^3",
        },
    }


def save_model(
    model: nn.Module, path: str | os.PathLike, spec: dict[str, Any], extra: dict | None = None
) -> None:
    """Script `model` and write it atomically to `path` with JSON metadata in the archive."""
    meta = _metadata(model, spec)
    if extra:
        meta.update(extra)
    scripted = torch.jit.script(model.eval())
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={_META: json.dumps(meta, indent=1)})


def _ensure_ops() -> None:
    """Register mlsim's custom ops (neighbor list) so archives that call them can be loaded."""
    try:
        import mlsim.neighbors  # noqa: F401
    except ImportError:
        pass


def _check_device(path: Path, device: str | torch.device) -> torch.device:
    """The torch.device to load onto, or a ValueError saying why it cannot be used."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"cannot load {path}: bad device {device!r} ({exc})") from None
    if dev.type == "cuda":
        # torch would report this as a deserialization failure of the archive itself.
        if not torch.cuda.is_available():
            raise ValueError(
                f"cannot load {path} on device {str(dev)!r}: CUDA is not available on this machine "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); "
                "use device='cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"cannot load {path} on device {str(dev)!r}: only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return dev


def _check_archive(path: Path) -> None:
    """Raise ValueError unless `path` is a complete zip archive whose every member passes its CRC.

    torch.jit.load does not verify the CRCs, so flipped bytes in the weights load silently and
    give NaN or wrong energies. This is zipfile.testzip's loop (read every member to its end,
    where zipfile compares the CRC), but every failure names the damaged member.
    """
    # What a damaged zip directory raises besides BadZipFile: undecodable names (ValueError),
    # impossible offsets or sizes (OSError, EOFError, struct.error, OverflowError).
    damaged = (
        zipfile.BadZipFile,
        ValueError,
        EOFError,
        struct.error,
        OverflowError,
        NotImplementedError,
        zlib.error,
    )
    try:
        archive = zipfile.ZipFile(path)
    except (PermissionError, IsADirectoryError):
        raise
    except (*damaged, OSError) as exc:
        raise ValueError(
            f"{path} is truncated, damaged or not an mlsim model (not a readable zip "
            f"archive: {exc}); model files are written by mlsim.models.save_model"
        ) from None
    with archive:
        for info in archive.infolist():
            try:
                with archive.open(info) as fh:
                    while fh.read(1 << 20):
                        pass
            except (*damaged, OSError) as exc:
                raise ValueError(
                    f"{path} is damaged: archive member {info.filename!r} fails its integrity "
                    f"check ({exc}); restore the file from a good copy"
                ) from None


def _load_archive(path: str | os.PathLike, device: str | torch.device) -> tuple[nn.Module, dict]:
    """Checked load of a model.pt: (scripted model on `device`, parsed metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    dev = _check_device(path, device)
    _check_archive(path)
    _ensure_ops()
    files = {_META: ""}
    try:
        model = torch.jit.load(str(path), map_location=dev, _extra_files=files)
    except Exception as exc:  # any failure to deserialize means the file is not a usable model
        raise ValueError(f"{path} is not a TorchScript model archive: {exc}") from exc
    if not files[_META]:
        raise ValueError(
            f"{path} has no mlsim metadata; was it written by mlsim.models.save_model?"
        )
    try:
        meta = json.loads(files[_META])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: the mlsim metadata ({_META}) is not valid JSON: {exc}") from None
    return model, meta


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model.pt (TorchScript) for inference; needs only torch and mlsim's ops.

    Raises FileNotFoundError for a missing file and ValueError naming the file for a truncated,
    damaged (failed CRC) or foreign file, or a device that is not available.
    """
    model, _ = _load_archive(path, device)
    return model.eval()


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read the JSON metadata (spec, elements, cutoff, units, versions) of a saved model."""
    return _load_archive(path, "cpu")[1]


def load_trainable(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the eager (trainable) model from a model.pt, e.g. to fine-tune; returns (model, metadata)."""
    meta = load_metadata(path)
    model = build_model(meta["spec"])
    scripted = load_model(path)
    model.load_state_dict(scripted.state_dict())
    return model, meta
