"""Where the models that ship with fusionserve lie.

The repository keeps them in ``model_repository/`` at its top (the design card's layout); the
wheel carries the same files as ``fusionserve/model_repository`` (pyproject maps one onto the
other). So an installed fusionserve finds them next to its own package, and a checkout (or an
editable install) finds them one level up.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def shipped_model_repository() -> Path:
    installed = PACKAGE / "model_repository"
    return installed if installed.is_dir() else PACKAGE.parent / "model_repository"
