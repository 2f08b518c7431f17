"""Cloze questions: a sentence of the material with one key term blanked out; the wrong
choices are other key terms of the course."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .models import QuizQuestion
from .terms import SentenceInfo, lower_initial, roots

BLANK = "_____"
MIN_QUESTION_WORDS = 6
MAX_QUESTION_WORDS = 40


@dataclass(frozen=True)
class TermRef:
    """A lesson's key term, as a candidate answer or distractor."""

    key: str
    display: str
    weight: float
    module: int
    lesson: int

    @property
    def words(self) -> frozenset[str]:
        return roots(self.key)


def candidate_sentences(term: TermRef, sentences: list[SentenceInfo], used: set[str]) -> list[SentenceInfo]:
    """Sentences that can carry a question about ``term``, best first: the term occurs once,
    the sentence is of a readable length and not used by another question."""
    fits = [
        (not s.defining, position, s)
        for position, s in enumerate(sentences)
        if MIN_QUESTION_WORDS <= s.words <= MAX_QUESTION_WORDS
        and s.text not in used
        and len(s.occurrences(term.key)) == 1
        and not s.text.rstrip().endswith(":")
    ]
    # definitions first, then the sentence's position (earlier introduces the term)
    fits.sort(key=lambda item: (item[0], item[1]))
    return [s for _defining, _position, s in fits]


def make_question(
    term: TermRef, sentence: SentenceInfo, pool: list[TermRef], n_choices: int
) -> QuizQuestion | None:
    """One cloze question, or None when the course has no distractor for it."""
    (gram,) = sentence.occurrences(term.key)
    answer = sentence.text[gram.start : gram.end]
    if gram.initial and term.display[:1].islower():
        answer = lower_initial(answer)
    prompt = sentence.text[: gram.start] + BLANK + sentence.text[gram.end :]
    in_sentence: set[str] = set().union(*(roots(key) for key in sentence.keys(1)))
    wanted_words = len(term.key.split(" "))
    candidates = [
        ref
        for ref in pool
        if ref.key != term.key
        and not (ref.words & term.words)
        and not (ref.words & in_sentence)
        and ref.display.lower() != answer.lower()
    ]
    candidates.sort(
        key=lambda ref: (
            ref.module != term.module,
            abs(len(ref.key.split(" ")) - wanted_words),
            -ref.weight,
            ref.display,
        )
    )
    distractors: list[str] = []
    seen = {answer.lower()}
    seen_roots = set(term.words)
    for ref in candidates:
        if ref.display.lower() in seen or ref.words & seen_roots:
            continue  # two choices from one root (printers, printing) would give a hint
        seen.add(ref.display.lower())
        seen_roots |= ref.words
        distractors.append(ref.display)
        if len(distractors) == n_choices - 1:
            break
    if not distractors:
        return None
    choices = sorted([answer, *distractors], key=lambda choice: _shuffle_key(prompt, choice))
    return QuizQuestion(
        prompt=prompt, choices=choices, answer=choices.index(answer), explanation=sentence.text
    )


def _shuffle_key(prompt: str, choice: str) -> str:
    """A stable pseudo-random order: the same question always lists its choices alike."""
    return hashlib.sha256(f"{prompt}\x00{choice}".encode()).hexdigest()
