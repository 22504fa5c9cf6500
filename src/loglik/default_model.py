"""Where the embedded default model lives (package data, ``save_pretrained`` layout)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


def default_model_path() -> str:
    """The folder of the shipped default model; raise ConfigError if it is absent."""
    from .errors import ConfigError

    if not (DEFAULT_MODEL_DIR / "config.json").exists():
        raise ConfigError("this installation has no embedded default model; pass a model "
                          "(--model PATH_OR_HUB_ID)")
    return str(DEFAULT_MODEL_DIR)
