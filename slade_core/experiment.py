"""Experiment presets + overrides -> one validated PipelineConfig.

A preset (`data_manifests/presets/<name>.yaml`) names the data and any hyperparameters
that differ from the defaults; overrides (flow parameters, CLI) change single fields.
Everything is validated here (including that the named dataset manifests exist and
parse), before any stage runs, so a typo or an out-of-range value
fails at once with the field named (e.g. `teacher.optim.epochs`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from slade_core.config import PipelineConfig
from slade_core.data.errors import ManifestError

PRESETS_DIR = Path(__file__).resolve().parents[1] / "data_manifests" / "presets"


class ExperimentError(ValueError):
    """A preset or override that cannot become a valid PipelineConfig."""


def available_presets(presets_dir: Path = PRESETS_DIR) -> list[str]:
    """Names of the presets shipped in `data_manifests/presets`."""
    return sorted(p.stem for p in presets_dir.glob("*.yaml"))


def preset_path(preset: str | Path, presets_dir: Path = PRESETS_DIR) -> Path:
    """Resolve a preset name (`quickstart`) or a path to a YAML file."""
    candidate = Path(preset)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise ExperimentError(f"preset file {candidate} does not exist")
        return candidate
    path = presets_dir / f"{preset}.yaml"
    if not path.is_file():
        raise ExperimentError(
            f"unknown preset {str(preset)!r}: choose one of {available_presets(presets_dir)} "
            f"or give the path of a preset YAML file"
        )
    return path


def expand_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """{"teacher.optim.epochs": 3} -> {"teacher": {"optim": {"epochs": 3}}} (nested dicts kept)."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        node = nested
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ExperimentError(f"override {key!r} conflicts with a value set for {part!r}")
            node = child
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = deep_merge(node[leaf], value)
        else:
            node[leaf] = value
    return nested


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `update` into a copy of `base`; nested mappings merge, other values replace."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid experiment config ({source}):"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "<root>"
        got = "" if item["type"] == "missing" else f" (got {item.get('input')!r})"
        lines.append(f"  {field}: {item['msg']}{got}")
    return "\n".join(lines)


def load_experiment(
    preset: str | Path, overrides: Mapping[str, Any] | None = None
) -> PipelineConfig:
    """Read a preset, apply overrides (nested or dotted keys), validate everything.

    Raises ExperimentError naming each bad field.
    """
    path = preset_path(preset)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ExperimentError(f"preset {path} must be a YAML mapping, not {type(raw).__name__}")
    raw.pop("description", None)
    raw["preset"] = path.stem
    merged = deep_merge(raw, expand_dotted(overrides or {}))
    source = f"preset {path.stem!r}" + (f" with overrides {dict(overrides)}" if overrides else "")
    try:
        config = PipelineConfig.model_validate(merged)
    except ValidationError as exc:
        raise ExperimentError(_describe(exc, source)) from None
    refs = {"data.labeled": config.data.labeled}
    refs |= {f"data.unlabeled[{i}]": ref for i, ref in enumerate(config.data.unlabeled)}
    for field, ref in refs.items():
        try:
            ref.manifest()
        except ManifestError as exc:
            message = f"invalid experiment config ({source}):\n  {field}.dataset: {exc}"
            raise ExperimentError(message) from None
    return config
