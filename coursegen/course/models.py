"""The generator's input (:class:`CourseRequest`) and output (:class:`Course`)."""

from __future__ import annotations

import enum
import uuid

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_SOURCES = 20
#: all source texts together, in UTF-8 bytes
MAX_TOTAL_BYTES = 2 * 1024 * 1024
MAX_MODULES = 12
MAX_TITLE_CHARS = 200


class Audience(enum.StrEnum):
    BEGINNER = "beginner"
    INTERMEDIATE = "intermediate"
    ADVANCED = "advanced"


class Source(BaseModel):
    """One document of source material: markdown or plain text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = Field("", max_length=MAX_TITLE_CHARS)
    text: str = Field(min_length=1)

    @field_validator("title")
    @classmethod
    def _strip_title(cls, value: str) -> str:
        return value.strip()


class CourseRequest(BaseModel):
    """What a producer sends: who asks, for whom, and the material to build the course from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    #: the course's title; default: the first source's own heading, or its title
    title: str | None = Field(None, max_length=MAX_TITLE_CHARS)
    audience: Audience = Audience.INTERMEDIATE
    sources: list[Source] = Field(min_length=1, max_length=MAX_SOURCES)
    modules: int | None = Field(None, ge=1, le=MAX_MODULES, description="module count; default: automatic")

    @field_validator("title")
    @classmethod
    def _title_not_blank(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("the title must not be blank")
        return value

    @model_validator(mode="after")
    def _check_size(self) -> CourseRequest:
        size = sum(len(source.text.encode("utf-8", "surrogatepass")) for source in self.sources)
        if size > MAX_TOTAL_BYTES:
            raise ValueError(
                f"the sources hold {size} bytes of text; at most {MAX_TOTAL_BYTES} (2 MiB) in all"
            )
        return self

    def payload(self) -> dict[str, object]:
        """The JSON-safe dict to send as the job's payload."""
        return self.model_dump(mode="json", exclude_none=True)


class KeyTerm(BaseModel):
    term: str
    #: relative importance within its lesson, 0..1
    weight: float
    #: the sentence of the material that best introduces the term
    context: str


class QuizQuestion(BaseModel):
    """A cloze question: a sentence of the material with a key term blanked out."""

    prompt: str
    choices: list[str]
    #: index of the right answer in ``choices``
    answer: int
    #: the full sentence, shown after answering
    explanation: str


class Lesson(BaseModel):
    title: str
    source: str
    summary: str
    key_points: list[str]
    key_terms: list[KeyTerm]
    quiz: list[QuizQuestion]
    words: int
    minutes: int


class Module(BaseModel):
    title: str
    summary: str
    lessons: list[Lesson]


class CourseStats(BaseModel):
    sources: int
    words: int
    sentences: int
    modules: int
    lessons: int
    questions: int
    minutes: int


class Course(BaseModel):
    title: str
    audience: Audience
    summary: str
    key_terms: list[str]
    modules: list[Module]
    stats: CourseStats
    #: things the caller should know (e.g. fewer modules than asked for)
    warnings: list[str] = Field(default_factory=list)
