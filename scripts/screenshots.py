"""Renew the README's pictures from the real services (after `make demo`).

    source scripts/env.sh && python scripts/screenshots.py [FLOW_RUN_ID]

Headless Chromium (Debian package `chromium`) photographs the Prefect flow run (its graph)
and the MLflow pages of the pipeline run, the publish run with its models and the
registered model; `slade search` on a held-out quickstart image (a mirrored copy of a test
image, a file no stage has seen) writes the retrieval grid and its printed output. Default
run: the newest completed `slade` flow run. Everything lands in docs/, PNGs palette-reduced
to stay small.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient
from PIL import Image, ImageOps
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter
from prefect.client.schemas.filters import FlowRunFilterStateType as StateType
from prefect.client.schemas.sorting import FlowRunSort

from tasks.cli import main as slade_cli

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

DOCS = Path(__file__).resolve().parents[1] / "docs"
MAX_BYTES = 300_000


def newest_completed_run() -> str:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["slade"])),
            flow_run_filter=FlowRunFilter(state={"type": StateType(any_=["COMPLETED"])}),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    if not runs:
        raise SystemExit("no completed `slade` flow run: run `make demo` first")
    return str(runs[0].id)


def shoot(url: str, out: Path, size: tuple[int, int] = (1440, 960)) -> Path:
    """Photograph a page with headless Chromium and save a palette PNG under MAX_BYTES."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "shot.png"
        subprocess.run(
            [
                browser,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={tmp}/profile",
                f"--window-size={size[0]},{size[1]}",
                "--virtual-time-budget=20000",
                f"--screenshot={raw}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        save_small(Image.open(raw), out)
    print(f"{out.relative_to(DOCS.parent)}  <- {url}")
    return out


def save_small(image: Image.Image, out: Path) -> None:
    """Palette PNG, scaled down until it is under MAX_BYTES."""
    image = image.convert("RGB")
    while True:
        buffer = io.BytesIO()
        image.quantize(colors=128).save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= MAX_BYTES:
            break
        image = image.resize((image.width * 4 // 5, image.height * 4 // 5), Image.LANCZOS)
    tmp = out.with_suffix(".tmp.png")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flow_run_id", nargs="?")
    args = parser.parse_args()
    os.chdir(DOCS.parent)  # paths in the printed output are relative to the repository
    flow_run_id = args.flow_run_id or newest_completed_run()
    DOCS.mkdir(exist_ok=True)
    prefect_ui = os.environ["PREFECT_UI_URL"].rstrip("/")
    mlflow_ui = os.environ.get("MLFLOW_UI_URL", os.environ["MLFLOW_TRACKING_URI"]).rstrip("/")

    client = MlflowClient()
    (parent,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' "
        "and tags.`slade.kind` = 'pipeline'",
    )
    exp = parent.info.experiment_id
    children = client.search_runs(
        [exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    stage_runs = {c.data.tags["slade.stage"]: c for c in children}
    publish = stage_runs["publish"]
    publish_id = publish.data.tags.get("slade.source_run_id", publish.info.run_id)

    shoot(f"{prefect_ui}/runs/flow-run/{flow_run_id}", DOCS / "prefect_flow_run.png")
    runs = f"{mlflow_ui}/#/experiments/{exp}/runs"
    shoot(f"{runs}/{parent.info.run_id}", DOCS / "mlflow_pipeline_run.png")
    shoot(f"{runs}/{publish_id}", DOCS / "mlflow_publish_run.png", (1440, 2300))  # + models
    (version,) = client.search_model_versions(f"tags.`slade.pipeline_run` = '{parent.info.run_id}'")
    model_id = version.source.removeprefix("models:/")
    shoot(f"{mlflow_ui}/#/experiments/{exp}/models/{model_id}", DOCS / "mlflow_logged_model.png")
    shoot(f"{mlflow_ui}/#/models/slade-embedder", DOCS / "mlflow_registered_model.png")

    prepare = stage_runs["prepare_data"]
    prepare_id = prepare.data.tags.get("slade.source_run_id", prepare.info.run_id)
    index = Path(client.download_artifacts(prepare_id, "index.parquet", tempfile.mkdtemp()))

    test = pd.read_parquet(index).query("split == 'test'").sort_values("image_id")
    query_row = test.iloc[len(test) // 2]
    query = DOCS / f"query_{query_row['class_name'].replace(' ', '_')}.png"
    save_small(ImageOps.mirror(Image.open(query_row["path"])), query)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        slade_cli(
            [
                "search",
                f"docs/{query.name}",
                "--k",
                "8",
                "--grid",
                "docs/search_grid.png",
            ]
        )
    text = output.getvalue().replace(str(query_row["path"]).rsplit("/", 3)[0], "…")
    (DOCS / "search_output.txt").write_text(text)
    print(text)
    save_small(Image.open(DOCS / "search_grid.png"), DOCS / "search_grid.png")


if __name__ == "__main__":
    main()
