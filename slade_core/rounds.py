"""Self-training rounds: each round learns from the pseudo labels of the round before.

Round r clusters the embeddings of the previous round's model (the teacher's in round 1)
into pseudo labels and trains the next student from that model on them. The pipeline runs
its rounds as stages and the bird benchmark as timed rows; both go through
`self_training`, so what a round is, and which model feeds which, is written once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Model = TypeVar("Model")
Labels = TypeVar("Labels")


def self_training(
    start: Model,
    rounds: int,
    pseudo_labels: Callable[[Model, int], Labels],
    train: Callable[[Model, Labels, int], Model],
) -> list[tuple[Labels, Model]]:
    """(pseudo labels, student) of rounds 1..`rounds`, starting from `start`.

    pseudo_labels(model, r): round r's labels from the previous round's model.
    train(model, labels, r): round r's student, started from that same model.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    model, done = start, []
    for r in range(1, rounds + 1):
        labels = pseudo_labels(model, r)
        model = train(model, labels, r)
        done.append((labels, model))
    return done
