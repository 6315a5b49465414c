"""`slade` command line: `slade search IMAGE... [--model URI] [--k 10] [--grid out.png]`.

Arguments, the search and what it prints. Where a model comes from is the caller's
`load` (tasks/cli.py: an MLflow model URI -> the embedder and its gallery index folder), so
this module stays free of the tracking store.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and faiss load on the first search: --help answers at once
    from torch import nn

    from slade_core.search import Neighbour

DEFAULT_MODEL = "models:/slade-embedder@champion"

Loader = Callable[[str], "tuple[nn.Module, Path]"]  # model URI -> (embedder, gallery folder)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
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
    return args


def search(
    images: Sequence[str],
    embedder: nn.Module,
    gallery_dir: str | Path,
    k: int,
    grid: str | None,
) -> list[list[Neighbour]]:
    """Embed the query images and return their top-k neighbours in the gallery index."""
    from slade_core.search import GalleryIndex, draw_search_grid, embed_images

    gallery = GalleryIndex.load(gallery_dir)
    results = gallery.search(embed_images(embedder, images), k)
    if grid:
        draw_search_grid(images, results, grid)
    return results


def format_results(
    images: Sequence[str], results: Sequence[Sequence[Neighbour]], model_uri: str
) -> str:
    """One block per query: a header naming the model, then rank, distance, label, class."""
    lines = []
    for image, hits in zip(images, results, strict=True):
        lines.append(f"{image}  (model {model_uri})")
        lines.append(f"  {'rank':>4}  {'distance':>8}  {'label':>5}  {'class':<36}  path")
        lines += [
            f"  {hit.rank:>4}  {hit.distance:8.4f}  {hit.label:>5}  "
            f"{hit.class_name[:36]:<36}  {hit.path}"
            for hit in hits
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None, load: Loader) -> int:
    """Run `slade search`; the image files are checked before the model is loaded."""
    args = parse_args(argv)
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"slade search: no such image file(s): {', '.join(missing)}")
    embedder, gallery_dir = load(args.model)
    results = search(args.images, embedder, gallery_dir, args.k, args.grid)
    print(format_results(args.images, results, args.model))
    if args.grid:
        print(f"grid: {args.grid}")
    return 0
