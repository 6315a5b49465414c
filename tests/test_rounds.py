"""self_training: which model labels and starts each round."""

from __future__ import annotations

import pytest

from slade_core.rounds import self_training


def test_each_round_labels_with_and_starts_from_the_previous_rounds_model():
    calls = []

    def pseudo_labels(model, r):
        calls.append(("labels", model, r))
        return f"labels{r}<-{model}"

    def train(model, labels, r):
        calls.append(("train", model, labels, r))
        return f"student{r}"

    rounds = self_training("teacher", 3, pseudo_labels, train)
    assert rounds == [
        ("labels1<-teacher", "student1"),
        ("labels2<-student1", "student2"),
        ("labels3<-student2", "student3"),
    ]
    assert calls[:4] == [
        ("labels", "teacher", 1),
        ("train", "teacher", "labels1<-teacher", 1),
        ("labels", "student1", 2),
        ("train", "student1", "labels2<-student1", 2),
    ]


def test_no_round_is_refused():
    with pytest.raises(ValueError, match="rounds must be >= 1, got 0"):
        self_training("teacher", 0, lambda m, r: None, lambda m, labels, r: m)
