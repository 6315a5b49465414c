"""Stage 7 `publish` and the `register_model` step: from a finished run to a usable model.

publish (a cached stage like the others): for the teacher and the student, a FAISS gallery
index (slade_core.search; the evaluation split, or `publish.gallery`) and an MLflow model
(`mlflow.pytorch`) of `ImageEmbedder`: raw uint8 images [N, H, W, 3] -> L2-normalised
embeddings, with signature, an input example at the model's image size, the project's
requirements, the slade_core code and the gallery index under `extra_files/`.

register_model (every pipeline run, not cached): a new version of the student under
`publish.registered_model`, tagged with its pipeline run, preset, code version and test
MAP@R. The alias `champion` moves to it only when it beats the current champion on this
preset's test protocol, and with publish.champion_beats_control its own control as well
(the policy is slade_core.champion); otherwise it becomes `challenger`. The pipeline run
gets the index as its dataset input and both models as outputs, so its page shows the
lineage.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import sys
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from prefect import task
from prefect.cache_policies import NO_CACHE

from slade_core.champion import RecordedScore, judge, promote
from slade_core.data.lineage import source_digest
from slade_core.data.prepare import index_dataset
from slade_core.evaluate import GAIN, evaluation_protocol
from slade_core.models import load_model
from slade_core.search import GALLERY_FILES, ImageEmbedder, build_gallery, score_embedder
from tasks.inputs import stage_input
from tasks.lineage import LINEAGE_FILE, log_index_input
from tasks.locations import REPO_ROOT, downloads_dir, tracking_uri
from tasks.provenance import code_version
from tasks.stage import StageContext, StageResult, stage_task
from tasks.tracking import mlflow_client

PUBLISHED = ("teacher", "student")
REGISTERED = "student"
CHAMPION, CHALLENGER = "champion", "challenger"


def project_requirements() -> list[str]:
    """The installed `slade` distribution's runtime requirements (extras left out)."""
    return [r for r in importlib.metadata.requires("slade") or [] if "extra ==" not in r]


def embedder_signature(dim: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
    )


def _use_tracking_store() -> None:
    """The fluent mlflow API (log_model, register_model) talks to the pipeline's store."""
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())


def _gallery_source(ctx: StageContext, config, index_path: Path) -> tuple[Path, list[str], str]:
    """(index file, splits, description) of the images the gallery indexes."""
    ref = config.publish.gallery
    if ref is None:
        splits = evaluation_protocol(pd.read_parquet(index_path, columns=["split"])["split"])[1]
        splits = [s for s in splits if s != "query"]  # query-vs-gallery: the gallery split
        return index_path, splits, f"{config.preset} split {'+'.join(splits)}"
    path = index_dataset(ref, downloads_dir(), "gallery", ctx.work_dir / "gallery_index.parquet")
    return path, ["gallery"], f"dataset {ref.manifest().name}"


def gallery_images(config) -> str:
    """Digest of a `publish.gallery` folder / CSV (part of the stage key)."""
    ref = config.publish.gallery
    return source_digest([ref] if ref else [], downloads_dir())


@stage_task("publish", ("preset", "runtime", "publish"), inputs=gallery_images)
def publish_task(ctx: StageContext, config, upstream) -> dict[str, float]:
    """Log teacher and student as MLflow models, each with its FAISS gallery index; the run
    gets the index as dataset input, each model its test metrics on that dataset."""
    _use_tracking_store()
    # log_model creates the model in the fluent API's experiment: make it the run's
    mlflow.set_experiment(experiment_id=ctx.client.get_run(ctx.run_id).info.experiment_id)
    index_path = ctx.input(upstream["data"], "index.parquet")
    lineage_path = ctx.input(upstream["data"], LINEAGE_FILE)
    log_index_input(ctx.client, ctx.run_id, index_path, lineage_path, "evaluation")
    lineage = json.loads(lineage_path.read_text())
    scores = json.loads(ctx.input(upstream["evaluate"], "metrics.json").read_text())["models"]
    gallery_index, splits, source = _gallery_source(ctx, config, index_path)
    sizes = {}
    for name in PUBLISHED:
        checkpoint = ctx.input(upstream[name], upstream[name]["checkpoint"])
        folder = ctx.work_dir / f"gallery_{name}"
        gallery = build_gallery(checkpoint, gallery_index, splits, folder, config.runtime, source)
        net, _ = load_model(checkpoint)
        embedder = ImageEmbedder(net)
        info = mlflow.pytorch.log_model(
            embedder,
            name=name,
            run_id=ctx.run_id,
            serialization_format="pickle",  # pt2 cannot trace the size-dependent resize
            signature=embedder_signature(net.spec.embedding_dim),
            input_example=embedder.example_input(gallery.rows.at[0, "path"]),
            pip_requirements=project_requirements(),
            code_paths=[str(REPO_ROOT / "slade_core")],
            extra_files=[str(folder / f) for f in GALLERY_FILES],
            metadata={"slade.gallery": source, "slade.image_size": net.spec.image_size},
            tags={"slade.model": name, "slade.stage_key": ctx.key},
        )
        ctx.outputs[f"{name}_model"] = info.model_uri
        sizes[f"{name}/gallery_size"] = len(gallery.rows)
    # after every log_model: MLflow copies the run's step-0 metrics onto each model it logs
    for name in PUBLISHED:
        for metric, value in scores[name].items():
            if value is not None:
                ctx.client.log_metric(
                    ctx.run_id,
                    f"{name}/test_{metric}",
                    value,
                    step=0,
                    dataset_name=lineage["name"],
                    dataset_digest=lineage["digest"],
                    model_id=ctx.outputs[f"{name}_model"].removeprefix("models:/"),
                )
    return sizes


def _test_score(config, upstream: dict[str, StageResult]) -> RecordedScore:
    """The student's test MAP@R in this run and what it was measured on."""
    metrics = json.loads(stage_input(upstream["evaluate"], "metrics.json").read_text())
    lineage = json.loads(stage_input(upstream["data"], LINEAGE_FILE).read_text())
    return RecordedScore(
        map_at_r=_number(metrics["models"][REGISTERED]["map_at_r"]),
        preset=config.preset,
        protocol=metrics["protocol"],
        data_digest=lineage["digest"],
    )


def _control_gain(upstream: dict[str, StageResult]) -> float | None:
    """The student's test MAP@R minus its control's; None when the run had no control."""
    metrics = json.loads(stage_input(upstream["evaluate"], "metrics.json").read_text())
    if GAIN not in metrics:
        return None
    return _number(metrics[GAIN].get("map_at_r"))


def _number(value: float | None) -> float:
    """metrics.json writes NaN (every query lone) as null; NaN never beats a champion."""
    return math.nan if value is None else float(value)


def _score_tags(score: RecordedScore) -> dict[str, str]:
    return {
        "slade.preset": score.preset,
        "slade.protocol": score.protocol,
        "slade.data_digest": score.data_digest,
        "slade.test_map_at_r": repr(score.map_at_r),
    }


def _recorded(tags: dict[str, str]) -> RecordedScore | None:
    """A version's score as `_score_tags` recorded it; None when a tag is missing."""
    try:
        return RecordedScore(
            map_at_r=float(tags["slade.test_map_at_r"]),
            preset=tags["slade.preset"],
            protocol=tags["slade.protocol"],
            data_digest=tags["slade.data_digest"],
        )
    except KeyError:
        return None


def _champion(client, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _map_at_r(uri: str, index_path: Path) -> float:
    """A registered model's MAP@R on this run's test protocol, from the image files."""
    return score_embedder(_load_embedder(uri), index_path)["map_at_r"]


def _load_embedder(uri: str):
    """mlflow.pytorch.load_model, without leaving the model's code copy on sys.path (an
    older champion's slade_core must not shadow this process's later imports)."""
    saved = list(sys.path)
    try:
        return mlflow.pytorch.load_model(uri)
    finally:
        sys.path[:] = saved


@task(name="register_model", task_run_name="register_model", cache_policy=NO_CACHE)
def register_task(config, upstream: dict[str, StageResult], parent_run_id: str) -> dict[str, Any]:
    """Register the student, move `champion` only when it wins, record the run's lineage."""
    _use_tracking_store()
    client = mlflow_client()
    data, published = upstream["data"], upstream["publish"]
    index_path = stage_input(data, "index.parquet")
    log_index_input(client, parent_run_id, index_path, stage_input(data, LINEAGE_FILE), "training")
    client.log_outputs(
        parent_run_id,
        [
            LoggedModelOutput(published[f"{m}_model"].removeprefix("models:/"), step=0)
            for m in PUBLISHED
        ],
    )
    name = config.publish.registered_model
    done = client.search_model_versions(
        f"name = '{name}' and tags.`slade.pipeline_run` = '{parent_run_id}'"
    )
    if done:  # a retried flow run: registered already
        version = client.get_model_version(name, done[0].version)  # search omits aliases
        aliases = list(version.aliases)
        return {
            "name": name,
            "version": str(version.version),
            "alias": aliases[0] if aliases else "",
        }
    score = _test_score(config, upstream)
    gain = _control_gain(upstream)
    tags = {
        "slade.pipeline_run": parent_run_id,
        "slade.code_version": code_version(),
        **_score_tags(score),
        **({} if gain is None else {f"slade.{GAIN}_map_at_r": repr(gain)}),
    }
    uri = published[f"{REGISTERED}_model"]
    champion = _champion(client, name)
    version = mlflow.register_model(uri, name, tags=tags)
    new_wins = True
    if champion is not None:
        champion_uri = f"models:/{champion.name}/{champion.version}"
        verdict = judge(
            score,
            _recorded(champion.tags),
            lambda: (_map_at_r(uri, index_path), _map_at_r(champion_uri, index_path)),
        )
        for key, value in (("compared", verdict.new), ("champion", verdict.champion)):
            client.set_model_version_tag(
                name, version.version, f"slade.{key}_map_at_r", repr(value)
            )
        new_wins = verdict.new_wins
    required = gain if config.publish.champion_beats_control else None
    alias = CHAMPION if promote(new_wins, required) else CHALLENGER
    client.set_registered_model_alias(name, alias, version.version)
    return {"name": name, "version": str(version.version), "alias": alias}
