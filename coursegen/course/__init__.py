"""Course generation: pure, deterministic and offline.

``build_course(CourseRequest(...)) -> Course``. No network, no queue, no database: this package
imports neither ``middleware`` nor the rest of ``coursegen``.
"""

from .errors import CourseGenerationError
from .models import (
    MAX_MODULES,
    MAX_SOURCES,
    MAX_TOTAL_BYTES,
    Audience,
    Course,
    CourseRequest,
    CourseStats,
    KeyTerm,
    Lesson,
    Module,
    QuizQuestion,
    Source,
)
from .pipeline import MIN_WORDS, STAGES, ProgressCallback, build_course, course_result

__all__ = [
    "MAX_MODULES",
    "MAX_SOURCES",
    "MAX_TOTAL_BYTES",
    "MIN_WORDS",
    "STAGES",
    "Audience",
    "Course",
    "CourseGenerationError",
    "CourseRequest",
    "CourseStats",
    "KeyTerm",
    "Lesson",
    "Module",
    "ProgressCallback",
    "QuizQuestion",
    "Source",
    "build_course",
    "course_result",
]
