"""The model repository on disk, in Triton's layout.

``<repository>/<model>/config.toml`` and ``<repository>/<model>/<version>/model.onnx``
(numeric versions; the newest is served; a generation model has its encoder and
decoder graphs there instead), plus files the config names (tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from batching import keys
from batching.model_config import ModelConfig


class RepositoryError(Exception):
    pass


@dataclass(frozen=True)
class ModelFiles:
    name: str
    directory: Path
    config: ModelConfig
    versions: tuple[int, ...]

    @property
    def latest(self) -> int:
        return self.versions[-1]

    def onnx_path(self, version: int | None = None) -> Path:
        return self.directory / str(version or self.latest) / "model.onnx"

    def tokenizer_json(self) -> str | None:
        text = self.config.preprocessing.text
        if text is None:
            return None
        return (self.directory / text.tokenizer).read_text()


def load_model_files(directory: Path) -> ModelFiles:
    config_path = directory / "config.toml"
    if not config_path.is_file():
        raise RepositoryError(f"{directory}: no config.toml")
    config = ModelConfig.load(config_path)
    if config.name != directory.name:
        raise RepositoryError(
            f"{config_path}: name {config.name!r} != directory {directory.name!r}"
        )
    if not keys.MODEL_NAME.match(config.name):
        raise RepositoryError(f"{config_path}: model name must match {keys.MODEL_NAME.pattern}")
    versions = sorted(
        int(p.name)
        for p in directory.iterdir()
        if p.name.isdigit() and all((p / f).is_file() for f in config.graph_files)
    )
    if not versions:
        raise RepositoryError(f"{directory}: no <version>/{' and '.join(config.graph_files)}")
    return ModelFiles(config.name, directory, config, tuple(versions))


def scan(repository: Path, names: list[str] | None = None) -> list[ModelFiles]:
    """The models of a repository (or just ``names``), sorted by name."""
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} is not a directory")
    found = {d.name: d for d in sorted(repository.iterdir()) if (d / "config.toml").is_file()}
    wanted = names or list(found)
    missing = [n for n in wanted if n not in found]
    if missing:
        raise RepositoryError(f"no such model(s) in {repository}: {', '.join(missing)}")
    return [load_model_files(found[n]) for n in wanted]
