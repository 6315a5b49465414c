"""Every official layout, generated tiny in the test, parsed into the expected index."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from slade_core.data.errors import DataError, MissingFileError
from slade_core.data.manifest import parse_manifest
from slade_core.data.parsers import parse_dataset
from slade_core.data.prepare import prepare_data
from slade_core.data.preset import parse_data_preset


def write_image(path: Path, color=(200, 30, 30), mode="RGB", size=(12, 10), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    image = image.convert(mode) if mode != "RGB" else image
    image.save(path, format=fmt)
    return path


def _rows(frame: pd.DataFrame) -> list[tuple]:
    return list(frame.itertuples(index=False, name=None))


def _manifest(type_, **extra):
    sources = [{"filename": "x.tgz", "url": "http://unused"}] if "path" not in extra else None
    raw = {"name": type_, "type": type_, **extra}
    if sources and type_ not in ("folder", "csv", "synthetic"):
        raw["sources"] = sources
    return parse_manifest(raw)


def make_cub(root: Path) -> Path:
    classes = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 3: "003.Sooty_Albatross"}
    images = [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3)]
    (root).mkdir(parents=True, exist_ok=True)
    lines, labels = [], []
    for image_id, cid in images:
        rel = f"{classes[cid]}/{classes[cid].split('.')[1]}_{image_id:04d}.jpg"
        write_image(root / "images" / rel, color=(cid * 60, 10, 10))
        lines.append(f"{image_id} {rel}")
        labels.append(f"{image_id} {cid}")
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{k} {v}" for k, v in classes.items()) + "\n")
    (root / "train_test_split.txt").write_text("".join(f"{i} 1\n" for i, _ in images))
    return root


def test_cub200(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    frame = parse_dataset(_manifest("cub200"), root)
    assert _rows(frame)[0] == (
        "images/001.Black_footed_Albatross/Black_footed_Albatross_0001.jpg",
        1,
        "Black_footed_Albatross",
        "",
    )
    assert frame.groupby("label").size().to_dict() == {1: 2, 2: 2, 3: 2}
    assert set(frame["class_name"]) == {
        "Black_footed_Albatross",
        "Laysan_Albatross",
        "Sooty_Albatross",
    }


def test_missing_metadata_file_is_named(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011")
    (root / "classes.txt").unlink()
    with pytest.raises(MissingFileError, match="classes.txt is missing"):
        parse_dataset(_manifest("cub200"), root)


def test_nabirds_groups_visual_categories_by_species(tmp_path):
    root = tmp_path / "nabirds"
    classes = {
        0: "Birds",
        22: "Hawks",
        313: "Red-tailed Hawk",
        400: "Red-tailed Hawk (Adult)",
        401: "Red-tailed Hawk (Immature)",
        500: "Brown Creeper",
    }
    hierarchy = {22: 0, 313: 22, 400: 313, 401: 313, 500: 0}
    images = {"aa": 400, "bb": 401, "cc": 500}
    for uid, cid in images.items():
        write_image(root / "images" / f"{cid:04d}" / f"{uid}.jpg")
    (root / "images.txt").write_text("".join(f"{u} {c:04d}/{u}.jpg\n" for u, c in images.items()))
    (root / "image_class_labels.txt").write_text("".join(f"{u} {c}\n" for u, c in images.items()))
    (root / "classes.txt").write_text("".join(f"{k} {v}\n" for k, v in classes.items()))
    (root / "hierarchy.txt").write_text("".join(f"{c} {p}\n" for c, p in hierarchy.items()))
    frame = parse_dataset(_manifest("nabirds"), root)
    assert _rows(frame) == [
        ("images/0400/aa.jpg", 313, "Red-tailed Hawk", ""),
        ("images/0401/bb.jpg", 313, "Red-tailed Hawk", ""),
        ("images/0500/cc.jpg", 500, "Brown Creeper", ""),
    ]


def _mat_strings(values):
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def test_cars196(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    annotations = np.zeros(
        3, dtype=[("relative_im_path", object), ("class", object), ("test", object)]
    )
    for i, (path, cls) in enumerate(
        [("car_ims/000001.jpg", 1), ("car_ims/000002.jpg", 2), ("car_ims/000003.jpg", 2)]
    ):
        annotations[i] = (path, np.uint8(cls), np.uint8(i % 2))
        write_image(tmp_path / path)
    savemat(
        tmp_path / "cars_annos.mat",
        {
            "annotations": annotations.reshape(1, -1),
            "class_names": _mat_strings(["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]),
        },
    )
    frame = parse_dataset(_manifest("cars196"), tmp_path)
    assert _rows(frame) == [
        ("car_ims/000001.jpg", 1, "AM General Hummer SUV 2000", ""),
        ("car_ims/000002.jpg", 2, "Acura RL Sedan 2012", ""),
        ("car_ims/000003.jpg", 2, "Acura RL Sedan 2012", ""),
    ]


def test_compcars(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    root = tmp_path / "data"
    write_image(root / "image" / "1" / "10" / "2014" / "a.jpg")
    write_image(root / "image" / "2" / "3" / "2012" / "b.jpg")
    (root / "misc").mkdir()
    savemat(
        root / "misc" / "make_model_name.mat",
        {
            "make_names": _mat_strings(["Audi", "BMW"]),
            "model_names": _mat_strings([f"model{i}" for i in range(1, 11)]),
        },
    )
    frame = parse_dataset(_manifest("compcars"), root)
    assert _rows(frame) == [
        ("image/1/10/2014/a.jpg", 10, "Audi model10", ""),
        ("image/2/3/2012/b.jpg", 3, "BMW model3", ""),
    ]


def make_inshop(root: Path) -> Path:
    entries = [
        ("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", "id_00000002", "train"),
        ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "train"),
        ("img/MEN/Denim/id_00000080/01_1_front.jpg", "id_00000080", "query"),
        ("img/MEN/Denim/id_00000080/01_2_side.jpg", "id_00000080", "gallery"),
    ]
    for rel, _, _ in entries:
        write_image(root / rel)
    (root / "Eval").mkdir(parents=True)
    (root / "Eval" / "list_eval_partition.txt").write_text(
        f"{len(entries)}\nimage_name item_id evaluation_status\n"
        + "".join(f"{a}   {b}   {c}\n" for a, b, c in entries)
    )
    return root


def test_inshop_partition_file(tmp_path):
    frame = parse_dataset(_manifest("inshop"), make_inshop(tmp_path))
    assert sorted(_rows(frame)) == sorted(
        [
            ("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", 2, "id_00000002", "train"),
            ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", 2, "id_00000002", "train"),
            ("img/MEN/Denim/id_00000080/01_1_front.jpg", 80, "id_00000080", "query"),
            ("img/MEN/Denim/id_00000080/01_2_side.jpg", 80, "id_00000080", "gallery"),
        ]
    )
    partition = tmp_path / "Eval" / "list_eval_partition.txt"
    partition.write_text("\n".join(partition.read_text().splitlines()[:-1]))
    with pytest.raises(DataError, match="announces 4 images but lists 3"):
        parse_dataset(_manifest("inshop"), tmp_path)


def test_fashion200k(tmp_path):
    (tmp_path / "labels").mkdir()
    rels = [
        "women/dresses/casual/51727804/51727804_0.jpeg",
        "women/dresses/casual/51727804/51727804_1.jpeg",
        "women/skirts/mini/7000/7000_0.jpeg",
    ]
    for rel in rels:
        write_image(tmp_path / rel, fmt="JPEG")
    (tmp_path / "labels" / "dress_train_detect_all.txt").write_text(
        f"{rels[0]}\t0.9\tblack mini dress\n{rels[1]}\t0.8\tblack mini dress\n"
    )
    (tmp_path / "labels" / "skirt_test_detect_all.txt").write_text(f"{rels[2]}\t0.7\tred skirt\n")
    frame = parse_dataset(_manifest("fashion200k"), tmp_path)
    assert _rows(frame) == [
        (rels[0], 51727804, "black mini dress", ""),
        (rels[1], 51727804, "black mini dress", ""),
        (rels[2], 7000, "red skirt", ""),
    ]


def test_folder_and_csv(tmp_path):
    for cls in ("b_class", "a_class"):
        for i in range(2):
            write_image(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "a_class" / "notes.txt").write_text("not an image")
    frame = parse_dataset(_manifest("folder", path=str(tmp_path / "imgs")), tmp_path / "imgs")
    assert _rows(frame) == [
        ("a_class/0.png", 0, "a_class", ""),
        ("a_class/1.png", 0, "a_class", ""),
        ("b_class/0.png", 1, "b_class", ""),
        ("b_class/1.png", 1, "b_class", ""),
    ]
    (tmp_path / "imgs" / "list.csv").write_text(
        "path,label,split\na_class/0.png,3,train\nb_class/0.png,4,unlabeled\n"
    )
    manifest = _manifest("csv", path=str(tmp_path / "imgs" / "list.csv"))
    assert _rows(parse_dataset(manifest, tmp_path / "imgs")) == [
        ("a_class/0.png", 3, "", "train"),
        ("b_class/0.png", 4, "", "unlabeled"),
    ]
    (tmp_path / "imgs" / "list.csv").write_text("path,label,split\na_class/0.png,x,banana\n")
    with pytest.raises(DataError, match="split values"):
        parse_dataset(manifest, tmp_path / "imgs")


def test_prepare_from_a_placed_cub_archive(tmp_path):
    """Gated-style flow end to end: archive placed by hand, verified, unpacked, parsed, split."""
    make_cub(tmp_path / "src" / "CUB_200_2011")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    archive = downloads / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "CUB_200_2011", arcname="CUB_200_2011")
    manifest = {
        "name": "cub_tiny",
        "type": "cub200",
        "sources": [
            {
                "filename": archive.name,
                "gated": True,
                "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
            }
        ],
        "split": {"rule": "classes", "train": [1, 2], "test": [3, 3]},
    }
    preset = parse_data_preset({"labeled": {"dataset": manifest}})
    result = prepare_data(preset, tmp_path / "out", downloads)
    index = pd.read_parquet(result.index_path)
    assert index["split"].tolist() == ["train"] * 4 + ["test"] * 2
    assert index["label"].tolist() == [0, 0, 1, 1, 2, 2]
    assert index["image_id"].iloc[0].startswith("cub_tiny/images/001.Black_footed_Albatross/")
    assert all(Path(p).is_file() for p in index["path"])
    assert result.counts["classes_train"] == 2 and result.counts["classes_test"] == 1
    # unpacked once; a second run reuses the dataset folder
    marker = downloads / "datasets" / "cub_tiny" / ".slade-sources.json"
    stamp = marker.stat().st_mtime_ns
    prepare_data(preset, tmp_path / "out", downloads)
    assert marker.stat().st_mtime_ns == stamp
