"""The course generator on real documents (tests/data, coursegen/samples): structure, quizzes
built from the material, determinism, thin material, size limits, the job result's cap."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from coursegen.course import (
    MAX_TOTAL_BYTES,
    Course,
    CourseGenerationError,
    CourseRequest,
    build_course,
    course_result,
)
from coursegen.course.quiz import BLANK
from coursegen.course.text import stem

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SAMPLES = ROOT / "coursegen" / "samples"
DOCUMENTS = {
    "printing-press.md": DATA / "printing-press.md",
    "honeybees.txt": DATA / "honeybees.txt",
    "python-execution-model.txt": DATA / "python-execution-model.txt",
    "water-cycle.md": SAMPLES / "water-cycle.md",
    "photosynthesis.md": SAMPLES / "photosynthesis.md",
}
TENANT, USER = "6f1c1d4e-8a43-4d7e-9a55-0b8f0f4d2a11", "0f5a7c3b-2d1e-4f60-8b9a-3c2d1e0f4a5b"


def text_of(name: str) -> str:
    return DOCUMENTS[name].read_text(encoding="utf-8")


def request(*names: str, **fields: Any) -> CourseRequest:
    sources = [{"title": name, "text": text_of(name)} for name in names]
    return CourseRequest.model_validate({"tenant_id": TENANT, "user_id": USER, "sources": sources, **fields})


def words_of(text: str) -> str:
    """Whitespace collapsed and emphasis stars dropped, to find a sentence in its source."""
    return " ".join(text.replace("*", "").split())


def phrase_stem(text: str) -> str:
    return " ".join(stem(word) for word in re.findall(r"[\w'\u2019-]+", text))


@pytest.fixture(scope="module")
def courses() -> dict[str, Course]:
    return {name: build_course(request(name)) for name in DOCUMENTS}


def test_a_document_with_headings_becomes_modules_of_lessons(courses: dict[str, Course]) -> None:
    course = courses["printing-press.md"]
    assert course.title == "The Printing Press"  # the document's own heading, none was given
    assert len(course.modules) >= 3
    invention = next(m for m in course.modules if m.title == "Gutenberg's invention")
    assert [lesson.title for lesson in invention.lessons] == [
        "Movable metal type",
        "The press and the ink",
        "The Gutenberg Bible",
    ]
    for module in course.modules:
        assert module.summary and module.lessons
        for lesson in module.lessons:
            assert lesson.summary and lesson.key_points and len(lesson.key_terms) >= 2 and lesson.quiz
            assert lesson.source == "printing-press.md" and lesson.minutes >= 1
            for term in lesson.key_terms:
                assert 0 < term.weight <= 1
                assert phrase_stem(term.term) in phrase_stem(term.context)  # the context says it
    stats = course.stats
    assert stats.modules == len(course.modules)
    assert stats.lessons == sum(len(m.lessons) for m in course.modules)
    assert stats.questions == sum(len(lesson.quiz) for m in course.modules for lesson in m.lessons)
    assert 850 < stats.words < 1000
    assert "movable type" in {term.lower() for term in course.key_terms} | {
        t.term.lower() for m in course.modules for lesson in m.lessons for t in lesson.key_terms
    }


def test_plain_text_is_cut_into_lessons_with_titles_from_their_terms(courses: dict[str, Course]) -> None:
    course = courses["honeybees.txt"]
    lessons = [lesson for m in course.modules for lesson in m.lessons]
    assert len(course.modules) >= 2 and len(lessons) >= 4
    titles = [lesson.title for lesson in lessons]
    assert len(set(titles)) == len(titles) and all(titles)
    assert "Waggle dance" in titles  # the phrase the third part is about
    assert all(80 <= lesson.words <= 300 for lesson in lessons)


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_every_quiz_is_a_sentence_of_the_material_with_a_key_term_blanked(
    courses: dict[str, Course], name: str
) -> None:
    course = courses[name]
    source = words_of(text_of(name))
    all_terms = {t.term.lower() for m in course.modules for lesson in m.lessons for t in lesson.key_terms}
    questions = 0
    for module in course.modules:
        for lesson in module.lessons:
            lesson_terms = {phrase_stem(t.term) for t in lesson.key_terms}
            for q in lesson.quiz:
                questions += 1
                assert q.prompt.count(BLANK) == 1
                assert len(set(c.lower() for c in q.choices)) == len(q.choices) >= 2
                answer = q.choices[q.answer]
                # the blank filled with the answer gives back a sentence of the source
                assert q.prompt.replace(BLANK, answer).lower() == q.explanation.lower()
                assert words_of(q.explanation) in source
                assert phrase_stem(answer) in lesson_terms
                for i, choice in enumerate(q.choices):
                    if i == q.answer:
                        continue
                    assert choice.lower() in all_terms, f"{choice!r} is not a key term"
                    assert phrase_stem(choice) != phrase_stem(answer)
                    # a distractor that the sentence contains would be a giveaway or a second answer
                    assert f" {phrase_stem(choice)} " not in f" {phrase_stem(q.explanation)} "
    assert questions >= 2 * course.stats.lessons


def test_the_same_request_gives_the_same_course_in_any_process() -> None:
    req = request("printing-press.md", "honeybees.txt", audience="advanced")
    first = build_course(req).model_dump_json()
    assert build_course(req).model_dump_json() == first
    script = (
        "import sys; from coursegen.course import CourseRequest, build_course; "
        "print(build_course(CourseRequest.model_validate_json(sys.stdin.read())).model_dump_json())"
    )
    for seed in ("1", "4242"):  # another hash seed: no set or dict order may leak into the output
        done = subprocess.run(
            [sys.executable, "-c", script],
            input=req.model_dump_json(),
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=60,
            check=True,
        )
        assert done.stdout.strip() == first


def test_audience_sets_how_much_each_lesson_holds() -> None:
    beginner = build_course(request("water-cycle.md", audience="beginner"))
    advanced = build_course(request("water-cycle.md", audience="advanced"))
    for course, choices in ((beginner, 3), (advanced, 4)):
        for m in course.modules:
            for lesson in m.lessons:
                assert all(len(q.choices) <= choices for q in lesson.quiz)
    assert advanced.stats.questions > beginner.stats.questions
    count = lambda c, f: sum(len(getattr(lesson, f)) for m in c.modules for lesson in m.lessons)  # noqa: E731
    assert count(advanced, "key_points") > count(beginner, "key_points")
    assert count(advanced, "key_terms") > count(beginner, "key_terms")


def test_the_module_count_can_be_asked_for_within_what_the_material_allows() -> None:
    two = build_course(request("printing-press.md", modules=2))
    assert len(two.modules) == 2 and not two.warnings
    assert sum(len(m.lessons) for m in two.modules) == 8  # all the material is still there
    many = build_course(request("photosynthesis.md", modules=12))
    assert len(many.modules) == many.stats.lessons < 12
    assert many.warnings and "asked for 12 modules" in many.warnings[0]


def test_several_sources_are_all_used_and_named() -> None:
    course = build_course(request("honeybees.txt", "photosynthesis.md", title="Nature"))
    assert course.title == "Nature"
    sources = {lesson.source for m in course.modules for lesson in m.lessons}
    assert sources == {"honeybees.txt", "photosynthesis.md"}
    assert course.stats.sources == 2


def test_progress_goes_through_the_five_stages_and_a_raising_callback_stops_the_run() -> None:
    seen: list[tuple[str, int, str]] = []
    build_course(
        request("printing-press.md"), lambda stage, percent, text: seen.append((stage, percent, text))
    )
    stages = list(dict.fromkeys(stage for stage, _, _ in seen))
    assert stages == ["ingest", "outline", "lessons", "quizzes", "assemble"]
    percents = [percent for _, percent, _ in seen]
    assert percents == sorted(percents) and 0 <= percents[0] and percents[-1] < 100

    class Stop(Exception):
        pass

    def stop_at_lessons(stage: str, percent: int, text: str) -> None:
        if stage == "lessons":
            raise Stop

    with pytest.raises(Stop):
        build_course(request("printing-press.md"), stop_at_lessons)


def test_material_under_50_words_is_refused_with_a_clear_error() -> None:
    forty_nine = " ".join(["Bees"] + ["collect nectar"] * 24) + "."
    thin = CourseRequest(tenant_id=TENANT, user_id=USER, sources=[{"text": forty_nine}])
    with pytest.raises(CourseGenerationError, match="the sources hold 49 words; a course needs at least 50"):
        build_course(thin)
    fifty = CourseRequest(tenant_id=TENANT, user_id=USER, sources=[{"text": forty_nine + " Done."}])
    assert build_course(fifty).stats.words == 50
    # headings and code are not material
    only_code = "# Title\n\n```\n" + "x = 1\n" * 100 + "```\n"
    with pytest.raises(CourseGenerationError, match="hold 0 words"):
        build_course(CourseRequest(tenant_id=TENANT, user_id=USER, sources=[{"text": only_code}]))


def test_requests_are_checked_against_their_limits() -> None:
    base: dict[str, Any] = {"tenant_id": TENANT, "user_id": USER, "sources": [{"text": "x"}]}

    def problems(**changes: Any) -> list[str]:
        with pytest.raises(ValidationError) as caught:
            CourseRequest.model_validate({**base, **changes})
        return [".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in caught.value.errors()]

    exactly = "a" * (MAX_TOTAL_BYTES - 10)
    CourseRequest.model_validate({**base, "sources": [{"text": exactly}, {"text": "b" * 10}]})
    too_big = problems(sources=[{"text": exactly}, {"text": "b" * 11}])
    assert too_big == [
        ": "
        + f"Value error, the sources hold {MAX_TOTAL_BYTES + 1} bytes of text; at most 2097152 (2 MiB) in all"
    ]
    assert problems(sources=[{"text": "é" * (MAX_TOTAL_BYTES // 2 + 1)}])  # bytes, not characters
    assert problems(sources=[]) == ["sources: List should have at least 1 item after validation, not 0"]
    assert problems(sources=[{"text": "x"}] * 21)[0].startswith("sources: List should have at most 20 items")
    assert problems(sources=[{"text": ""}])[0].startswith("sources.0.text: String should have at least 1")
    assert problems(modules=13)[0].startswith("modules: Input should be less than or equal to 12")
    assert problems(modules=0)[0].startswith("modules: Input should be greater than or equal to 1")
    assert problems(audience="expert")[0].startswith("audience: Input should be 'beginner'")
    assert problems(tenant_id="acme")[0].startswith("tenant_id: Input should be a valid UUID")
    assert problems(title="   ") == ["title: Value error, the title must not be blank"]
    assert problems(colour="blue") == ["colour: Extra inputs are not permitted"]
    assert CourseRequest.model_validate(base).payload() == {
        "tenant_id": TENANT,
        "user_id": USER,
        "audience": "intermediate",
        "sources": [{"title": "", "text": "x"}],
    }


def test_the_result_is_the_course_or_its_outline_above_the_cap(courses: dict[str, Course]) -> None:
    course = courses["printing-press.md"]
    full = course_result(course, 256 * 1024)
    assert full == json.loads(course.model_dump_json())
    size = len(json.dumps(full, ensure_ascii=False).encode())
    outline = course_result(course, size - 1)
    assert outline["truncated"] is True
    assert outline["full_size_bytes"] == size and outline["limit_bytes"] == size - 1
    assert "outline" in outline["note"]
    assert [m["title"] for m in outline["modules"]] == [m.title for m in course.modules]
    assert outline["modules"][1]["lessons"] == [lesson.title for lesson in course.modules[1].lessons]
    assert outline["stats"] == course.stats.model_dump(mode="json")
    assert len(json.dumps(outline, ensure_ascii=False).encode()) < size


def test_two_mebibytes_of_material_make_a_bounded_course_in_reasonable_time() -> None:
    blob = "\n\n".join(text_of(name) for name in DOCUMENTS)
    copies = MAX_TOTAL_BYTES // len(blob.encode()) // 10
    sources = [{"title": f"part {i}", "text": "\n\n".join([blob] * copies)} for i in range(10)]
    req = CourseRequest(tenant_id=uuid.UUID(TENANT), user_id=uuid.UUID(USER), sources=sources)
    assert sum(len(s.text.encode()) for s in req.sources) > 0.9 * MAX_TOTAL_BYTES
    course = build_course(req)  # the suite's per-test timeout bounds the time
    assert course.stats.words > 300_000
    assert len(course.modules) <= 8 and all(len(m.lessons) <= 8 for m in course.modules)
    result = course_result(course, 256 * 1024)
    assert len(json.dumps(result, ensure_ascii=False).encode()) <= 256 * 1024
