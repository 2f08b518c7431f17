"""redact() on the shapes secrets take in real error messages (see also test_events.py)."""

from __future__ import annotations

import pytest

from middleware.events import redact


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ("env PGPASSWORD=open-sesame-42 psql failed", "open-sesame-42", "PGPASSWORD="),
        ("config {'user': 'app', 'password': 'letmein-letmein'}", "letmein-letmein", "'user': 'app'"),
        ('{"password": "letmein-letmein", "host": "db"}', "letmein-letmein", '"host": "db"'),
        (
            "SUPABASE_SERVICE_ROLE_KEY=plain-not-a-jwt-key",
            "plain-not-a-jwt-key",
            "SUPABASE_SERVICE_ROLE_KEY=",
        ),
        ("client_secret: abcdef123456", "abcdef123456", "client_secret"),
        ("postgresql://app:p@ss@word@db.internal:5432/app down", "word", "@db.internal:5432/app down"),
        ("Authorization: Basic dXNlcjpzM2NyZXQ=", "dXNlcjpzM2NyZXQ=", "Authorization: Basic"),
    ],
)
def test_redact_covers_the_usual_shapes(text: str, secret: str, kept: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert "[REDACTED]" in cleaned
    assert kept in cleaned


@pytest.mark.parametrize(
    "text", ["max_tokens=5, tokens: 3", "https://example.com:443/courses/7", "pwd is /tmp"]
)
def test_redact_leaves_look_alikes_alone(text: str) -> None:
    assert redact(text) == text
