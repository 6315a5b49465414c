"""Normalised, fuzzy matching of class names across datasets.

Names of one species differ between datasets in case, punctuation, possessives
(`Anna_Hummingbird` / `ANNAS HUMMINGBIRD`), word order (`Albatross, Black-footed`), spacing
of compounds (`Whip-poor-will` / `Whippoorwill`) and misspellings (`BROWN CREPPER`).
Names are reduced to word tokens, tokens are paired one-to-one by similarity (1 for equal
words; 0.95 for a possessive, plural or -ed/-en form; the edit ratio for a typo, which must
keep the first letter and reach 0.82; 0 otherwise), and the name score is the larger of
 - the Dice overlap of the paired tokens (2 * sum / (len a + len b)), and
 - 0.95 x the coverage of the shorter name when all its tokens are paired: a generic or
   qualified form of the same class (`ALBATROSS` vs `Black_footed_Albatross`,
   `Mallard` vs `MALLARD DUCK`), which must be removed too to avoid leakage.
Words of one contrast group (`eastern` / `western`) never pair, and a name holding one word
of a group never matches a name holding another: they name different classes even though
their spelling is one or two edits apart.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache

STOPWORDS = frozenset({"a", "an", "and", "of", "the"})
SPELLINGS = {"grey": "gray", "colour": "color", "coloured": "colored"}
QUALIFIED = 0.95  # score of a generic / qualified form (all tokens of the shorter name)
VARIANT = 0.95  # possessive, plural or -ed/-en form of the same word
VARIANT_SUFFIXES = ("s", "es", "ed", "en", "d", "n")
TYPO_FLOOR = 0.82  # below this, two different words are different words

_PARENTHESES = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_APOSTROPHES = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Match:
    """Best counterpart of a name: its score in [0, 1] and why (exact/fuzzy/qualified)."""

    score: float
    kind: str
    blocked_by: tuple[str, str] | None = None


def tokens(
    name: str, ignore_words: frozenset[str] = frozenset(), ignore_patterns: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """Lower-case word tokens without accents, apostrophes, parentheticals and stopwords."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    text = _APOSTROPHES.sub("", _PARENTHESES.sub(" ", text))
    for pattern in ignore_patterns:
        text = re.sub(pattern, " ", text)
    out: list[str] = []
    for word in _NON_WORD.split(text):
        word = SPELLINGS.get(word, word)
        if word and word not in STOPWORDS and word not in ignore_words and word not in out:
            out.append(word)
    return tuple(out)


@lru_cache(maxsize=1 << 18)
def word_similarity(a: str, b: str) -> float:
    """1 for equal words, 0.95 for a variant form, the edit ratio for a typo, else 0."""
    if a == b:
        return 1.0
    short, long = sorted((a, b), key=len)
    if len(short) >= 3 and long.startswith(short) and long[len(short) :] in VARIANT_SUFFIXES:
        return VARIANT
    if len(short) < 3 or len(long) < 4 or a[0] != b[0] or a.isdigit() or b.isdigit():
        return 0.0
    ratio = SequenceMatcher(None, a, b).ratio()
    return ratio if ratio >= TYPO_FLOOR else 0.0


def contrast_conflict(
    a: tuple[str, ...], b: tuple[str, ...], groups: tuple[frozenset[str], ...]
) -> tuple[str, str] | None:
    """The first pair of different words of one contrast group used by the two names."""
    for group in groups:
        left, right = group.intersection(a), group.intersection(b)
        if left and right and left != right:
            return (sorted(left - right or left)[0], sorted(right - left or right)[0])
    return None


def match_tokens(
    a: tuple[str, ...], b: tuple[str, ...], groups: tuple[frozenset[str], ...] = ()
) -> Match:
    """Score two token tuples (see module docstring)."""
    if not a or not b:
        return Match(0.0, "none")
    if a == b or "".join(a) == "".join(b) or set(a) == set(b):
        return Match(1.0, "exact")
    conflict = contrast_conflict(a, b, groups)
    if conflict:
        return Match(0.0, "contrast", conflict)
    pairs = sorted(
        ((word_similarity(x, y), i, j) for i, x in enumerate(a) for j, y in enumerate(b)),
        reverse=True,
    )
    used_a: set[int] = set()
    used_b: set[int] = set()
    total = 0.0
    for sim, i, j in pairs:
        if sim <= 0:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            total += sim
    dice = 2 * total / (len(a) + len(b))
    shorter = min(len(a), len(b))
    covered = len(used_a) == shorter or len(used_b) == shorter
    qualified = QUALIFIED * total / shorter if covered and len(a) != len(b) else 0.0
    if qualified > dice:
        return Match(qualified, "qualified")
    return Match(dice, "fuzzy")


class NameMatcher:
    """Finds, for any name, the best-matching name of a fixed list (plus aliases).

    Candidates are looked up through shared or similar words first, so matching thousands
    of names against hundreds stays fast.
    """

    def __init__(
        self,
        names: Iterable[str],
        aliases: Mapping[str, Sequence[str]] | None = None,
        contrast_groups: Sequence[Iterable[str]] = (),
        ignore_words: Iterable[str] = (),
        ignore_patterns: Sequence[str] = (),
    ) -> None:
        self._ignore_words = frozenset(w.lower() for w in ignore_words)
        self._ignore_patterns = tuple(ignore_patterns)
        self._groups = tuple(frozenset(w.lower() for w in g) for g in contrast_groups)
        self._entries: list[tuple[tuple[str, ...], str, bool]] = []
        by_tokens: dict[tuple[str, ...], str] = {}
        for name in names:
            toks = self.tokens(name)
            by_tokens.setdefault(toks, name)
            self._entries.append((toks, name, False))
        self.unknown_aliases: list[str] = []
        for key, others in (aliases or {}).items():
            target = by_tokens.get(self.tokens(key))
            if target is None:
                self.unknown_aliases.append(key)
                continue
            self._entries += [(self.tokens(other), target, True) for other in others]
        self._by_word: dict[str, set[int]] = {}
        for index, (toks, _, _) in enumerate(self._entries):
            for word in (*toks, "".join(toks)):  # joined: finds compounds (Whippoorwill)
                self._by_word.setdefault(word, set()).add(index)
        self._by_initial: dict[str, list[str]] = {}
        for word in self._by_word:
            self._by_initial.setdefault(word[0], []).append(word)

    def tokens(self, name: str) -> tuple[str, ...]:
        return tokens(name, self._ignore_words, self._ignore_patterns)

    def best(self, name: str) -> tuple[Match, str | None]:
        """The best match of `name` and the listed name it matched (None if nothing is close)."""
        toks = self.tokens(name)
        candidates: set[int] = set()
        for word in (*toks, "".join(toks)) if toks else ():
            for known in self._by_initial.get(word[0], ()):
                if word_similarity(word, known) > 0:
                    candidates |= self._by_word[known]
        best, best_name = Match(0.0, "none"), None
        for index in sorted(candidates):
            entry_tokens, entry_name, via_alias = self._entries[index]
            match = match_tokens(entry_tokens, toks, self._groups)
            if via_alias and match.score > 0:
                match = Match(match.score, "alias", match.blocked_by)
            if match.score > best.score or (best_name is None and match.blocked_by):
                best, best_name = match, entry_name
        return best, best_name
