"""benchmarks/oracle_attribution.py: which species each attribution variant keeps."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def attribution():
    return load_benchmark("oracle_attribution")


def _rows():
    """Species 0-1 sit on the reference direction, 2-3 away from it, 4 is labeled-source."""
    rng = np.random.default_rng(0)
    directions = np.eye(4)[[0, 0, 1, 2, 0]] + 0.05 * rng.normal(size=(5, 4))
    species = np.repeat(np.arange(5), 3)
    embeddings = directions[species] + 0.01 * rng.normal(size=(15, 4))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    candidates = species != 4
    return embeddings, species, candidates, np.eye(4)[[0]]


def test_near_and_far_halves_split_the_candidate_species_by_the_reference(attribution):
    embeddings, species, candidates, reference = _rows()
    near = attribution.half_of_species(embeddings, species, candidates, reference)
    far = attribution.half_of_species(embeddings, species, candidates, reference, near=False)
    assert set(species[near]) == {0, 1}
    assert set(species[far]) == {2, 3}
    assert not (near & far).any() and ((near | far) == candidates).all()


def test_random_half_is_seeded_and_never_takes_labeled_source_rows(attribution):
    embeddings, species, candidates, _ = _rows()
    first = attribution.half_of_species(embeddings, species, candidates, None, seed=1)
    again = attribution.half_of_species(embeddings, species, candidates, None, seed=1)
    assert (first == again).all()
    assert len(set(species[first])) == 2 and not first[~candidates].any()
    # whole species only: a kept species keeps every one of its rows
    for s in set(species[first]):
        assert first[species == s].all()


def test_unknown_variant_is_a_clear_error(attribution, capsys):
    with pytest.raises(SystemExit):
        attribution.main(["run", "0", "oracle,nonsense"])
    assert "unknown variants ['nonsense']" in capsys.readouterr().err


def test_a_run_without_a_teacher_is_a_clear_error(attribution, tmp_path):
    config = attribution.birds.build_config(attribution.birds.parse_args([]))
    with pytest.raises(SystemExit, match="run birds.py with the same --data"):
        attribution.Attribution(tmp_path, 0, config, validation=False)
