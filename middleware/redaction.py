"""Secrets out of free text: error and progress messages before they are stored, log lines.

``redact(text)`` replaces credentials with ``[REDACTED]``; ``clean_text(text, limit)`` makes a
text storable (valid UTF-8, no NUL), redacts it, then caps it. What is redacted, from the
formats published by the issuers and the plugins of Yelp's ``detect-secrets``: AWS access key
ids and secret keys, OpenAI, Anthropic, Stripe, Slack (tokens and webhooks), GitHub, GitLab,
Google, Hugging Face, npm, PyPI, SendGrid and Supabase keys, JWTs, PEM and PuTTY private key
blocks, ``Authorization``/``Cookie`` header values of any scheme, URL passwords, and the value
of anything named like a secret (``password``, ``passwd``, ``pwd``, ``secret``, ``token``,
``api_key``, ``access_key``, ``private_key``, ``service_role_key``, ...; ``PGPASSWORD=...`` as
well) in ``k=v``, ``k: v``, ``"k": "v"`` and quoted forms, spaces and escapes included, and in
``k v`` (``passwd hunter2hunter2``, ``--password Tr0ub4dor99``) when the word after the name
looks like a secret: eight characters or more, letters and digits both (so ``token expired``
and ``password reset failed`` stay). Not redacted: a secret in prose (``the password is
hunter2``), a word without a digit or shorter than eight after a name and a space
(``--password swordfish``), or a token with neither a known prefix nor a name.
``tests/unit/test_redaction.py`` is the catalogue, false positives and ambiguities included.

Why not Yelp's detect-secrets at run time (1.5.0, May 2024, Apache-2.0; measured on this 2-core
VM against the catalogue's 83 cases and 16 ordinary texts): its plugins detect lines, they do
not give spans (each yields a value to search for, sometimes a piece: "ghp" for a GitHub
token, a JWT without its signature, a PEM block's BEGIN line); its formats miss Anthropic,
Google, ``sk_test_``, ``github_pat_``, OpenAI keys without their ``T3BlbkFJ`` marker and every
``Authorization`` scheme. With every plugin it finds 78 of 83 but also flags 14 of the 16
ordinary texts (its entropy plugins take UUIDs, digests and paths for secrets); without them,
18 of 83. It imports in ~70 ms (with ``requests``); ``scan_line`` takes 0.65 ms for a
200-character line, 8 ms for 2,000 characters, 30 ms for 8 KB (0.2, 1.9, 7 ms without
entropy). It stays a test dependency: the catalogue generates tokens from its plugins'
patterns and checks that what they detect is redacted here.

Cost here (median): 4 µs for a 200-character traceback line, 45-50 µs for a 2,000-character
message, 0.18 ms for 8 KB; 5 ms to compile at import. Every pattern runs in linear time (no
ambiguous repeats; what precedes a name or a token is checked in Python, not by
backtracking); ``clean_text`` redacts ``WINDOW_FACTOR`` times its limit at most, so a megabyte
of hostile text costs it under 1 ms (``redact`` on the whole megabyte: 20-110 ms, the most for
secret names each followed by a word, ``token a1a1a1a1a1 token ...``).
Neither function raises: should anything fail, the whole text is replaced.
"""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"
TRUNCATED = " [truncated]"
#: ``clean_text`` redacts the first ``WINDOW_FACTOR * limit`` characters, then cuts at ``limit``
WINDOW_FACTOR = 4

# -- token formats: a distinctive prefix, so they are redacted wherever they appear ------------

_TOKENS = re.compile(
    # every alternative starts with a literal, so that the engine skips ahead to its first
    # characters; that a token starts a word is checked by _token
    r"AKIA[A-Z0-9]{16}(?![A-Za-z0-9])|ASIA[A-Z0-9]{16}(?![A-Za-z0-9])"  # AWS access key ids
    r"|A3T[A-Z0-9][A-Z0-9]{16}(?![A-Za-z0-9])|ABIA[A-Z0-9]{16}(?![A-Za-z0-9])|ACCA[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|sk-(?:ant-|proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic (sk-ant-)
    r"|sk_(?:live|test)_[A-Za-z0-9]{10,}|rk_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,}"  # Stripe
    r"|gh[pousr]_[A-Za-z0-9_]{16,}|github_pat_[A-Za-z0-9_]{20,}"  # GitHub
    r"|gl(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent|oas)-[A-Za-z0-9_-]{20,}|GR1348941[A-Za-z0-9_-]{20,}"
    r"|AIza[A-Za-z0-9_-]{30,}|GOCSPX-[A-Za-z0-9_-]{20,}|ya29\.[A-Za-z0-9_-]{20,}"  # Google
    r"|eyJ[A-Za-z0-9_-]{10,}(?:\.[A-Za-z0-9_=-]*)*"  # JWT (and JWE), or a JWT cut short
    r"|sb_secret_[A-Za-z0-9_-]{8,}|sb_publishable_[A-Za-z0-9_-]{8,}"  # Supabase
    r"|hf_[A-Za-z0-9]{30,}|npm_[A-Za-z0-9]{30,}|pypi-AgE[A-Za-z0-9_-]{30,}"
    r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"  # SendGrid
)
#: characters that may not come right before a token (it would be the middle of a word)
_WORD = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")

#: Slack tokens (any case: detect-secrets' pattern ignores it) and webhooks, whose path goes
_SLACK = re.compile(
    r"(?i)(?<![a-z0-9_-])xox(?:[abposr]|e(?:\.xox[bp])?)-[a-z0-9-]{3,}"
    r"|(?<=hooks\.slack\.com/services/)[a-z0-9_/-]+|(?<=hooks\.slack\.com/workflows/)[a-z0-9_/-]+"
    r"|(?<=hooks\.slack\.com/triggers/)[a-z0-9_/-]+"
)

#: a PEM private key block (RSA, EC, DSA, OPENSSH, ENCRYPTED, PGP ... BLOCK), whole, or to the
#: end of the text when its END line is missing; and a PuTTY key file to its MAC
_PRIVATE_KEY = re.compile(
    r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|\Z)"
    r"|PuTTY-User-Key-File-\d+:.*?(?:Private-MAC:[ \t]*[0-9a-fA-F]+|\Z)",
    re.DOTALL,
)

#: an AWS secret access key: a word of 40 characters of base64 with an upper and a lower case
#: letter and a digit (not a SHA-1, not a path: see _aws_secret), in a text that mentions AWS or
#: a secret (_AWS_CONTEXT)
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")
_DIGITS = frozenset("0123456789")
_AWS_CONTEXT = ("aws", "amazon", "akia", "asia", "secret")

#: ``scheme://user:password@host``: the password goes, user and host stay. The password runs
#: to the last '@' before a space or a '/', so an unencoded '@' in it goes too (see _url).
_URL_CREDENTIALS = re.compile(r"(://[^\s:/@]*:)([^\s/]++)")

# -- values that follow a name (matched in the text lowered, ASCII only, so spans agree) -------

#: how a name and its value are joined: ``=``, ``:``, ``:=``, ``=>``, ``==``, after an optional
#: closing quote (``"password": ...``), escaped or not (JSON inside a string), and bracket
#: (``settings["password"] = ...``)
_JOIN = r"(?![a-z0-9])\\?[\"']?\]?[ \t]*(?::=|=>|==?|:)[ \t]*"

#: a value in double or single quotes (escaped quotes inside), in quotes escaped with a
#: backslash (JSON inside a string), or bare up to a space or a separator. A quoted value runs
#: to its closing quote or the end of the line: a value cut short goes whole.
_VALUE = (
    r"(?P<value>\\\"(?:(?!\\\")[^\r\n])*(?:\\\")?"
    r"|\\'(?:(?!\\')[^\r\n])*(?:\\')?"
    r"|\"(?:\\.|[^\"\\\r\n])*\"?"
    r"|'(?:\\.|[^'\\\r\n])*'?"
    r"|(?!\[redacted\])[^\s\"',;&)}\]<>][^\s,;&)}\]<>]*)"
)


def _ending(word: str, prefixes: tuple[str, ...]) -> str:
    """``word`` when one of ``prefixes`` (then '_', '-' or nothing) comes before it: the word is
    matched first, the prefix looked behind, so the pattern starts with a literal (fast)."""
    behind = "|".join(f"(?<={re.escape(p + sep + word)})" for p in prefixes for sep in ("", "_", "-"))
    return f"{word}(?:{behind})"


_KEY_OWNERS = (
    "api", "access", "account", "auth", "client", "db", "database", "encryption", "master", "priv",
    "private", "signing", "service", "servicerole", "service_role", "service-role",
)  # fmt: skip

#: names whose value is secret: they end with one of these words (``max_tokens=5`` and
#: ``password_length: 8`` are left alone). From detect-secrets' keyword list, and ours.
_SECRET_NAME = "|".join(
    [
        r"pass(?:word|wd|phrase)",
        _ending("pass", ("db", "database", "key")),
        r"pwd|secret|token|contrase(?:ñ|Ñ|n)a",
        _ending("key", _KEY_OWNERS),
    ]
)

#: a word after a secret's name and a space is taken for its value when it is this long or
#: longer and has letters and digits (see _secret_word)
_SECRET_WORD_MIN = 8

#: or a name, blanks, then one word, taken for the value when it looks like a secret
#: (_secret_word): `passwd hunter2hunter2`, `--password 'Tr0ub4dor99'`; `token expired` stays
_SPACED = (
    r"|(?P<spaced>(?:" + _SECRET_NAME + r")(?![a-z0-9])[ \t]++)(?P<sq>[\"']?)"
    r"(?P<word>[^\s\"'`,;&)}\]<>]{" + str(_SECRET_WORD_MIN) + r",}+)"
)

_NAMED = re.compile(
    # Authorization (any scheme: Bearer, Basic, Token, Digest, AWS4-HMAC-SHA256, custom). The
    # scheme stays; what follows goes: to the closing quote when quoted, else one token, or to
    # the end of the line when auth-params follow (Digest's username="...", response="...").
    r"(?P<authorization>authori[sz]ation" + _JOIN + r")(?:"
    r"(?P<aq>\\?[\"'])(?P<aqscheme>(?:[a-z][\w.-]*[ \t]+)?+)(?:(?!(?P=aq))[^\r\n])*(?P<aqend>(?P=aq))?"
    r"|(?P<ascheme>(?:[a-z][\w.-]*[ \t]+(?=\S))?+)(?!\[redacted\])[^\s,;\"'][^\s,;]*(?:[ \t]*,[^\r\n]*)?)"
    # cookies: the whole value, to the closing quote or the end of the line
    r"|(?P<cookie>cookie" + _JOIN + r")(?:"
    r"(?P<cq>\\?[\"'])(?:(?!(?P=cq))[^\r\n])*(?P<cqend>(?P=cq))?"
    r"|(?!\[redacted\])[^\s\"'][^\r\n]*)"
    # anything named like a secret: password=..., "client_secret": "...", PGPASSWORD=...
    r"|(?P<name>(?:" + _SECRET_NAME + r")" + _JOIN + r")" + _VALUE + _SPACED
)

#: where _NAMED may match: its names' first letters (a flat list of words is fast to look for)
_NAME_START = re.compile(r"authori|cookie|pass|pwd|secret|token|contrase|key")

#: ASCII upper case to lower case: the lowered text keeps the original's length
_ASCII_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}


def _token(match: re.Match[str]) -> str:
    start, text = match.start(), match.string
    if start and text[start - 1] in _WORD and not (start >= 3 and text[start - 3] == "%"):
        return match.group(0)  # in the middle of a word (after "%20" is not)
    return REDACTED


def _aws_secret(match: re.Match[str]) -> str:
    word = match.group(0)
    if _UPPER.isdisjoint(word) or _LOWER.isdisjoint(word) or _DIGITS.isdisjoint(word):
        return word
    return REDACTED


def _url(match: re.Match[str]) -> str:
    run = match.group(2)
    at = run.rfind("@")
    if at <= 0 or run.startswith(REDACTED + "@"):
        return match.group(0)
    return match.group(1) + REDACTED + run[at:]


def _secret_word(word: str) -> bool:
    """Whether a word that follows a secret's name and a space looks like its value: eight
    characters or more, letters and digits both (``hunter2hunter2``, ``ab12cd34ef``), not a
    word of prose (``expired``, ``reset``) nor a number (``12345678``)."""
    return len(word) >= _SECRET_WORD_MIN and not _DIGITS.isdisjoint(word) and any(c.isalpha() for c in word)


def _named(text: str) -> str:
    """``text`` with the values of its secret names (_NAMED) redacted."""
    lowered = text.lower() if text.isascii() else text.translate(_ASCII_LOWER)
    parts = []
    done = 0
    for hint in _NAME_START.finditer(lowered):
        if hint.start() < done:
            continue
        match = _NAMED.match(lowered, hint.start())
        if match is None:
            continue
        end = match.end()
        if match.group("spaced") is not None:
            word = text[match.start("word") : end].rstrip(".")  # a sentence's full stop stays
            if not _secret_word(word):
                continue  # a word of prose after the name: `token expired`
            end = match.start("word") + len(word)
        parts.append(text[done : match.start()])
        done = end
        if match.group("spaced") is not None:
            head = text[match.start() : match.end("sq")]
            tail = ""
        elif match.group("authorization") is not None:
            head = text[match.start() : match.end("authorization")]
            if match.group("aq") is not None:
                quote = match.group("aq")
                tail = quote if match.group("aqend") is not None else ""
                head += quote + text[match.start("aqscheme") : match.end("aqscheme")]
            else:
                tail = ""
                head += text[match.start("ascheme") : match.end("ascheme")]
        elif match.group("cookie") is not None:
            head = text[match.start() : match.end("cookie")]
            quote = match.group("cq") or ""
            head += quote
            tail = quote if match.group("cqend") is not None else ""
        else:
            head = text[match.start() : match.end("name")]
            value = match.group("value")
            tail = ""
            for quote in ('\\"', "\\'", '"', "'"):
                if value.startswith(quote):
                    head += quote
                    if len(value) >= 2 * len(quote) and value.endswith(quote):
                        tail = quote
                    break
        parts.append(head + REDACTED + tail)
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def redact(text: str) -> str:
    """``text`` with every key, token or password in it replaced by ``[REDACTED]``.

    Linear in the length of ``text``; never raises (anything but a ``str`` is made one; should
    a pattern fail, the whole text is redacted). Redacting twice changes nothing more.
    """
    try:
        if type(text) is not str:
            text = str(text)
        return _redact(text)
    except Exception:  # noqa: BLE001 - a hook never fails on redaction, and no secret gets through
        return REDACTED


def _redact(text: str) -> str:
    lowered = text.lower()  # to look for hints only (its length may differ from the text's)
    if "PRIVATE KEY" in text or "PuTTY-User-Key-File" in text:
        text = _PRIVATE_KEY.sub(REDACTED, text)
    text = _TOKENS.sub(_token, text)
    if "xox" in lowered or "hooks.slack.com" in lowered:
        text = _SLACK.sub(REDACTED, text)
    if "://" in text:
        text = _URL_CREDENTIALS.sub(_url, text)
    text = _named(text)
    if any(hint in lowered for hint in _AWS_CONTEXT):
        text = _AWS_SECRET.sub(_aws_secret, text)
    return text


def clean_text(text: str, limit: int) -> str:
    """Make ``text`` safe to store: valid UTF-8, no NUL, secrets redacted, at most ``limit``
    characters (cut texts end with ``" [truncated]"``).

    Redacts before it cuts, so that no secret survives in halves: it redacts the first
    ``WINDOW_FACTOR * limit`` characters (never more, whatever the size of ``text``), and when
    ``text`` is longer than that, drops what follows the window's last whitespace (a secret the
    window cut may not look like one any more). Never raises.
    """
    try:
        if type(text) is not str:
            text = str(text)
        window = max(limit, 0) * WINDOW_FACTOR
        cut = len(text) > window
        if cut:
            text = text[:window]
        if "\x00" in text:
            text = text.replace("\x00", "")
        text = _redact(text)
        if cut and not text.endswith(REDACTED):  # the window's last word may be half a secret
            last_space = max(map(text.rfind, " \t\r\n"))
            text = text[:last_space] if last_space > 0 else ""
        if not text.isascii():
            text = text.encode("utf-8", "replace").decode("utf-8")
        if (cut or len(text) > limit) and limit > len(TRUNCATED):
            return text[: limit - len(TRUNCATED)] + TRUNCATED
        return text[: max(limit, 0)]
    except Exception:  # noqa: BLE001 - as in redact()
        return REDACTED[:limit] if limit > 0 else ""
