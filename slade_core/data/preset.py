"""The `data:` section of an experiment preset: which datasets, how split and filtered.

    data:
      labeled: cub100                  # a dataset name (data_manifests/datasets/<name>.yaml),
                                       # a manifest path, or {dataset: ..., split: ..., subset: ...}
      unlabeled: [birds525]            # same forms; every row becomes split "unlabeled"
      filter: {threshold: 0.85, aliases: {...}}
      image_check: {workers: null}
      validation_classes: 0            # N > 0: evaluate on the last N training classes
                                       # (tuning); the test classes are never read

A reference's `split` / `subset` override the manifest's own rules. `dataset` may also be an
inline manifest mapping (useful for tests and one-off folders).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from slade_core.data.errors import ManifestError
from slade_core.data.filtering import FilterSettings
from slade_core.data.manifest import (
    MANIFEST_MODELS,
    REPO_ROOT,
    DatasetManifest,
    SplitRule,
    Strict,
    SubsetRules,
    load_manifest,
    read_yaml,
    validate_mapping,
)

PRESETS_DIR = REPO_ROOT / "data_manifests" / "presets"


class DatasetRef(Strict):
    """A dataset used by a preset, with optional overrides of its manifest's rules."""

    dataset: str | dict[str, Any]
    split: SplitRule | None = None
    subset: SubsetRules | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"dataset": value} if isinstance(value, str) else value

    def manifest(self) -> DatasetManifest:
        return load_manifest(self.dataset)


class ImageCheckSettings(Strict):
    """Parallelism of the decode check (None: all CPUs)."""

    workers: int | None = Field(None, ge=1)


class DataPreset(Strict):
    """Labeled dataset (+ split rule), unlabeled datasets, leakage filter, image check.

    validation_classes: 0 evaluates on the test split; N > 0 on the last N training
    classes instead (the validation protocol for choosing settings, see
    slade_core.data.validation), and the test rows are dropped from the index.
    """

    labeled: DatasetRef
    unlabeled: list[DatasetRef] = []
    filter: FilterSettings = FilterSettings()
    image_check: ImageCheckSettings = ImageCheckSettings()
    validation_classes: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _unlabeled_have_no_split(self) -> DataPreset:
        for i, ref in enumerate(self.unlabeled):
            if ref.split is not None:
                raise ValueError(f"unlabeled[{i}].split: unlabeled datasets take no split rule")
        return self


_PRESET_MODELS = (DataPreset, DatasetRef, ImageCheckSettings, FilterSettings, *MANIFEST_MODELS)


def parse_data_preset(raw: Mapping[str, Any], where: str = "data preset") -> DataPreset:
    """Validate a `data:` mapping (ManifestError naming the bad field, with a suggestion)."""
    return validate_mapping(DataPreset.model_validate, raw, where, _PRESET_MODELS)


def load_data_preset(preset: str | Path, presets_dir: Path = PRESETS_DIR) -> DataPreset:
    """The `data:` section of a preset given by name (`birds_offline`) or YAML path."""
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = presets_dir / f"{preset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in presets_dir.glob("*.yaml"))
        raise ManifestError(f"preset {str(preset)!r} not found: choose one of {known}")
    raw = read_yaml(path)
    if not isinstance(raw, Mapping) or "data" not in raw:
        raise ManifestError(f"preset {path} has no `data:` section")
    return parse_data_preset(raw["data"], where=f"preset {path} data")
