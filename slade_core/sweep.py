"""A hyperparameter sweep's definition: which config fields vary over which values, and
what is maximised.

The search space is checked against the real config loader before any trial runs: every
choice and both ends of every range must make a valid PipelineConfig, so an unknown field
or an out-of-range value fails at once with the field named. Trials are measured on
held-out training classes (`validation_classes`), never on the test classes; only the best
trial is then run on the test split. The search itself is Optuna's (grid, or TPE with a
seed).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import optuna
from pydantic import Field, ValidationError, field_validator, model_validator

from slade_core.config import PipelineConfig, StrictModel
from slade_core.experiment import ExperimentError, deep_merge, expand_dotted, load_experiment
from slade_core.io import stable_hash

# The config field that turns the training split's last N classes into the evaluation set.
VALIDATION_FIELD = "data.validation_classes"

Choice = bool | int | float | str


class Range(StrictModel):
    """Numbers from `low` to `high` (inclusive): integers when both ends are integers;
    `log` samples on a log scale, `step` on a grid of that spacing (not both)."""

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("a range takes log or step, not both")
        return self

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def suggest(self, trial: optuna.Trial, field: str) -> int | float:
        if self.integer:
            return trial.suggest_int(field, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(field, self.low, self.high, step=self.step, log=self.log)


class SweepSpec(StrictModel):
    """What `slade/sweep` searches.

    space: config field (dotted) -> a list of values, or a Range ({low, high, log, step}).
    sampler: "grid" tries every combination of the lists; "tpe" samples the space with
      Optuna's TPE (seeded by `seed`) for `trials` trials.
    trials: the budget; a failed trial counts. Grid: at most (and by default) its size.
    metric: the validation metric to maximise, as the pipeline logs it on its run
      (`student/map_at_r`, `student_minus_control/map_at_r`, ...).
    validation_classes: the last N training classes are the trials' evaluation set;
      0 evaluates trials on the test classes (their score then overstates the best).
    """

    preset: str
    overrides: dict[str, Any] = {}
    space: dict[str, list[Choice] | Range] = Field(min_length=1)
    sampler: Literal["grid", "tpe"] = "grid"
    trials: int | None = Field(None, ge=1)
    seed: int = 0
    metric: str = "student/map_at_r"
    validation_classes: int = Field(15, ge=0)

    @field_validator("space", mode="before")
    @classmethod
    def _ranges(cls, space: Any) -> Any:
        """A mapping is a Range; its errors name the field (not the union's alternatives)."""
        if not isinstance(space, dict):
            return space
        parsed = {}
        for field, values in space.items():
            if isinstance(values, dict):
                try:
                    values = Range.model_validate(values)
                except ValidationError as exc:
                    reasons = "; ".join(_reason(item) for item in exc.errors())
                    raise ValueError(f"{field}: {reasons}") from None
            parsed[field] = values
        return parsed

    @field_validator("metric")
    @classmethod
    def _model_and_metric(cls, metric: str) -> str:
        model, _, name = metric.partition("/")
        if not model or not name or "/" in name:
            raise ValueError(f"{metric!r} is not <model>/<metric>, e.g. student/map_at_r")
        return metric

    @model_validator(mode="after")
    def _searchable(self) -> SweepSpec:
        for field, values in self.space.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"space.{field}: give at least one value")
            if self.sampler == "grid" and isinstance(values, Range):
                raise ValueError(f"space.{field}: sampler 'grid' takes a list of values, use tpe")
        if self.sampler == "tpe" and self.trials is None:
            raise ValueError("sampler 'tpe' needs a trial budget: set trials")
        return self

    @property
    def study_name(self) -> str:
        """Same sweep (all but the budget) -> same study: a re-run resumes it."""
        identity = self.model_dump(mode="json", exclude={"trials"})
        return f"{self.preset.rsplit('/', 1)[-1].removesuffix('.yaml')}-{stable_hash(identity, 12)}"

    @property
    def budget(self) -> int:
        if self.sampler == "tpe":
            return self.trials
        size = math.prod(len(values) for values in self.space.values())
        return min(self.trials or size, size)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's value of each searched field, as the study's sampler picks it."""
        return {
            field: values.suggest(trial, field)
            if isinstance(values, Range)
            else trial.suggest_categorical(field, values)
            for field, values in self.space.items()
        }

    def sampler_for_study(self) -> optuna.samplers.BaseSampler:
        if self.sampler == "grid":
            return optuna.samplers.GridSampler(dict(self.space), seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed)

    def overrides_for(self, params: dict[str, Any], validation: bool) -> dict[str, Any]:
        """The pipeline overrides of one trial (validation split) or of the test run."""
        split = {VALIDATION_FIELD: self.validation_classes if validation else 0}
        if not self.validation_classes:
            split = {}  # the preset's own split: the field need not exist
        return deep_merge(expand_dotted(self.overrides), expand_dotted(split | params))


class SweepError(ValueError):
    """A sweep definition that cannot run; says which field and why."""


def parse_sweep(**fields: Any) -> SweepSpec:
    """Validate a sweep's definition, then every value of its space against the real config
    loader: nothing has run when this fails."""
    try:
        spec = SweepSpec.model_validate(fields)
    except ValidationError as exc:
        lines = ["invalid sweep:", *(f"  {_reason(item)}" for item in exc.errors())]
        raise SweepError("\n".join(lines)) from None
    base = _load(spec, {}, "the base config")
    if spec.metric.startswith("student_minus_control/") and not base.evaluate.control:
        raise SweepError(
            f"invalid sweep: metric {spec.metric!r} needs the control stage: set "
            f"evaluate.control: true"
        )
    for field, values in spec.space.items():
        ends = [values.low, values.high] if isinstance(values, Range) else values
        for value in ends:
            _load(spec, {field: value}, f"space.{field} = {value!r}")
    return spec


def _reason(item: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in item["loc"])
    message = item["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _load(spec: SweepSpec, params: dict[str, Any], what: str) -> PipelineConfig:
    try:
        return load_experiment(spec.preset, spec.overrides_for(params, validation=True))
    except ExperimentError as exc:
        raise SweepError(f"invalid sweep: {what} is not a valid config:\n{exc}") from None
