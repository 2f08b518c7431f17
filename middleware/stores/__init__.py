"""Where status events go: a small protocol and one module per implementation."""

from .base import Outcome, StatusStore

__all__ = ["Outcome", "StatusStore"]
