"""`slade` command line: `slade search IMAGE... [--model URI] [--k 10] [--grid out.png]`.

The model is any MLflow model logged by the publish stage: the champion
(`models:/slade-embedder@champion`, the default), a version (`models:/slade-embedder/3`), a
logged model (`models:/m-...`) or a run's (`runs:/<publish run id>/student`). Its gallery
index travels with it (extra_files/). The store is $MLFLOW_TRACKING_URI (`source
scripts/env.sh` for the local services), else the SQLite store under ./.slade/mlflow.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_MODEL = "models:/slade-embedder@champion"


def search(images: Sequence[str], model_uri: str, k: int, grid: str | None) -> list:
    """Embed the query images with the model and return their top-k gallery neighbours."""
    # the model's files are fetched once per search: a download bar per file is only noise
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow.artifacts
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    from slade_core.search import GalleryIndex, draw_search_grid, embed_images
    from tasks.locations import tracking_uri

    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"slade search: no such image file(s): {', '.join(missing)}")
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=_model_files(model_uri)))
    except MlflowException as err:
        raise SystemExit(
            f"slade search: cannot load {model_uri!r} from {tracking_uri()}: {err.message}\n"
            "Run the pipeline first (make demo), or pass --model models:/<name>/<version> "
            "or runs:/<publish run id>/student; set MLFLOW_TRACKING_URI to the right store."
        ) from None
    gallery = GalleryIndex.load(local / "extra_files")
    embedder = mlflow.pytorch.load_model(str(local))
    results = gallery.search(embed_images(embedder, images), k)
    if grid:
        draw_search_grid(images, results, grid)
    return results


def _model_files(uri: str) -> str:
    """runs:/<run id>/<name> -> models:/<logged model id>: MLflow 3 keeps a logged model's
    files with the model, not under the run's artifacts."""
    if not uri.startswith("runs:/"):
        return uri
    from mlflow.tracking import MlflowClient

    run_id, _, name = uri.removeprefix("runs:/").partition("/")
    client = MlflowClient()
    found = client.search_logged_models(
        [client.get_run(run_id).info.experiment_id],
        filter_string=f"name = '{name}' AND source_run_id = '{run_id}'",
    )
    if not found:
        raise SystemExit(f"slade search: run {run_id} logged no model named {name!r}")
    return f"models:/{found[0].model_id}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slade", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("search", help="nearest gallery images of query images")
    cmd.add_argument("images", nargs="+", metavar="IMAGE")
    cmd.add_argument("--model", default=DEFAULT_MODEL, help=f"MLflow model URI ({DEFAULT_MODEL})")
    cmd.add_argument("--k", type=int, default=10, help="neighbours per query (10)")
    cmd.add_argument("--grid", help="also draw queries and neighbours into this PNG")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("--k must be at least 1")
    results = search(args.images, args.model, args.k, args.grid)
    for image, hits in zip(args.images, results, strict=True):
        print(f"{image}  (model {args.model})")
        print(f"  {'rank':>4}  {'distance':>8}  {'label':>5}  {'class':<36}  path")
        for hit in hits:
            print(
                f"  {hit.rank:>4}  {hit.distance:8.4f}  {hit.label:>5}  "
                f"{hit.class_name[:36]:<36}  {hit.path}"
            )
    if args.grid:
        print(f"grid: {args.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
