"""Errors of the course generator."""

from __future__ import annotations


class CourseGenerationError(Exception):
    """The request cannot become a course; retrying will not change that."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
