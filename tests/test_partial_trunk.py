"""Partial-trunk training: the prefix/suffix split, its feature-map cache, the BatchNorm rule,
repeats in m-per-class batches, the cosine schedule and the pretrained-trunk row."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_training import _model, _runtime, _student, _teacher, dataset  # noqa: F401

from slade_core.config import EvalConfig, ModelConfig, OptimConfig
from slade_core.embeddings import read_embeddings
from slade_core.evaluate import TRUNK_ROW, evaluate
from slade_core.features import cached_prefix_features, prefix_feature_file
from slade_core.images import build_transform, load_rgb
from slade_core.models import create_model, load_model
from slade_core.samplers import first_occurrences
from slade_core.training import train_student, train_teacher
from slade_core.training.loop import RESUME_FILE


def _spec(backbone="tf_efficientnet_lite0", **kw) -> ModelConfig:
    base = {"backbone": backbone, "weights": "none", "embedding_dim": 16, "image_size": 64}
    return ModelConfig(**(base | kw))


def _batchnorm_buffers(model) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in model.trunk.state_dict().items()
        if k.endswith(("running_mean", "running_var"))
    }


@pytest.mark.parametrize(
    ("backbone", "blocks", "last_prefix"),
    [("tf_efficientnet_lite0", 1, "trunk.blocks.5"), ("tf_efficientnet_lite0", 2, "trunk.blocks.4"),
     ("resnet10t", 1, "trunk.layer3.0")],
)  # fmt: skip
def test_prefix_then_suffix_is_the_whole_network(backbone, blocks, last_prefix):
    torch.manual_seed(0)
    model = create_model(_spec(backbone, trainable_blocks=blocks)).eval()
    assert model.prefix_modules()[-1] == last_prefix
    assert all(
        not p.requires_grad
        for n in model.prefix_modules()
        for p in model.get_submodule(n).parameters()
    )
    images = torch.randn(3, 3, 64, 64)
    maps = model.prefix(images)
    assert maps.ndim == 4
    whole = F.normalize(model.head(model.trunk(images)), dim=-1)
    torch.testing.assert_close(model.embed_features(maps), whole, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model(images), whole, atol=1e-5, rtol=1e-4)


def test_backbone_that_is_not_a_chain_is_refused_with_advice():
    with pytest.raises(ValueError, match="use 0 .* or -1"):
        create_model(_spec("vit_tiny_patch16_224", image_size=224, trainable_blocks=1))


def test_batchnorm_layers_stay_in_eval_mode_unless_asked():
    frozen = create_model(_spec(trainable_blocks=2)).train()
    norms = [m for m in frozen.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert frozen.trunk.blocks[6].training and frozen.head.training
    # affine weights of the trainable blocks still train
    assert frozen.trunk.bn2.weight.requires_grad and not frozen.trunk.bn1.weight.requires_grad
    trained = create_model(_spec(trainable_blocks=2, batchnorm="train")).train()
    assert trained.trunk.blocks[6][0].bn1.training and not trained.trunk.blocks[4][0].bn1.training


def test_feature_map_cache_is_float16_and_shared_by_any_suffix_weights(tmp_path):
    from test_features import make_index

    frame = make_index(tmp_path)
    runtime = _runtime({"cache": tmp_path / "cache"})
    torch.manual_seed(0)
    model = create_model(_spec(trainable_blocks=1))
    maps = cached_prefix_features(model, frame, 0, runtime)
    assert maps.dtype == torch.float16 and maps.shape[1:] == (192, 2, 2)
    path = prefix_feature_file(model, frame, 0, runtime)
    with torch.no_grad():  # a trained suffix and head: the prefix (and its cache) is unchanged
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    assert prefix_feature_file(model, frame, 0, runtime) == path
    with torch.no_grad():  # a different prefix gets its own file
        model.trunk.conv_stem.weight.mul_(2.0)
    assert prefix_feature_file(model, frame, 0, runtime) != path
    whole = create_model(_spec(trainable_blocks=-1))
    with pytest.raises(ValueError, match="no frozen prefix"):
        prefix_feature_file(whole, frame, 0, runtime)


@pytest.mark.parametrize("blocks", [1, -1])
def test_training_keeps_loaded_batchnorm_statistics_by_default(dataset, tmp_path, blocks):  # noqa: F811
    spec = _model(trainable_blocks=blocks)
    torch.manual_seed(0)
    loaded = _batchnorm_buffers(create_model(spec))
    assert loaded
    result = train_teacher(
        dataset["index"], spec, _teacher(epochs=1, iterations=3), _runtime(dataset), tmp_path
    )
    trained, _ = load_model(result.checkpoint_path)
    after = _batchnorm_buffers(trained)
    assert all(torch.equal(loaded[k], after[k]) for k in loaded)
    weights = {k: v for k, v in trained.trunk.state_dict().items() if k.endswith("weight")}
    torch.manual_seed(0)
    start = create_model(spec).trunk.state_dict()
    assert any(not torch.equal(start[k], weights[k]) for k in weights)  # the trunk did train


def test_batchnorm_train_mode_updates_statistics(dataset, tmp_path):  # noqa: F811
    spec = _model(trainable_blocks=-1).model_copy(update={"batchnorm": "train"})
    torch.manual_seed(0)
    loaded = _batchnorm_buffers(create_model(spec))
    result = train_teacher(
        dataset["index"], spec, _teacher(epochs=1, iterations=3), _runtime(dataset), tmp_path
    )
    after = _batchnorm_buffers(load_model(result.checkpoint_path)[0])
    assert any(not torch.equal(loaded[k], after[k]) for k in loaded)


def test_resumed_partial_trunk_run_keeps_the_rule_and_equals_an_uninterrupted_one(
    dataset,  # noqa: F811
    tmp_path,
):
    spec = _model(trainable_blocks=1)
    teacher = _teacher(epochs=2, iterations=3).model_copy(
        update={"optim": OptimConfig(epochs=2, lr=1e-2, iterations_per_epoch=3, schedule="cosine")}
    )
    runtime = _runtime(dataset)
    full = train_teacher(dataset["index"], spec, teacher, runtime, tmp_path / "full")

    def kill(epoch, total, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_teacher(dataset["index"], spec, teacher, runtime, tmp_path / "k", kill)
    assert (tmp_path / "k" / RESUME_FILE).is_file()
    resumed = train_teacher(dataset["index"], spec, teacher, runtime, tmp_path / "k")
    assert resumed.history == full.history
    a, b = load_model(full.checkpoint_path)[0], load_model(resumed.checkpoint_path)[0]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    torch.manual_seed(0)
    loaded = _batchnorm_buffers(create_model(spec))
    assert all(torch.equal(loaded[k], _batchnorm_buffers(b)[k]) for k in loaded)
    # cosine: the rate falls from lr to ~0 over the two epochs
    assert full.history[0]["lr"] < 1e-2 and full.history[-1]["lr"] == pytest.approx(0, abs=1e-9)


def test_first_occurrences_marks_each_rows_first_draw():
    keep = first_occurrences(torch.tensor([4, 2, 4, 7, 2, 2]))
    assert keep.tolist() == [True, True, False, True, False, False]


def test_repeated_rows_never_form_pairs_in_the_student(dataset, tmp_path):  # noqa: F811
    """m = 4 draws from clusters of 2 images: repeats are certain. The student drops them,
    so a batch's pseudo-labeled half has 2 clusters x 2 distinct images, at most 4 ordered
    positive pairs (24 with the repeats, which always pass T1), and history shows their share."""
    import pandas as pd

    pseudo = pd.read_parquet(dataset["pseudo"])
    pseudo["cluster"] = np.arange(len(pseudo)) // 2  # clusters of 2 images
    path = tmp_path / "pairs.parquet"
    pseudo.to_parquet(path, index=False)
    teacher = train_teacher(
        dataset["index"], _model(1), _teacher(epochs=1, iterations=1), _runtime(dataset),
        tmp_path / "t",
    ).checkpoint_path  # fmt: skip
    student = _student(True, True, epochs=1, warmup=0).model_copy(
        update={"m_per_class": 4, "labeled_batch_size": 8, "unlabeled_batch_size": 8}
    )
    result = train_student(
        dataset["index"], path, teacher, _model(1), student, _runtime(dataset), tmp_path / "s"
    )
    last = result.history[-1]
    assert last["duplicate_fraction"] == pytest.approx(0.5)  # 2 of every 4 draws repeat
    assert last["mined_pos"] <= 4
    assert last["grad_rank"] > 0 and last["grad_ce"] > 0


def test_evaluate_reports_the_pretrained_trunk_first(dataset, tmp_path):  # noqa: F811
    # fixed trunk weights from a file: random ones ("none") differ on every create_model
    weights = tmp_path / "trunk.pt"
    torch.save(create_model(_model()).trunk.state_dict(), weights)
    spec = _model(trainable_blocks=1).model_copy(
        update={"weights": "checkpoint", "checkpoint_path": weights}
    )
    teacher = train_teacher(
        dataset["index"], spec, _teacher(epochs=1, iterations=2), _runtime(dataset), tmp_path
    )
    result = evaluate(
        {"teacher": teacher.checkpoint_path}, dataset["index"], tmp_path / "eval",
        EvalConfig(examples=2), _runtime(dataset), trunk=spec,
    )  # fmt: skip
    models = json.loads(result.metrics_path.read_text())["models"]
    assert list(models) == [TRUNK_ROW, "teacher"]
    # the row is the untrained trunk's own pooled features, computed here from the images
    # with the whole trunk (the stage reads its float16 prefix cache instead)
    table = read_embeddings(tmp_path / "eval" / f"embeddings_{TRUNK_ROW}.parquet")
    paths = pd.read_parquet(dataset["index"]).set_index("image_id").loc[table.image_ids, "path"]
    net = create_model(spec).eval()
    transform = build_transform(spec.image_size, False, *net.normalization())
    with torch.inference_mode():
        images = torch.stack([transform(load_rgb(path)) for path in paths])
        pooled = F.normalize(net.trunk(images), dim=-1).numpy()
    np.testing.assert_allclose(table.embeddings, pooled, atol=2e-3)
    teacher_rows = read_embeddings(tmp_path / "eval" / "embeddings_teacher.parquet")
    assert teacher_rows.embeddings.shape[1] != pooled.shape[1] or not np.allclose(
        teacher_rows.embeddings, pooled, atol=2e-3
    )
    assert TRUNK_ROW in result.report_path.read_text()
    with pytest.raises(ValueError, match="baseline row"):
        evaluate(
            {TRUNK_ROW: teacher.checkpoint_path}, dataset["index"], tmp_path / "e2",
            EvalConfig(), _runtime(dataset),
        )  # fmt: skip
