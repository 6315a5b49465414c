"""Dataset manifests: where a dataset's files come from and how its layout is read.

A manifest is data (`data_manifests/datasets/<name>.yaml`), validated here on load. The
`type` field selects the layout (one parser per official layout, plus `folder`, `csv` and
`synthetic` for your own or generated images). Unknown or misspelled fields are errors that
name the field and suggest the closest valid one.

Paths in manifests (`path:` of folder/csv datasets) may use `${VAR}` or `${VAR:-default}`;
relative paths resolve against the repository root. The shipped bird manifests use
`${SLADE_DATA_ROOT:-../shared/data}`, so exporting SLADE_DATA_ROOT moves them elsewhere.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from slade_core.data.errors import ManifestError

REPO_ROOT = Path(__file__).resolve().parents[2]
DATASETS_DIR = REPO_ROOT / "data_manifests" / "datasets"
SPLITS = ("train", "test", "query", "gallery", "unlabeled")


def _relative(value: str) -> str:
    if PurePosixPath(value).is_absolute() or ".." in PurePosixPath(value).parts:
        raise ValueError(f"{value!r} must be a relative path without '..'")
    return value


RelativePath = Annotated[str, AfterValidator(_relative)]


class Strict(BaseModel):
    """Base: unknown keys are rejected so a typo fails at load time."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(Strict):
    """One file of a dataset: downloaded from `url`, or placed by hand when `gated`.

    The file lives at `<downloads_dir>/<filename>`; archives are unpacked into the dataset
    directory under `into`, other files are copied there. Digests are verified when given.
    """

    filename: str = Field(pattern=r"^[^/\\]+$")
    url: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    md5: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    size: int | None = Field(None, ge=0)
    gated: bool = False
    instructions: str = ""
    extract: bool | None = None
    into: RelativePath = "."

    @model_validator(mode="after")
    def _reachable(self) -> Source:
        if self.url is None and not self.gated:
            raise ValueError(f"source {self.filename!r} needs a url or gated: true")
        return self

    @property
    def is_archive(self) -> bool:
        if self.extract is not None:
            return self.extract
        return self.filename.endswith((".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz", ".zip"))


class _ScarceLabels(Strict):
    """Scarce labels (either split rule): keep `labeled_per_class` images of every training
    class labeled and move the rest into the unlabeled set with their labels hidden, as a
    team that labeled only a few images per class has it. None keeps every label. `seed`
    seeds every random draw of the split (this one, and the test classes by fraction)."""

    labeled_per_class: int | None = Field(None, ge=1)
    seed: int = 0


class ClassSplit(_ScarceLabels):
    """Class-disjoint metric-learning split: by class id ranges (inclusive, as in the layout),
    or by fraction (`test_fraction` of the classes, a draw with `seed`, are test classes; the
    rest train). Ranges suit official layouts; a fraction suits class names, whose ids follow
    sorted names. `unlabeled` (an id range, with ranges) moves every image of its classes into
    the unlabeled set with their labels hidden: species a team has many images of but never
    labeled (dense unlabeled species, as NABirds is to CUB-200)."""

    rule: Literal["classes"]
    train: tuple[int, int] | None = None
    test: tuple[int, int] | None = None
    test_fraction: float | None = Field(None, gt=0, lt=1)
    unlabeled: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _ranges_or_fraction(self) -> ClassSplit:
        ranges = self.train is not None or self.test is not None
        if ranges == (self.test_fraction is not None):
            raise ValueError(
                "split: give either id ranges (train: [first, last], test: [first, last]) "
                "or test_fraction (e.g. 0.5, with seed), not both or neither"
            )
        if self.test_fraction is not None:
            if self.unlabeled is not None:
                raise ValueError("split.unlabeled is an id range: use it with train/test ranges")
            return self
        if self.train is None or self.test is None:
            raise ValueError("split: id ranges need both train and test")
        ranges = [("train", self.train), ("test", self.test)]
        if self.unlabeled is not None:
            ranges.append(("unlabeled", self.unlabeled))
        for name, (lo, hi) in ranges:
            if lo > hi:
                raise ValueError(f"split.{name}: [{lo}, {hi}] is empty (first > last)")
        for i, (name, (lo, hi)) in enumerate(ranges):
            for other, (olo, ohi) in ranges[i + 1 :]:
                if lo <= ohi and olo <= hi:
                    raise ValueError(f"split: {name} {(lo, hi)} and {other} {(olo, ohi)} overlap")
        return self


class SourceSplit(_ScarceLabels):
    """Use the split the layout itself gives (In-shop partition file, CSV `split` column)."""

    rule: Literal["source"]


SplitRule = Annotated[ClassSplit | SourceSplit, Field(discriminator="rule")]


class SubsetRules(Strict):
    """Reductions applied after the leakage filter (e.g. the paper's CompCars/Fashion200k).

    keep_classes: only these class ids; min_images_per_class: drop smaller classes;
    max_classes: then keep the largest classes (ties: smaller id), deterministic.
    """

    keep_classes: list[int] | None = None
    min_images_per_class: int | None = Field(None, ge=1)
    max_classes: int | None = Field(None, ge=1)


class _Dataset(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    terms: str = ""
    split: SplitRule | None = None
    subset: SubsetRules = SubsetRules()


class _Downloaded(_Dataset):
    """A dataset made of downloadable or hand-placed sources, read from `layout_root`."""

    sources: list[Source] = Field(min_length=1)
    layout_root: RelativePath = "."


class Cub200Manifest(_Downloaded):
    """CUB-200-2011: images.txt, image_class_labels.txt, classes.txt (class ids 1-200)."""

    type: Literal["cub200"]
    layout_root: RelativePath = "CUB_200_2011"


class Cars196Manifest(_Downloaded):
    """Cars-196 metric-learning files: car_ims/ + cars_annos.mat (class ids 1-196)."""

    type: Literal["cars196"]
    annotations: str = "cars_annos.mat"


class InShopManifest(_Downloaded):
    """DeepFashion In-shop: img/ + Eval/list_eval_partition.txt (train/query/gallery)."""

    type: Literal["inshop"]
    partition: str = "Eval/list_eval_partition.txt"


class NABirdsManifest(_Downloaded):
    """NABirds: images.txt, image_class_labels.txt, classes.txt, hierarchy.txt."""

    type: Literal["nabirds"]
    layout_root: RelativePath = "nabirds"


class CompCarsManifest(_Downloaded):
    """CompCars web-nature data: image/<make>/<model>/<year>/*.jpg + misc/make_model_name.mat."""

    type: Literal["compcars"]
    layout_root: RelativePath = "data"


class Fashion200kManifest(_Downloaded):
    """Fashion200k: labels/*_detect_all.txt (path, score, caption); class = product id."""

    type: Literal["fashion200k"]


class FolderManifest(_Dataset):
    """Your own images: `path/<class folder>/<image>`; class ids follow sorted folder names."""

    type: Literal["folder"]
    path: str
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class CsvManifest(_Dataset):
    """Your own images listed in a CSV: path, label[, class_name][, split].

    `path` is the CSV file (or a folder holding index.csv); image paths in it are relative
    to `images_root` (default: the CSV's folder) unless absolute. Without a label column
    the dataset can only be used as unlabeled data.
    """

    type: Literal["csv"]
    path: str
    images_root: str | None = None


class SyntheticManifest(_Dataset):
    """The generated quickstart set (slade_core.data.synthetic), written to the downloads dir."""

    type: Literal["synthetic"]
    params: dict[str, Any] = {}


DatasetManifest = Annotated[
    Cub200Manifest
    | Cars196Manifest
    | InShopManifest
    | NABirdsManifest
    | CompCarsManifest
    | Fashion200kManifest
    | FolderManifest
    | CsvManifest
    | SyntheticManifest,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(DatasetManifest)
T = TypeVar("T")
_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def resolve_path(value: str, base: Path = REPO_ROOT) -> Path:
    """Expand `${VAR}` / `${VAR:-default}` and resolve a relative path against `base`."""

    def expand(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ManifestError(f"path {value!r} uses ${{{name}}}, which is not set; export it")
        return default

    path = Path(_ENV.sub(expand, value)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _tags(models: tuple[type[BaseModel], ...]) -> set[str]:
    """Discriminator values ('csv', 'classes', ...): pydantic puts them into error locations."""
    tags: set[str] = set()
    for model in models:
        for key in ("type", "rule"):
            if key in model.model_fields:
                tags |= set(model.model_fields[key].annotation.__args__)
    return tags


def _explain(err: ValidationError, where: str, models: tuple[type[BaseModel], ...]) -> str:
    """Turn a pydantic error into lines that name each bad field and suggest a fix."""
    known = sorted({name for model in models for name in model.model_fields})
    tags = _tags(models)
    lines = [f"invalid {where}:"]
    for item in err.errors():
        loc = [str(p) for p in item["loc"] if str(p) not in tags]
        message = item["msg"]
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append(str(item["ctx"]["discriminator"]).strip("'"))
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
            message = "unknown field" + (f"; did you mean {close[0]!r}?" if close else "")
        lines.append(f"  {'.'.join(loc) or '(top level)'}: {message}")
    return "\n".join(lines)


MANIFEST_MODELS: tuple[type[BaseModel], ...] = (
    Source,
    ClassSplit,
    SourceSplit,
    SubsetRules,
    Cub200Manifest,
    Cars196Manifest,
    InShopManifest,
    NABirdsManifest,
    CompCarsManifest,
    Fashion200kManifest,
    FolderManifest,
    CsvManifest,
    SyntheticManifest,
)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, turning syntax errors into ManifestError with the file named."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ManifestError(f"{path} is not valid YAML: {err}") from err


def validate_mapping(
    validate: Callable[[dict[str, Any]], T],
    raw: Any,
    where: str,
    models: tuple[type[BaseModel], ...],
) -> T:
    """`validate(raw)` for a YAML mapping; a ManifestError names each bad field of `where`
    (searched in `models` for a did-you-mean) instead of pydantic's raw report."""
    if not isinstance(raw, Mapping):
        raise ManifestError(f"invalid {where}: expected a mapping, got {type(raw).__name__}")
    try:
        return validate(dict(raw))
    except ValidationError as err:
        raise ManifestError(_explain(err, where, models)) from err


def parse_manifest(raw: Mapping[str, Any], where: str = "dataset manifest") -> DatasetManifest:
    """Validate a mapping as a dataset manifest (ManifestError naming the bad field)."""
    return validate_mapping(_ADAPTER.validate_python, raw, where, MANIFEST_MODELS)


def manifest_file(ref: str | Path, datasets_dir: Path = DATASETS_DIR) -> Path:
    """A dataset name (`cub200`) -> data_manifests/datasets/cub200.yaml; a path -> itself."""
    text = str(ref)
    if text.endswith((".yaml", ".yml")) or "/" in text or os.sep in text:
        path = resolve_path(text)
    else:
        path = datasets_dir / f"{text}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in datasets_dir.glob("*.yaml"))
            raise ManifestError(
                f"unknown dataset {text!r}: choose one of {known} or give a manifest path"
            )
    if not path.is_file():
        raise ManifestError(f"dataset manifest {path} does not exist")
    return path


def load_manifest(
    ref: str | Path | Mapping[str, Any], datasets_dir: Path = DATASETS_DIR
) -> DatasetManifest:
    """Load a dataset manifest given by name, path, or an inline mapping."""
    if isinstance(ref, Mapping):
        return parse_manifest(ref)
    path = manifest_file(ref, datasets_dir)
    return parse_manifest(read_yaml(path), where=f"dataset manifest {path}")
