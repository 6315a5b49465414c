"""Fuzzy class-name matching and the leakage filter built on it."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from slade_core.data.filtering import DEFAULT_CONTRAST_GROUPS, FilterSettings, filter_unlabeled
from slade_core.data.names import NameMatcher, tokens

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _score(a: str, b: str) -> float:
    match, _ = NameMatcher([a], contrast_groups=DEFAULT_CONTRAST_GROUPS).best(b)
    return match.score


def test_normalisation():
    assert tokens("Black_footed_Albatross") == ("black", "footed", "albatross")
    assert tokens("Anna's Hummingbird (Adult)") == ("annas", "hummingbird")
    assert tokens("Albatross, Black-footed") == ("albatross", "black", "footed")
    assert tokens("GREY Héron of the Night") == ("gray", "heron", "night")


@pytest.mark.parametrize(
    ("labeled", "other"),
    [
        ("Black_footed_Albatross", "BLACK-FOOTED ALBATROSS"),  # case, punctuation
        ("Anna_Hummingbird", "ANNAS HUMMINGBIRD"),  # possessive
        ("Clark_Nutcracker", "Clark's Nutcracker"),
        ("Black_footed_Albatross", "Albatross, Black-footed"),  # word order
        ("Brown_Creeper", "BROWN CREPPER"),  # misspellings
        ("Groove_billed_Ani", "GROVED BILLED ANI"),
        ("Parakeet_Auklet", "PARAKETT AUKLET"),
        ("Vermilion_Flycatcher", "VERMILION FLYCATHER"),
        ("Golden_winged_Warbler", "GOLD WING WARBLER"),  # -en / -ed forms
        ("Whip_poor_Will", "Whippoorwill"),  # compound spacing
        ("Whip_poor_Will", "EASTERN WIP POOR WILL"),  # qualified + typo
        ("Black_footed_Albatross", "ALBATROSS"),  # generic form
        ("Mallard", "MALLARD DUCK"),
        ("Gray_Catbird", "Grey Catbird"),  # spelling variant
    ],
)
def test_same_class_matches(labeled, other):
    assert _score(labeled, other) >= FilterSettings().threshold


@pytest.mark.parametrize(
    ("labeled", "other"),
    [
        ("Western_Meadowlark", "EASTERN MEADOWLARK"),  # one edit apart, different species
        ("Bronzed_Cowbird", "BROWN HEADED COWBIRD"),
        ("Red_headed_Woodpecker", "RED HEADED DUCK"),
        ("Clark_Nutcracker", "CLARKS GREBE"),
        ("Rock_Wren", "ROCK DOVE"),
        ("Mourning_Warbler", "MOURNING DOVE"),
        ("Pacific_Loon", "COMMON LOON"),
        ("White_breasted_Nuthatch", "CRESTED NUTHATCH"),
        ("Gray_Catbird", "ANTBIRD"),
        ("Green_Violetear", "VIOLET GREEN SWALLOW"),
        ("Great_Egret", "Greater Egret"),
        ("Chuck_will_Widow", "FAN TAILED WIDOW"),
    ],
)
def test_near_misses_do_not_match(labeled, other):
    assert _score(labeled, other) < FilterSettings().threshold


def test_filter_removes_matches_and_reports_them():
    labeled = pd.DataFrame(
        {
            "class_name": ["Brown_Creeper", "Eared_Grebe", "Western_Meadowlark"],
            "split": ["train", "test", "test"],
        }
    )
    names = ["BROWN CREPPER", "BLACK-NECKED GREBE", "EASTERN MEADOWLARK", "OSTRICH"]
    unlabeled = pd.DataFrame(
        {
            "rel": [f"{n}/{i}.jpg" for n in names for i in range(2)],
            "label": [-1] * 8,
            "class_name": [n for n in names for _ in "ab"],
            "split": "unlabeled",
        }
    )
    settings = FilterSettings(aliases={"Eared Grebe": ["Black-necked Grebe"]})
    kept, report = filter_unlabeled(unlabeled, labeled, settings, "birds")
    assert sorted(set(kept["class_name"])) == ["EASTERN MEADOWLARK", "OSTRICH"]
    assert report["removed_classes"] == 2 and report["removed_images"] == 4
    removed = {e["class_name"]: e for e in report["removed"]}
    assert removed["BLACK-NECKED GREBE"]["kind"] == "alias"
    assert removed["BLACK-NECKED GREBE"]["matched_split"] == "test"
    assert removed["BROWN CREPPER"]["matched"] == "Brown_Creeper"
    near = {e["class_name"]: e for e in report["near_misses_kept"]}
    assert set(near["EASTERN MEADOWLARK"]["blocked_by"]) == {"eastern", "western"}
    # against="test" ignores train classes
    kept, report = filter_unlabeled(
        unlabeled, labeled, settings.model_copy(update={"against": "test"}), "birds"
    )
    assert "BROWN CREPPER" in set(kept["class_name"])


@pytest.mark.skipif(not (SHARED / "birds525").is_dir(), reason="../shared/data is absent")
def test_shared_birds_overlap_is_removed():
    def read(name):
        with open(SHARED / name / "index.csv") as f:
            return pd.DataFrame(list(csv.DictReader(f)))

    cub, birds = read("cub100"), read("birds525")
    cub["split"] = "train"
    from slade_core.data.preset import load_data_preset

    settings = load_data_preset("birds_offline").filter
    kept, report = filter_unlabeled(birds, cub, settings, "birds525")
    removed = {e["class_name"]: e["matched"] for e in report["removed"]}
    assert removed["ALBATROSS"] == "Black_footed_Albatross"
    assert removed["AMERICAN GOLDFINCH"] == "American_Goldfinch"
    assert removed["BROWN CREPPER"] == "Brown_Creeper"
    assert removed["ROADRUNNER"] == "Geococcyx"
    for near_miss in (
        "BROWN HEADED COWBIRD",
        "EASTERN MEADOWLARK",
        "RED HEADED DUCK",
        "CLARKS GREBE",
        "ROCK DOVE",
    ):
        assert near_miss not in removed
    assert report["removed_classes"] == 49
