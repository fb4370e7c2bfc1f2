"""Generate docs/_generated/*.md from the configuration schemas in mlsim."""

from __future__ import annotations

from pathlib import Path


def _escape(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[dict[str, str]], columns: list[str]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(_escape(r.get(c, "")) for c in columns) + " |")
    return out


def write_config_reference(folder: Path) -> None:
    """Write config_train.md and config_learn.md (only when the text changed: no rebuild loops)."""
    from mlsim.learn._config import config_reference as learn_reference
    from mlsim.train._config import config_reference as train_reference

    folder.mkdir(exist_ok=True)
    pages = {
        "config_train.md": [
            "# Training configuration (`mlsim train CONFIG.yaml`)",
            "",
            "Generated from `mlsim.train._config` (the schema the trainer validates against). "
            "Paths are relative to the YAML file; units: eV, Angstrom, eV/Angstrom. `on resume`: "
            "whether `--resume` accepts a changed value.",
            "",
            *_table(
                train_reference(),
                ["key", "type", "default", "allowed", "description", "on_resume"],
            ),
        ],
        "config_learn.md": [
            "# Active-learning configuration (`mlsim learn CONFIG.yaml`)",
            "",
            "Generated from `mlsim.learn._config`. Paths are relative to the YAML file. "
            "`max_iterations`, `max_labels` and `train_time_min` may be changed on `--resume`; "
            "anything else is refused.",
            "",
            *_table(learn_reference(), ["key", "default", "description"]),
        ],
    }
    for name, lines in pages.items():
        path = folder / name
        text = "\n".join(lines) + "\n"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
