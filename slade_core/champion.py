"""The champion/challenger policy: does a newly trained model take the `champion` alias?

Kept free of the registry so it can be tested with plain numbers: tasks/publish.py reads
each version's recorded score into a `RecordedScore` and passes a callable that re-scores
both models from the image files. With publish.champion_beats_control the new model must
also beat its own control (`promote`): a student that wins only by training longer, not
from the unlabeled images, stays a challenger.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RecordedScore:
    """A model's recorded test MAP@R and what it was measured on."""

    map_at_r: float
    preset: str
    protocol: str
    data_digest: str

    def same_measurement(self, other: RecordedScore) -> bool:
        """Same preset, protocol and images: the two recorded scores compare directly."""
        return (self.preset, self.protocol, self.data_digest) == (
            other.preset,
            other.protocol,
            other.data_digest,
        )


@dataclass(frozen=True)
class Verdict:
    """The two MAP@R values that were compared, and whether the new model won."""

    new: float
    champion: float

    @property
    def new_wins(self) -> bool:
        """Strictly greater: a tie keeps the champion, and so does a NaN on either side
        (every comparison with NaN is false)."""
        return self.new > self.champion


def judge(
    new: RecordedScore,
    champion: RecordedScore | None,
    rescore: Callable[[], tuple[float, float]],
) -> Verdict:
    """Compare by the recorded scores when both were measured the same way; otherwise
    (another preset, protocol or image set, or a champion without a record) by `rescore()`,
    the (new, champion) MAP@R of both models on the new model's test images."""
    if champion is not None and new.same_measurement(champion):
        return Verdict(new.map_at_r, champion.map_at_r)
    return Verdict(*rescore())


def promote(new_wins: bool, student_minus_control: float | None = None) -> bool:
    """Whether the new model takes `champion`: it beat the champion (`Verdict.new_wins`;
    True when there is none) and, when the rule asks (a gain is given), its own control
    too: student - control MAP@R > 0 (a tie or NaN does not count)."""
    return new_wins and (student_minus_control is None or student_minus_control > 0)
