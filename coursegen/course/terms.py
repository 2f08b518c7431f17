"""Term weighting: which words and phrases matter in each part of the material.

Candidate terms are content words (not stop words, at least three letters) and runs of two or
three adjacent content words within a sentence, keyed by their light stems (``"printing
press"``, ``"worker"`` for workers). A term's weight in a unit is TF-IDF over the units of the
course, boosted for phrases and for words of the unit's own heading.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .text import _TOKEN, STOPWORDS, count_words, is_word, root, stem

NGRAM_BOOST = {1: 1.0, 2: 1.8, 3: 2.2}
HEADING_BOOST = 1.6
MAX_NGRAM = 3

_DEFINING = re.compile(
    r"\b(is|are|was|were|means|refers to|called|known as|consists? of|describes?)\b", re.IGNORECASE
)


@dataclass(frozen=True)
class Gram:
    key: str
    start: int
    end: int
    initial: bool


@dataclass(frozen=True)
class SentenceInfo:
    text: str
    words: int
    grams: tuple[Gram, ...]

    def keys(self, n: int | None = None) -> list[str]:
        """Distinct term keys in order of first appearance (only ``n``-grams when given)."""
        return self._keys.get(n, []) if n is not None else self._keys[None]

    @functools.cached_property
    def _keys(self) -> dict[int | None, list[str]]:
        by_n: dict[int | None, dict[str, None]] = {None: {}}
        for gram in self.grams:
            by_n[None].setdefault(gram.key, None)
            by_n.setdefault(gram.key.count(" ") + 1, {}).setdefault(gram.key, None)
        return {n: list(keys) for n, keys in by_n.items()}

    def occurrences(self, key: str) -> list[Gram]:
        return [gram for gram in self.grams if gram.key == key]

    @functools.cached_property
    def defining(self) -> bool:
        return _DEFINING.search(self.text) is not None


@functools.lru_cache(maxsize=1 << 16)
def _content(token: str) -> str | None:
    if not is_word(token):
        return None
    lowered = token.lower()
    key = stem(token)
    if len(key) < 3 or lowered in STOPWORDS or key in STOPWORDS:
        return None
    if not key.replace("-", "").isalpha():
        return None
    return key


def analyse_sentence(text: str) -> SentenceInfo:
    """The sentence's candidate terms with their character spans."""
    grams: list[Gram] = []
    run: list[tuple[str, int, int, bool]] = []
    first_word = True

    def close_run() -> None:
        for n in range(1, MAX_NGRAM + 1):
            for i in range(len(run) - n + 1):
                part = run[i : i + n]
                grams.append(Gram(" ".join(p[0] for p in part), part[0][1], part[-1][2], part[0][3]))
        run.clear()

    for match in _TOKEN.finditer(text):
        token = match.group()
        start, end = match.span()
        glued = text[start - 1 : start] == "_" or text[end : end + 1] == "_"  # __dunder__, snake_case
        key = None if glued else _content(token)
        if key is None:
            close_run()
        else:
            run.append((key, start, end, first_word))
        if is_word(token):
            first_word = False
    close_run()
    return SentenceInfo(text, count_words(text), tuple(grams))


@dataclass
class Vocabulary:
    """How each term key is best written: its most common surface form."""

    _forms: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, sentence: SentenceInfo) -> None:
        for gram in sentence.grams:
            surface = sentence.text[gram.start : gram.end]
            if gram.initial:
                surface = lower_initial(surface)
            self._forms.setdefault(gram.key, Counter())[surface] += 1

    def display(self, key: str) -> str:
        forms = self._forms.get(key)
        if not forms:
            return key
        return min(forms.items(), key=lambda item: (-item[1], item[0]))[0]


def lower_initial(surface: str) -> str:
    """``"Pollen grains"`` -> ``"pollen grains"``, but ``"ATP"`` and ``"McDonald"`` stay."""
    first = surface.split(" ", 1)[0]
    if len(first) > 1 and (first.isupper() or any(ch.isupper() for ch in first[1:])):
        return surface
    return surface[:1].lower() + surface[1:]


def term_scores(
    unit_counts: Sequence[Counter[str]], heading_keys: Sequence[Iterable[str]]
) -> list[dict[str, float]]:
    """TF-IDF of every candidate term in every unit (units are the 'documents')."""
    n_units = len(unit_counts)
    df: Counter[str] = Counter()
    for counts in unit_counts:
        df.update(counts.keys())
    scores = []
    for counts, headings in zip(unit_counts, heading_keys, strict=True):
        heading_set = set(headings)
        unit: dict[str, float] = {}
        for key, tf in counts.items():
            idf = math.log((1 + n_units) / (1 + df[key])) + 1.0
            boost = NGRAM_BOOST[key.count(" ") + 1] * (HEADING_BOOST if key in heading_set else 1.0)
            unit[key] = tf * idf * boost * _verb_penalty(key)
        scores.append(unit)
    return scores


def _verb_penalty(key: str) -> float:
    """Single words that look like verb forms (printed, combining) make poor key terms."""
    if " " in key or len(key) <= 5:
        return 1.0
    if key.endswith("ed"):
        return 0.4
    if key.endswith("ing"):
        return 0.75
    return 1.0


@functools.lru_cache(maxsize=1 << 16)
def roots(key: str) -> frozenset[str]:
    return frozenset(root(word) for word in key.split(" "))


def pick_terms(scores: dict[str, float], counts: Counter[str], headings: Iterable[str], k: int) -> list[str]:
    """Up to ``k`` key terms: the heaviest first, none sharing a word with one already picked.

    A term must occur twice (phrases always, single words at first) unless it is in the
    heading; when that leaves too few, single words that occur once are allowed.
    """
    heading_set = set(headings)
    picked: list[str] = []
    used_words: set[str] = set()
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    for strict in (True, False):
        for key, _score in ranked:
            if len(picked) >= k:
                return picked
            if key in picked:
                continue
            n = key.count(" ") + 1
            minimum = 2 if (strict or n > 1) else 1
            if counts[key] < minimum and key not in heading_set:
                continue
            words = roots(key)
            if words & used_words:
                continue
            picked.append(key)
            used_words |= words
    return picked


def sentence_score(sentence: SentenceInfo, weights: dict[str, float]) -> float:
    """How much of what matters a sentence says, per word."""
    keys = sentence.keys(1)
    if not keys or sentence.words == 0:
        return 0.0
    return sum(weights.get(key, 0.0) for key in keys) / math.sqrt(sentence.words)
