"""Which unlabeled images carry the oracle's gain? Students from one teacher, subsets of labels.

Reads one seed's teacher from a finished `birds.py` run and trains the pseudo-labels-only
student (`use_basis=False, use_mining=False`) once per variant, each from another pseudo-label
file: the hidden species (the oracle) or the run's own pseudo labels, on a subset of the
unlabeled images (the others left out). The student's epoch length is fixed to the whole
set's, so a subset changes which pairs the student sees, not how long it trains. Prints
MAP@R and its difference to the control (train_control: the student's steps on labeled data
only, the pipeline's control stage) trained here.

Variants (hidden labels are diagnostics the method never sees):
  oracle                  hidden species on every unlabeled image
  oracle:labeled-source   ... on the images from the labeled set's source (scarce labels)
  oracle:other-source     ... on the images from the other sources
  oracle:near-evaluated   ... on the half of the other-source species whose mean is closest
                          to an evaluated class (the teacher's test embeddings)
  oracle:far-evaluated    ... on the other half
  oracle:near-labeled     ... on the half closest to a labeled class (the teacher's train rows)
  oracle:far-labeled      ... on the other half
  oracle:random-half      ... on a seeded random half of the other-source species
  pseudo:labeled-source   the run's pseudo labels on the labeled set's source
  pseudo:other-source     ... on the other sources

    .venv/bin/python benchmarks/oracle_attribution.py .slade/bench-birds/full 0 \\
        oracle,oracle:near-evaluated,oracle:far-evaluated [--data ...] [--validation] \\
        [--cache-dir ...]

Other arguments are birds.py's and must match the run's (--data, --validation, --cache-dir,
--set). benchmarks/README.md, round 12, has what it found.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import birds  # noqa: E402

from slade_core.clustering import write_pseudo_labels  # noqa: E402
from slade_core.config import PipelineConfig  # noqa: E402
from slade_core.directions import mean_directions, unit_rows  # noqa: E402
from slade_core.embeddings import extract_embeddings, read_embeddings  # noqa: E402
from slade_core.training import train_control  # noqa: E402
from slade_core.training.student import student_epoch_length, train_student  # noqa: E402

VARIANTS = (
    "control",
    "oracle",
    "oracle:labeled-source",
    "oracle:other-source",
    "oracle:near-evaluated",
    "oracle:far-evaluated",
    "oracle:near-labeled",
    "oracle:far-labeled",
    "oracle:random-half",
    "pseudo:labeled-source",
    "pseudo:other-source",
)


def class_means(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit mean direction of each label's rows, one row per label (sorted)."""
    classes, inverse = np.unique(labels, return_inverse=True)
    return mean_directions(unit_rows(embeddings), inverse, len(classes))


def half_of_species(
    embeddings: np.ndarray,
    species: np.ndarray,
    candidates: np.ndarray,
    reference: np.ndarray | None,
    near: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Mask of the candidate rows whose species falls in one half of the candidates' species:
    split at the median of each species mean's best cosine to a reference row (`near`: the
    upper half, else the rest), or, with no reference, a seeded random half."""
    names = np.unique(species[candidates])
    if reference is None:
        score = np.random.default_rng(seed).random(len(names))
    else:
        score = (class_means(embeddings[candidates], species[candidates]) @ reference.T).max(1)
    upper = score >= np.median(score)
    return candidates & np.isin(species, names[upper if near else ~upper])


class Attribution:
    """One teacher's unlabeled images, their hidden species and the files the variants use."""

    def __init__(self, run: Path, seed: int, config: PipelineConfig, validation: bool) -> None:
        self.config = config
        self.runtime = config.runtime.model_copy(update={"seed": seed})
        self.index_path = run / ("validation" if validation else "data") / "index.parquet"
        self.dir = run / f"seed{seed}"
        self.teacher = self.dir / "teacher" / "teacher.pt"
        needed = [self.index_path, self.teacher, self.dir / "teacher" / "unlabeled.parquet"]
        missing = [str(path) for path in needed if not path.exists()]
        if missing:
            raise SystemExit(
                f"missing {', '.join(missing)}: run birds.py with the same --data / --validation "
                f"and a student row (e.g. --rows teacher,controls) for seed {seed} first"
            )
        self.index = index = pd.read_parquet(self.index_path)
        species = birds.hidden_species(self.index_path, config.data.filter)
        unlabeled = read_embeddings(self.dir / "teacher" / "unlabeled.parquet", ["unlabeled"])
        self.ids = np.asarray(unlabeled.image_ids)
        self.embeddings = unit_rows(unlabeled.embeddings)
        self.species = np.array([species[i] for i in self.ids])
        source = index.set_index("image_id").loc[self.ids, "source"].to_numpy()
        labeled_source = index.loc[index["split"] == "train", "source"].iloc[0]
        self.labeled_source = source == labeled_source
        self.audit = species

    def reference_means(self, which: str) -> np.ndarray:
        """Class means of the evaluated (test) or labeled (train) rows, teacher embeddings."""
        if which == "evaluated":
            table = read_embeddings(self.dir / "teacher" / "teacher-test.parquet")
        else:
            path = self.dir / "attribution" / "teacher-train.parquet"
            if not path.exists():
                extract_embeddings(self.teacher, self.index_path, path, ["train"], self.runtime)
            table = read_embeddings(path)
        return class_means(table.embeddings, np.asarray(table.labels))

    def species_half(self, how: str) -> np.ndarray:
        """Mask of the other-source images whose species is in the chosen half."""
        if how == "random-half":
            return half_of_species(self.embeddings, self.species, ~self.labeled_source, None)
        side, reference = how.split("-")
        return half_of_species(
            self.embeddings,
            self.species,
            ~self.labeled_source,
            self.reference_means(reference),
            near=side == "near",
        )

    def labels(self, variant: str) -> tuple[np.ndarray, np.ndarray]:
        """(image ids, labels) of one variant."""
        kind, _, subset = variant.partition(":")
        if kind in ("oracle", "control"):
            labels = self.species
        else:
            pseudo = pd.read_parquet(self.dir / "teacher" / "pseudo_labels.parquet")
            labels = pseudo.set_index("image_id").loc[self.ids, "cluster"].to_numpy()
        if not subset:
            keep = np.ones(len(self.ids), dtype=bool)
        elif subset == "labeled-source":
            keep = self.labeled_source
        elif subset == "other-source":
            keep = ~self.labeled_source
        else:
            keep = self.species_half(subset)
        return self.ids[keep], labels[keep]

    def run(self, variant: str) -> tuple[int, float]:
        """Train the variant's student: (images it labels, test MAP@R)."""
        ids, labels = self.labels(variant)
        out = self.dir / "attribution" / variant.replace(":", "-")
        path = write_pseudo_labels(out / "pseudo_labels.parquet", ids, labels)
        student = self.config.student
        n_train = int((self.index["split"] == "train").sum())
        steps = student_epoch_length(student, n_train, len(self.ids))  # the whole set's
        update = {
            "use_basis": False,
            "use_mining": False,
            "optim": student.optim.model_copy(update={"iterations_per_epoch": steps}),
        }
        args = (self.index_path, path, self.teacher, self.config.model)
        cfg, where = student.model_copy(update=update), out / "student"
        if variant == "control":
            result = train_control(*args, cfg, self.runtime, where)
        else:
            result = train_student(*args, cfg, self.runtime, where, audit_classes=self.audit)
        metrics = birds.evaluate_checkpoint(result.checkpoint_path, self.index_path, self.runtime)
        return len(ids), metrics["map_at_r"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Any other argument is birds.py's (--data, --validation, --cache-dir, --set).",
    )
    p.add_argument("run", type=Path, help="a birds.py protocol directory, e.g. <work>/full")
    p.add_argument("seed", type=int)
    p.add_argument("variants", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    args, rest = p.parse_known_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    bird_args = birds.parse_args(rest)
    torch.set_num_threads(bird_args.threads)
    os.environ["SLADE_DATA_ROOT"] = str(birds.check_data_root(bird_args.data_root))
    config = birds.build_config(bird_args)
    attribution = Attribution(args.run, args.seed, config, bird_args.validation)
    _, control = attribution.run("control")
    print(f"control: MAP@R {100 * control:.2f}", flush=True)
    for variant in variants:
        if variant == "control":
            continue
        images, score = attribution.run(variant)
        print(
            f"{variant}: {images} images, MAP@R {100 * score:.2f}, "
            f"- control {100 * (score - control):+.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
