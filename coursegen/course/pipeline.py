"""The generator: :func:`build_course` turns a :class:`CourseRequest` into a :class:`Course`.

Five stages, each reported through the optional ``progress(stage, percent, message)`` callback
(which may raise to stop the run, e.g. on cancellation):

1. ingest: parse every source into sections, paragraphs and sentences; refuse thin material;
2. outline: cut the material into units and group them into modules; weigh terms (TF-IDF);
3. lessons: per unit, a title, summary, key points and key terms;
4. quizzes: cloze questions on each lesson's key terms, distractors from other key terms;
5. assemble: module and course titles, summaries, key terms and statistics.

Deterministic: the same request always gives the same course (no randomness, no set or hash
order leaks into the output).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import CourseGenerationError
from .models import Audience, Course, CourseRequest, CourseStats, KeyTerm, Lesson, Module, QuizQuestion
from .outline import ModulePlan, Unit, build_units, plan_modules
from .quiz import TermRef, candidate_sentences, make_question
from .terms import SentenceInfo, Vocabulary, analyse_sentence, pick_terms, sentence_score, term_scores
from .text import parse_document, split_sentences

ProgressCallback = Callable[[str, int, str], None]

STAGES = ("ingest", "outline", "lessons", "quizzes", "assemble")
MIN_WORDS = 50
SUMMARY_MIN_WORDS = 6
SUMMARY_MAX_WORDS = 45
WORDS_PER_MINUTE = 200


@dataclass(frozen=True)
class Profile:
    """How much each lesson holds, by audience."""

    summary_sentences: int
    key_points: int
    key_terms: int
    questions: int
    choices: int


PROFILES = {
    Audience.BEGINNER: Profile(summary_sentences=2, key_points=3, key_terms=4, questions=2, choices=3),
    Audience.INTERMEDIATE: Profile(summary_sentences=2, key_points=4, key_terms=5, questions=3, choices=4),
    Audience.ADVANCED: Profile(summary_sentences=3, key_points=5, key_terms=6, questions=4, choices=4),
}


@dataclass
class _Work:
    """One lesson in the making."""

    unit: Unit
    module: int
    sentences: list[SentenceInfo]
    counts: Counter[str]
    heading_keys: list[str]
    scores: dict[str, float] = field(default_factory=dict)
    terms: list[str] = field(default_factory=list)
    title: str = ""
    summary: list[SentenceInfo] = field(default_factory=list)
    lesson: Lesson | None = None


def _silent(stage: str, percent: int, message: str) -> None:
    return None


def build_course(request: CourseRequest, progress: ProgressCallback | None = None) -> Course:
    """Generate the course. Raises :class:`CourseGenerationError` for material too thin."""
    report = progress or _silent
    profile = PROFILES[request.audience]
    warnings: list[str] = []

    # -- ingest ---------------------------------------------------------------------------
    n_sources = len(request.sources)
    report("ingest", 1, f"reading {n_sources} source{'s' if n_sources > 1 else ''}")
    documents = []
    for index, source in enumerate(request.sources):
        documents.append(parse_document(source.text, index=index, title=source.title))
        report("ingest", 1 + 9 * (index + 1) // n_sources, f"read {documents[-1].title[:60]}")
    total_words = sum(doc.words for doc in documents)
    if total_words < MIN_WORDS:
        raise CourseGenerationError(
            f"the sources hold {total_words} words; a course needs at least {MIN_WORDS}"
        )

    # -- outline --------------------------------------------------------------------------
    report("outline", 12, f"outlining {total_words} words")
    units = build_units(documents, total_words)
    plans = plan_modules(units, request.modules, total_words)
    if request.modules is not None and len(plans) < request.modules:
        warnings.append(
            f"asked for {request.modules} modules; the material has {len(units)} parts, "
            f"so the course has {len(plans)}"
        )
    works = [_analyse(unit, m) for m, plan in enumerate(plans) for unit in plan.units]
    vocabulary = Vocabulary()
    for work in works:
        for sentence in work.sentences:
            vocabulary.add(sentence)
    if not any(work.counts for work in works):
        raise CourseGenerationError("the sources hold no words a course could be built on")
    all_scores = term_scores([w.counts for w in works], [w.heading_keys for w in works])
    for work, scores in zip(works, all_scores, strict=True):
        work.scores = scores
    n_modules = len(plans)
    report("outline", 25, f"{n_modules} module{'s' if n_modules > 1 else ''}, {len(works)} lessons")

    # -- lessons --------------------------------------------------------------------------
    titles: set[str] = set()
    for m in range(n_modules):
        report("lessons", 25 + 45 * m // n_modules, f"writing lessons of module {m + 1}/{n_modules}")
        for work in (w for w in works if w.module == m):
            work.terms = pick_terms(work.scores, work.counts, work.heading_keys, profile.key_terms)
            title = _lesson_title(work, vocabulary)
            other = [vocabulary.display(k) for k in work.terms if k not in title.lower()]
            work.title = _unique(title, titles, f"{title} and {other[0]}" if other else None)
            work.summary = _summary(work, profile.summary_sentences)

    # -- quizzes --------------------------------------------------------------------------
    pool = [
        TermRef(key, vocabulary.display(key), _relative(work, key), work.module, index)
        for index, work in enumerate(works)
        for key in work.terms
    ]
    for m in range(n_modules):
        report("quizzes", 70 + 20 * m // n_modules, f"writing quizzes of module {m + 1}/{n_modules}")
        for index, work in enumerate(works):
            if work.module == m:
                work.lesson = _lesson(work, index, vocabulary, pool, profile)

    # -- assemble -------------------------------------------------------------------------
    report("assemble", 92, "assembling the course")
    modules = _modules(plans, works, vocabulary)
    first = documents[0]
    course = Course(
        title=request.title or first.heading_title or request.sources[0].title or "Untitled course",
        audience=request.audience,
        summary=_course_summary(works),
        key_terms=_course_terms(works, vocabulary),
        modules=modules,
        stats=CourseStats(
            sources=n_sources,
            words=total_words,
            sentences=sum(len(w.sentences) for w in works),
            modules=len(modules),
            lessons=sum(len(m.lessons) for m in modules),
            questions=sum(len(lesson.quiz) for m in modules for lesson in m.lessons),
            minutes=sum(lesson.minutes for m in modules for lesson in m.lessons),
        ),
        warnings=warnings,
    )
    report(
        "assemble",
        98,
        f"{course.stats.modules} modules, {course.stats.lessons} lessons, {course.stats.questions} questions",
    )
    return course


# -- helpers, in stage order -------------------------------------------------------------


def _analyse(unit: Unit, module: int) -> _Work:
    sentences = [analyse_sentence(s) for p in unit.paragraphs for s in split_sentences(p)]
    counts: Counter[str] = Counter(gram.key for s in sentences for gram in s.grams)
    heading = unit.title or unit.title_base or ""
    heading_keys = analyse_sentence(heading).keys() if heading else []
    return _Work(unit, module, sentences, counts, heading_keys)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lesson_title(work: _Work, vocabulary: Vocabulary) -> str:
    if work.unit.title:
        return work.unit.title
    fresh = [k for k in work.terms if k not in work.heading_keys] or work.terms
    if not fresh:
        return work.unit.title_base or work.unit.source_title
    # a phrase among the first few terms names a part better than a single word
    best = next((k for k in fresh[:3] if " " in k), fresh[0])
    top = _capital(vocabulary.display(best))
    if work.unit.title_base:
        return f"{work.unit.title_base}: {top}"
    return top


def _unique(title: str, taken: set[str], alternative: str | None = None) -> str:
    if alternative and title.lower() in taken and alternative.lower() not in taken:
        title = alternative
    candidate, number = title, 2
    while candidate.lower() in taken:
        candidate = f"{title} ({number})"
        number += 1
    taken.add(candidate.lower())
    return candidate


def _ranked(work: _Work) -> list[SentenceInfo]:
    """The unit's readable sentences, most informative first (the opening one favoured)."""
    weights = {k: v for k, v in work.scores.items() if " " not in k}
    readable = [
        (index, s)
        for index, s in enumerate(work.sentences)
        if SUMMARY_MIN_WORDS <= s.words <= SUMMARY_MAX_WORDS and not s.text.rstrip().endswith(":")
    ]
    if not readable:
        readable = list(enumerate(work.sentences))
    scored = [
        (sentence_score(s, weights) * (1.15 if index == 0 else 1.0), -index, s) for index, s in readable
    ]
    scored.sort(key=lambda item: (-item[0], -item[1]))
    return [s for _score, _neg, s in scored]


def _in_order(work: _Work, chosen: list[SentenceInfo]) -> list[SentenceInfo]:
    return sorted(chosen, key=work.sentences.index)


def _summary(work: _Work, n: int) -> list[SentenceInfo]:
    return _in_order(work, _ranked(work)[:n])


def _relative(work: _Work, key: str) -> float:
    top = max((work.scores[k] for k in work.terms), default=1.0) or 1.0
    return round(work.scores.get(key, 0.0) / top, 3)


def _context(work: _Work, key: str) -> str:
    having = [(position, s) for position, s in enumerate(work.sentences) if s.occurrences(key)]
    readable = [(p, s) for p, s in having if 5 <= s.words <= 60] or having
    return min(readable, key=lambda item: (not item[1].defining, item[0]))[1].text


def _lesson(work: _Work, index: int, vocabulary: Vocabulary, pool: list[TermRef], profile: Profile) -> Lesson:
    ranked = _ranked(work)
    summary_texts = {s.text for s in work.summary}
    points = [s for s in ranked if s.text not in summary_texts][: profile.key_points]
    if not points:
        points = ranked[: profile.key_points]
    quiz: list[QuizQuestion] = []
    used: set[str] = set()
    for key in work.terms:
        if len(quiz) >= profile.questions:
            break
        term = TermRef(key, vocabulary.display(key), _relative(work, key), work.module, index)
        for sentence in candidate_sentences(term, work.sentences, used):
            question = make_question(term, sentence, pool, profile.choices)
            if question is not None:
                quiz.append(question)
                used.add(sentence.text)
                break
    words = work.unit.words
    return Lesson(
        title=work.title,
        source=work.unit.source_title,
        summary=" ".join(s.text for s in work.summary),
        key_points=[s.text for s in _in_order(work, points)],
        key_terms=[
            KeyTerm(term=vocabulary.display(key), weight=_relative(work, key), context=_context(work, key))
            for key in work.terms
        ],
        quiz=quiz,
        words=words,
        minutes=max(1, math.ceil(words / WORDS_PER_MINUTE + 0.5 * len(quiz))),
    )


def _modules(plans: list[ModulePlan], works: list[_Work], vocabulary: Vocabulary) -> list[Module]:
    modules = []
    titles: set[str] = set()
    for m, plan in enumerate(plans):
        members = [w for w in works if w.module == m]
        headings = plan.group_headings
        if len(headings) == 1:
            title = headings[0]
        elif len(headings) == 2 and len(headings[0]) + len(headings[1]) <= 60:
            title = f"{headings[0]} and {headings[1]}"
        else:
            scores: Counter[str] = Counter()
            counts: Counter[str] = Counter()
            for w in members:
                scores.update(w.scores)
                counts.update(w.counts)
            top = pick_terms(dict(scores), counts, [], 2)
            names = [vocabulary.display(k) for k in top] or [members[0].title]
            title = _capital(" and ".join(names))
        leads = [
            (_ranked_score(w, s), w.sentences.index(s), i, s)
            for i, w in enumerate(members)
            for s in w.summary[:1]
        ]
        best = sorted(leads, key=lambda item: (-item[0], item[2], item[1]))[:2]
        best.sort(key=lambda item: (item[2], item[1]))
        modules.append(
            Module(
                title=_unique(title, titles),
                summary=" ".join(item[3].text for item in best),
                lessons=[w.lesson for w in members if w.lesson is not None],
            )
        )
    return modules


def _ranked_score(work: _Work, sentence: SentenceInfo) -> float:
    return sentence_score(sentence, {k: v for k, v in work.scores.items() if " " not in k})


def _course_summary(works: list[_Work]) -> str:
    totals: Counter[str] = Counter()
    for w in works:
        totals.update({k: v for k, v in w.scores.items() if " " not in k})
    candidates = [
        (sentence_score(s, totals) * (1.3 if i == 0 and j == 0 else 1.0), i, j, s)
        for i, w in enumerate(works)
        for j, s in enumerate(w.summary)
    ]
    best = sorted(candidates, key=lambda item: (-item[0], item[1], item[2]))[:3]
    best.sort(key=lambda item: (item[1], item[2]))
    return " ".join(item[3].text for item in best)


def _course_terms(works: list[_Work], vocabulary: Vocabulary, k: int = 10) -> list[str]:
    scores: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for w in works:
        scores.update(w.scores)
        counts.update(w.counts)
    return [vocabulary.display(key) for key in pick_terms(dict(scores), counts, [], k)]


# -- the job's result ---------------------------------------------------------------------


def course_result(course: Course, max_bytes: int) -> dict[str, Any]:
    """The course as the job's JSON result; above ``max_bytes`` an outline that says so."""
    full = course.model_dump(mode="json")
    size = len(json.dumps(full, ensure_ascii=False).encode("utf-8"))
    if size <= max_bytes:
        return full
    outline: dict[str, Any] = {
        "truncated": True,
        "note": (
            f"the full course is {size} bytes, more than the {max_bytes} bytes a job result may "
            "hold; this is its outline (module and lesson titles, summary, key terms, statistics)"
        ),
        "full_size_bytes": size,
        "limit_bytes": max_bytes,
        "title": course.title,
        "audience": course.audience.value,
        "summary": course.summary,
        "key_terms": course.key_terms,
        "stats": course.stats.model_dump(mode="json"),
        "warnings": course.warnings,
        "modules": [
            {"title": module.title, "lessons": [lesson.title for lesson in module.lessons]}
            for module in course.modules
        ],
    }
    return outline


__all__ = ["MIN_WORDS", "STAGES", "ProgressCallback", "build_course", "course_result"]
