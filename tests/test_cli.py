"""slade_core.cli with a loader that hands over a small real gallery: the printed table,
the grid, and the argument checks that run before any model is loaded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from slade_core import cli
from slade_core.config import ModelConfig
from slade_core.models import create_model
from slade_core.search import GalleryIndex, ImageEmbedder, embed_images

LONG_NAME = "a_class_name_longer_than_the_thirty_six_column_field"


@pytest.fixture
def gallery(tmp_path):
    """(embedder, gallery folder, image paths): six random images of two classes."""
    paths = []
    for i in range(6):
        pixels = np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(pixels).save(paths[-1])
    net = create_model(ModelConfig(weights="none", image_size=32, embedding_dim=8)).eval()
    embedder = ImageEmbedder(net)
    rows = pd.DataFrame(
        {
            "image_id": [f"g/{i}" for i in range(6)],
            "path": paths,
            "label": [i % 2 for i in range(6)],
            "class_name": [LONG_NAME if i % 2 else "short" for i in range(6)],
        }
    )
    folder = tmp_path / "gallery"
    folder.mkdir()
    GalleryIndex.from_embeddings(embed_images(embedder, paths), rows, "test").save(folder)
    return embedder, folder, paths


def _never(uri: str):
    raise AssertionError(f"loaded {uri} although the arguments were wrong")


def test_search_prints_a_ranked_table_per_query_and_draws_the_grid(gallery, tmp_path, capsys):
    embedder, folder, paths = gallery
    grid = tmp_path / "grid.png"
    loaded = []

    def load(uri: str):
        loaded.append(uri)
        return embedder, folder

    argv = ["search", paths[3], paths[0], "--k", "2", "--model", "runs:/r/student"]
    assert cli.main([*argv, "--grid", str(grid)], load) == 0
    assert loaded == ["runs:/r/student"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{paths[3]}  (model runs:/r/student)"
    assert lines[1].split() == ["rank", "distance", "label", "class", "path"]
    rank, distance, label, name, path = lines[2].split()
    # the query is itself a gallery image: its own row comes first at distance 0
    assert (rank, float(distance), label, name, path) == ("1", 0.0, "1", LONG_NAME[:36], paths[3])
    assert lines[3].split()[0] == "2"
    assert lines[4] == f"{paths[0]}  (model runs:/r/student)"
    assert lines[6].split()[-1] == paths[0]
    assert lines[-1] == f"grid: {grid}"
    assert len(lines) == 9  # 2 queries x (header, column names, 2 hits) + the grid line
    assert Image.open(grid).size[0] > 3 * 32


def test_the_default_model_is_the_champion(gallery, capsys):
    embedder, folder, paths = gallery
    assert cli.main(["search", paths[0], "--k", "1"], lambda uri: (embedder, folder)) == 0
    assert f"(model {cli.DEFAULT_MODEL})" in capsys.readouterr().out
    assert cli.DEFAULT_MODEL == "models:/slade-embedder@champion"


def test_missing_images_and_a_bad_k_stop_before_the_model_loads(gallery, tmp_path):
    _, _, paths = gallery
    with pytest.raises(SystemExit, match=r"no such image file\(s\): .*nope\.png"):
        cli.main(["search", paths[0], str(tmp_path / "nope.png")], _never)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["search", paths[0], "--k", "0"], _never)
    assert exit_info.value.code == 2  # argparse's usage error
