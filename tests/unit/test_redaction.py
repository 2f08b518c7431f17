"""The redaction catalogue: one case per kind of secret and per form it takes in an error message
(realistic values, all fake), what is left alone, what is redacted on purpose where it is
ambiguous, redaction before truncation, and hostile input."""

from __future__ import annotations

import re

import pytest
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.stripe import StripeDetector
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.redaction import REDACTED, TRUNCATED, WINDOW_FACTOR, clean_text, redact

# -- fake secrets (the AWS pair is AWS's own documentation example) ---------------------------

AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_STS_KEY_ID = "ASIAQ3EXAMPLE0FAKE12"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_SECRET_2 = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbFAKEFAKEKY"
AWS_SESSION = "FwoGZXIvYXdzEXAMPLEfakeFAKEfakefake0123456789"
GITHUB_PAT = "github_pat_11FAKEFAKE0123456789ab_FAKEfake0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJyb2xlIjoic2VydmljZV9yb2xlIiwiaXNzIjoic3VwYWJhc2UifQ"
    ".Xb0dI7Pq3mH2c9ZkQx4-_rT8uVw1sYz0aBcDeFgHiJk"
)
RSA_BODY = (
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "FAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKE\n"
)
OPENSSH_BODY = (
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDfakefakefakefakefakefakefakefakefakefakeAAAAJgAAAAA==\n"
)


def fragments(secret: str, size: int = 7) -> set[str]:
    """Every piece of ``secret`` longer than six characters: none may survive."""
    return {secret[i : i + size] for i in range(max(1, len(secret) - size + 1))}


def assert_redacted(cleaned: str, secrets: tuple[str, ...], kept: tuple[str, ...]) -> None:
    for secret in secrets:
        left = sorted(piece for piece in fragments(secret) if piece in cleaned)
        assert not left, f"pieces of {secret!r} survive in {cleaned!r}: {left}"
    for words in kept:
        assert words in cleaned, f"{words!r} was lost: {cleaned!r}"
    assert REDACTED in cleaned


def case(kind: str, text: str, secrets: str | tuple[str, ...], *kept: str) -> object:
    return pytest.param(text, (secrets,) if isinstance(secrets, str) else secrets, kept, id=kind)


CATALOGUE = [
    # AWS
    case(
        "aws-access-key-id",
        f"botocore.exceptions.ClientError: InvalidAccessKeyId for {AWS_KEY_ID} on bucket course-assets",
        AWS_KEY_ID,
        "InvalidAccessKeyId for ",
        " on bucket course-assets",
    ),
    case("aws-sts-key-id", f"assumed role with {AWS_STS_KEY_ID} until 12:00", AWS_STS_KEY_ID, "until 12:00"),
    case(
        "aws-secret-credentials-file",
        f"[default]\naws_access_key_id = {AWS_KEY_ID}\n"
        f"aws_secret_access_key = {AWS_SECRET}\nregion = eu-west-1",
        (AWS_KEY_ID, AWS_SECRET),
        "aws_secret_access_key = ",
        "region = eu-west-1",
    ),
    case(
        "aws-secret-env",
        f"AWS_SECRET_ACCESS_KEY={AWS_SECRET} python -m coursegen.upload",
        AWS_SECRET,
        "AWS_SECRET_ACCESS_KEY=",
        "python -m coursegen.upload",
    ),
    case(
        "aws-secret-boto-credentials",
        f"creds={{'AccessKeyId': '{AWS_STS_KEY_ID}', 'SecretAccessKey': '{AWS_SECRET_2}', "
        f"'SessionToken': '{AWS_SESSION}', 'Expiration': '2030-01-01'}}",
        (AWS_STS_KEY_ID, AWS_SECRET_2, AWS_SESSION),
        "'SecretAccessKey': '",
        "'Expiration': '2030-01-01'",
    ),
    case(
        "aws-secret-loose",
        f"S3 upload failed with credentials {AWS_KEY_ID} / {AWS_SECRET} (SignatureDoesNotMatch)",
        (AWS_KEY_ID, AWS_SECRET),
        "S3 upload failed with credentials",
        "(SignatureDoesNotMatch)",
    ),
    # OpenAI, Anthropic
    case(
        "openai-legacy",
        "openai.AuthenticationError: Incorrect API key provided: "
        "sk-FAKEa1b2c3d4e5f6g7h8T3BlbkFJi9j0k1l2m3n4o5p6q7r8. You can find your key at ...",
        "sk-FAKEa1b2c3d4e5f6g7h8T3BlbkFJi9j0k1l2m3n4o5p6q7r8",
        "Incorrect API key provided: ",
        ". You can find your key",
    ),
    case(
        "openai-project",
        "OPENAI client built with sk-proj-FAKE_fake-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH failed",
        "sk-proj-FAKE_fake-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH",
        "OPENAI client built with ",
        " failed",
    ),
    case(
        "anthropic",
        "anthropic.AuthenticationError: 401 invalid x-api-key "
        "sk-ant-api03-FAKEfake0123456789_abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ-fakeAA",
        "sk-ant-api03-FAKEfake0123456789_abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ-fakeAA",
        "401 invalid x-api-key",
    ),
    # Stripe
    case(
        "stripe-live-secret",
        "stripe.error.AuthenticationError: Invalid API Key provided: sk_live_51FAKEfakeFAKEfake0123456789",
        "sk_live_51FAKEfakeFAKEfake0123456789",
        "Invalid API Key provided: ",
    ),
    case(
        "stripe-restricted",
        "restricted key rk_live_51FAKEfakeFAKEfake0123456789 lacks permission",
        "rk_live_51FAKEfakeFAKEfake0123456789",
        "lacks permission",
    ),
    case(
        "stripe-test-secret",
        "using sk_test_4eC39HqLyjWDarjtT1zdp7dcFAKE in staging",
        "sk_test_4eC39HqLyjWDarjtT1zdp7dcFAKE",
        "in staging",
    ),
    # Slack
    case(
        "slack-bot",
        "slack_sdk.errors.SlackApiError: invalid_auth for "
        "xoxb-123456789012-1234567890123-FAKEfakeFAKEfake01234567",
        "xoxb-123456789012-1234567890123-FAKEfakeFAKEfake01234567",
        "invalid_auth for ",
    ),
    case(
        "slack-user",
        "token xoxp-123456789012-123456789012-123456789012-fakefakefakefakefakefakefakefake revoked",
        "xoxp-123456789012-123456789012-123456789012-fakefakefakefakefakefakefakefake",
        " revoked",
    ),
    case("slack-app", "xoxa-2-FAKEfake0123456789 expired", "xoxa-2-FAKEfake0123456789", " expired"),
    case("slack-refresh", "xoxr-FAKE-fake-0123456789 rejected", "xoxr-FAKE-fake-0123456789", " rejected"),
    case(
        "slack-webhook",
        "POST https://hooks.slack.com/services/T0FAKE000/B0FAKE000/FAKEfakeFAKEfake01234567 answered 404",
        "T0FAKE000/B0FAKE000/FAKEfakeFAKEfake01234567",
        "POST https://hooks.slack.com/services/",
        " answered 404",
    ),
    # GitHub, GitLab
    *[
        case(
            f"github-{prefix}",
            f"git clone failed: Bad credentials ({prefix}_FAKEfake0123456789abcdefghijklmnopqr)",
            f"{prefix}_FAKEfake0123456789abcdefghijklmnopqr",
            "git clone failed: Bad credentials (",
            ")",
        )
        for prefix in ("ghp", "gho", "ghu", "ghs", "ghr")
    ],
    case(
        "github-fine-grained",
        f"GITHUB auth with {GITHUB_PAT} was refused",
        GITHUB_PAT,
        " was refused",
    ),
    case(
        "gitlab",
        "gitlab.exceptions.GitlabAuthenticationError: 401 for glpat-FAKEfake0123456789ab",
        "glpat-FAKEfake0123456789ab",
        "401 for ",
    ),
    # Google
    case(
        "google-api-key",
        "googleapiclient.errors.HttpError: 400 API key not valid: AIzaSyFAKEfake0123456789abcdefghijklmno",
        "AIzaSyFAKEfake0123456789abcdefghijklmno",
        "400 API key not valid: ",
    ),
    # JWT
    case("jwt", f"supabase said 401 for key {JWT}", JWT, "supabase said 401 for key "),
    case(
        "jwt-cut-short",
        "key eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9y (truncated by the client)",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjoic2VydmljZV9y",
        "(truncated by the client)",
    ),
    case(
        "jwt-url-encoded",
        f"redirect to /callback?next=%2Fhome%26id_token%3D{JWT}%26state%3D42 failed",
        JWT,
        "/callback?next=%2Fhome%26id_token%3D",
    ),
    # PEM private keys: the whole block
    case(
        "pem-rsa",
        f"bad key:\n-----BEGIN RSA PRIVATE KEY-----\n{RSA_BODY}-----END RSA PRIVATE KEY-----\n"
        "in /etc/app/key.pem",
        (RSA_BODY, "BEGIN RSA PRIVATE KEY"),
        "bad key:",
        "in /etc/app/key.pem",
    ),
    case(
        "pem-pkcs8",
        f"-----BEGIN PRIVATE KEY-----\n{RSA_BODY}-----END PRIVATE KEY----- could not be loaded",
        RSA_BODY,
        " could not be loaded",
    ),
    case(
        "pem-encrypted",
        f"-----BEGIN ENCRYPTED PRIVATE KEY-----\n{RSA_BODY}-----END ENCRYPTED PRIVATE KEY-----\n"
        "bad passphrase",
        RSA_BODY,
        "bad passphrase",
    ),
    case(
        "pem-openssh",
        f"ssh: -----BEGIN OPENSSH PRIVATE KEY-----\n{OPENSSH_BODY}-----END OPENSSH PRIVATE KEY-----\n ok",
        OPENSSH_BODY,
        "ssh: ",
    ),
    case(
        "pem-ec-in-json",
        '{"private_key": "-----BEGIN EC PRIVATE KEY-----\\nMHcCAQEEIFAKEfakeFAKEfake0123456789\\n'
        '-----END EC PRIVATE KEY-----\\n", "client_email": "svc@example.iam.gserviceaccount.com"}',
        "MHcCAQEEIFAKEfakeFAKEfake0123456789",
        '"client_email": "svc@example.iam.gserviceaccount.com"',
    ),
    case(
        "pem-without-end",
        f"loading -----BEGIN RSA PRIVATE KEY-----\n{RSA_BODY}",
        RSA_BODY,
        "loading ",
    ),
    case(
        "pgp-private-key-block",
        f"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{RSA_BODY}-----END PGP PRIVATE KEY BLOCK-----",
        RSA_BODY,
    ),
    # Authorization, any scheme; cookies
    case(
        "authorization-bearer",
        "request failed: Authorization: Bearer abc123DEF456ghi789jkl was rejected (401)",
        "abc123DEF456ghi789jkl",
        "Authorization: Bearer ",
        " was rejected (401)",
    ),
    case(
        "authorization-basic",
        "Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l\r\nHost: api.example.com",
        "YWxhZGRpbjpvcGVuc2VzYW1l",
        "Authorization: Basic ",
        "Host: api.example.com",
    ),
    case(
        "authorization-token",
        "Authorization: Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b",
        "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b",
        "Authorization: Token ",
    ),
    case(
        "authorization-digest",
        'Authorization: Digest username="Mufasa", realm="http-auth@example.org", '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", response="6629fae49393a05397450978507c4ef1"\n'
        "next header",
        ("6629fae49393a05397450978507c4ef1", "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"),
        "Authorization: Digest ",
        "next header",
    ),
    case(
        "authorization-aws-sigv4",
        f"Authorization: AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/20300101/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024",
        (AWS_KEY_ID, "fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024"),
        "Authorization: AWS4-HMAC-SHA256 ",
    ),
    case(
        "authorization-custom-scheme",
        "Authorization: ApiKey-v2 c2VjcmV0LWtleS1mb3ItdGVzdHM and nothing else",
        "c2VjcmV0LWtleS1mb3ItdGVzdHM",
        "Authorization: ApiKey-v2 ",
        " and nothing else",
    ),
    case(
        "authorization-no-scheme",
        "authorization: 0123fake4567fake89ab",
        "0123fake4567fake89ab",
        "authorization: ",
    ),
    case(
        "authorization-in-headers-dict",
        "httpx headers={'Authorization': 'Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b', 'Accept': 'json'}",
        "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b",
        "'Authorization': 'Token ",
        "'Accept': 'json'",
    ),
    case(
        "authorization-in-json",
        '{"headers": {"authorization": "Bearer opaque-FAKE-token-0123456789"}, "status": 401}',
        "opaque-FAKE-token-0123456789",
        '"authorization": "Bearer ',
        '"status": 401',
    ),
    case(
        "proxy-authorization",
        "Proxy-Authorization: Basic cHJveHk6aHVudGVyMmh1bnRlcjI=",
        "cHJveHk6aHVudGVyMmh1bnRlcjI=",
        "Proxy-Authorization: Basic ",
    ),
    case(
        "cookie",
        "Cookie: sessionid=FAKEsession0123456789; csrftoken=FAKEcsrf9876543210\nUser-Agent: x",
        ("FAKEsession0123456789", "FAKEcsrf9876543210"),
        "Cookie: ",
        "User-Agent: x",
    ),
    # passwords in URLs
    case(
        "url-password",
        "could not connect to postgresql://postgres:s3cr3t-Pa55@db.abc.supabase.co:5432/postgres",
        "s3cr3t-Pa55",
        "postgresql://postgres:",
        "@db.abc.supabase.co:5432/postgres",
    ),
    case(
        "url-password-only",
        "Error connecting to redis://:hunter2hunter2@cache:6379/0.",
        "hunter2hunter2",
        "redis://:",
        "@cache:6379/0.",
    ),
    case(
        "url-password-with-at",
        "postgresql://app:p@ss@w0rd!@db.internal:5432/app down",
        "p@ss@w0rd!",
        "postgresql://app:",
        "@db.internal:5432/app down",
    ),
    case(
        "url-password-driver-scheme",
        "sqlalchemy: mysql+pymysql://course:Tr0ub4dor&3@mysql.internal/courses refused",
        "Tr0ub4dor&3",
        "mysql+pymysql://course:",
        "@mysql.internal/courses refused",
    ),
    case(
        "url-password-https",
        "GET https://deploy:ghost-rider-42@registry.example.com/v2/ failed",
        "ghost-rider-42",
        "https://deploy:",
        "@registry.example.com/v2/ failed",
    ),
    # key = value, every name and every form
    case(
        "password-equals",
        "login failed: password=swordfish42 for app",
        "swordfish42",
        "password=",
        " for app",
    ),
    case("passwd-colon", "passwd: open-sesame-42\nuser: app", "open-sesame-42", "passwd: ", "user: app"),
    case("pwd-equals", "odbc: UID=app;PWD=Tr0ub4dor99;SERVER=db", "Tr0ub4dor99", "PWD=", ";SERVER=db"),
    case(
        "secret-colon", "webhook secret: whsec-fake-0123 is wrong", "whsec-fake-0123", "secret: ", " is wrong"
    ),
    case(
        "token-equals",
        "GET /export?token=FAKEtok3n0123&page=2 -> 403",
        "FAKEtok3n0123",
        "token=",
        "&page=2 -> 403",
    ),
    case("api-key-equals", "api_key=FAKEapik3y0123 rejected", "FAKEapik3y0123", "api_key=", " rejected"),
    case("apikey-colon", "apikey: FAKEapik3y4567, region: eu", "FAKEapik3y4567", "apikey: ", ", region: eu"),
    case(
        "api-key-header",
        "X-Api-Key: FAKEapik3y89ab\nAccept: */*",
        "FAKEapik3y89ab",
        "X-Api-Key: ",
        "Accept: */*",
    ),
    case("access-key-equals", "access_key=FAKEacc3ss0123 denied", "FAKEacc3ss0123", "access_key=", " denied"),
    case(
        "private-key-equals",
        "private_key=FAKEpr1vate0123 unreadable",
        "FAKEpr1vate0123",
        "private_key=",
        " unreadable",
    ),
    case(
        "client-secret-colon",
        "oauth: client_secret: FAKEcl1ent0123 invalid",
        "FAKEcl1ent0123",
        "client_secret: ",
        " invalid",
    ),
    case(
        "password-json",
        'payload {"user": "app", "password": "letmein-letmein", "host": "db"}',
        "letmein-letmein",
        '"user": "app"',
        '"password": "',
        '"host": "db"',
    ),
    case(
        "password-python-dict",
        "config {'user': 'app', 'password': 'letmein-again', 'port': 5432}",
        "letmein-again",
        "'user': 'app'",
        "'port': 5432",
    ),
    case(
        "password-single-quoted-words",
        "psycopg: host=db password='correct horse battery' dbname=app",
        "correct horse battery",
        "host=db password='",
        "' dbname=app",
    ),
    case(
        "password-double-quoted-words",
        'settings.PASSWORD="with spaces inside" is invalid',
        "with spaces inside",
        'settings.PASSWORD="',
        '" is invalid',
    ),
    case(
        "password-quoted-escaped-quote",
        r"password='it\'s a secret phrase' rejected",
        r"it\'s a secret phrase",
        " rejected",
    ),
    case(
        "password-json-in-a-string",
        r'body="{\"password\": \"two words here\", \"user\": \"app\"}"',
        "two words here",
        r"\"user\": \"app\"",
    ),
    case("password-yaml", "database:\n  password: yaml-FAKE-0123\n  host: db", "yaml-FAKE-0123", "host: db"),
    case("password-kwarg", "connect(host='db', password = 'kw-FAKE-0123')", "kw-FAKE-0123", "host='db'"),
    case(
        "password-subscript",
        'settings["password"] = "sub-FAKE-0123"',
        "sub-FAKE-0123",
        'settings["password"]',
    ),
    case(
        "contrasena", "CONTRASEÑA=clave-FAKE-0123 incorrecta", "clave-FAKE-0123", "CONTRASEÑA=", " incorrecta"
    ),
    case("password-go-walrus", 'password := "go-FAKE-0123"', "go-FAKE-0123", "password := "),
    case("password-ruby-arrow", ":password => 'rb-FAKE-0123'", "rb-FAKE-0123", ":password => "),
    case(
        "pgpassword-env",
        "env PGPASSWORD=open-sesame-42 psql failed",
        "open-sesame-42",
        "PGPASSWORD=",
        "psql failed",
    ),
    case(
        "supabase-service-role-key-env",
        "SUPABASE_SERVICE_ROLE_KEY=plain-not-a-jwt-key dramatiq coursegen.actors",
        "plain-not-a-jwt-key",
        "SUPABASE_SERVICE_ROLE_KEY=",
        "dramatiq coursegen.actors",
    ),
    case("service-key-env", "SUPABASE_SERVICE_KEY: svc-FAKE-0123", "svc-FAKE-0123", "SUPABASE_SERVICE_KEY: "),
    case(
        "password-unterminated-quote",
        "password='never closed and long",
        "never closed and long",
        "password='",
    ),
    # a name, blanks, then one word that looks like a secret (8 or more, letters and digits)
    case(
        "passwd-space",
        "login as app with passwd hunter2hunter2 failed",
        "hunter2hunter2",
        "login as app with passwd ",
        " failed",
    ),
    case(
        "token-space",
        "refresh with token hunter2hunter2 (HTTP 401)",
        "hunter2hunter2",
        "refresh with token ",
        " (HTTP 401)",
    ),
    case(
        "password-flag",
        "psql --password Tr0ub4dor99 -h db exited with 2",
        "Tr0ub4dor99",
        "psql --password ",
        " -h db exited with 2",
    ),
    case(
        "secret-space-quoted",
        "client secret 'ab12CD34ef56' rejected",
        "ab12CD34ef56",
        "client secret '",
        "' rejected",
    ),
    case(
        "api-key-space-end-of-sentence",
        "Bad API_KEY\tFAKEapik3y0123. Try again.",
        "FAKEapik3y0123",
        "Bad API_KEY\t",
        ". Try again.",
    ),
    # Supabase keys
    case(
        "supabase-secret-key",
        "key sb_secret_AbCdEf0123456789xyzFAKE rejected",
        "sb_secret_AbCdEf0123456789xyzFAKE",
        "key ",
        " rejected",
    ),
    case(
        "supabase-publishable-key",
        "client built with sb_publishable_FAKEfake0123456789_abc",
        "sb_publishable_FAKEfake0123456789_abc",
        "client built with ",
    ),
    # others from detect-secrets' plugins with a distinctive prefix
    case(
        "hugging-face",
        "hf_FAKEfakeFAKEfake0123456789abcdef denied",
        "hf_FAKEfakeFAKEfake0123456789abcdef",
        " denied",
    ),
    case(
        "npm",
        "npm ERR! npm_FAKEfakeFAKEfake0123456789abcdefAB",
        "npm_FAKEfakeFAKEfake0123456789abcdefAB",
        "npm ERR! ",
    ),
    case(
        "sendgrid",
        "SG.FAKEfake0123456789ab.FAKEfake0123456789abcdefghijklmnop is invalid",
        "SG.FAKEfake0123456789ab.FAKEfake0123456789abcdefghijklmnop",
        " is invalid",
    ),
]


@pytest.mark.parametrize(("text", "secrets", "kept"), CATALOGUE)
def test_every_kind_of_secret_is_redacted_and_its_context_kept(
    text: str, secrets: tuple[str, ...], kept: tuple[str, ...]
) -> None:
    cleaned = redact(text)
    assert_redacted(cleaned, secrets, kept)
    assert redact(cleaned) == cleaned, "redacting twice changes nothing more"


@pytest.mark.parametrize(
    "text",
    [
        "KeyError: 'token'",
        "password must be at least 8 characters",
        "ValueError: passwords do not match (max_tokens=5, tokens: 3, password_length: 8)",
        "TypeError: __init__() got an unexpected keyword argument 'token_type'",
        "job 3f2b8c1e-9a4d-4e6b-8f7a-2c1d0e9b5a43 failed on attempt 2",
        "sha256 of notes.md: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "secret rotation script at commit da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "Lesson 3 of 7: photosynthesis at https://example.com:8443/courses/42?page=2 (HTTP 503)",
        "postgresql://app@db.internal:5432/app and redis://cache:6379/0 are up",
        "mail ada@example.com or see https://docs.example.com/@ada/notes",
        'File "/app/coursegen/course/quiz.py", line 42, in build_quiz',
        "ValueError: invalid literal for int() with base 10: 'abc'",
        "The authorization server returned 503; set the cookie policy first",
        "pwd is /tmp; tokenizer=gpt2; secretary: Bob; skip-navigation; sk-learn; AKIA is AWS's prefix",
        "base64 aGVsbG8gd29ybGQ= and a long identifier generate_course_outline_for_beginners",
        "CourseGenerationError: the sources hold 6 words; at least 50 are needed",
        # a name, a space, then prose or a number: no secret
        "token expired at 2030-01-01T00:00:00Z; password reset failed for ada@example.com",
        "refresh token revoked; the secret sauce is patience; password required",
        "Token Refreshed successfully; Password Changed; api_key rotation overdue",
        "the password is hunter2; token 12345678 of 20; passwords mismatch2024",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a name that says "secret", then a separator: whatever follows is taken for the value
        ("password: must be 8 characters", "password: [REDACTED] be 8 characters"),
        ("Invalid token: expired", "Invalid token: [REDACTED]"),
        ("authorization: denied by policy", "authorization: denied [REDACTED] policy"),
        ("token=None", "token=[REDACTED]"),
        # a 40-character base64 word with both cases and a digit, where AWS or a secret is named
        ("aws cache key Ab3dEfGhIjKlMnOpQrStUvWxYz0123456789abcd", "aws cache key [REDACTED]"),
        # a word of letters and digits after a name and a space, secret or not
        ("token utf8mb4_general_ci rejected", "token [REDACTED] rejected"),
        # an '@' later in a URL's first word (before any '/'): all up to the last '@' goes
        ("https://u:pw@host?mail=a@b.c", "https://u:[REDACTED]@b.c"),
    ],
)
def test_ambiguous_text_is_redacted_on_purpose(text: str, expected: str) -> None:
    assert redact(text) == expected


# -- detect-secrets' patterns: whatever they detect, we redact ---------------------------------

#: the token patterns of detect-secrets' plugins for the kinds above. Not used: the AWS secret
#: key pattern (a quoted 40-character value within 20 characters of "aws" and "key" whatever
#: stands between: covered by the named-value cases), its JWT pattern (valid only once decoded:
#: the JWT cases), private keys (it matches the BEGIN line only) and npm's (a whole .npmrc line).
DETECT_SECRETS_PATTERNS = [
    pytest.param(pattern, id=f"{plugin.__name__}-{index}")
    for plugin, patterns in [
        (AWSKeyDetector, AWSKeyDetector.denylist[:1]),
        (GitHubTokenDetector, GitHubTokenDetector.denylist),
        (GitLabTokenDetector, GitLabTokenDetector.denylist),
        (OpenAIDetector, OpenAIDetector.denylist),
        (PypiTokenDetector, PypiTokenDetector.denylist),
        (SendGridDetector, SendGridDetector.denylist),
        (SlackDetector, SlackDetector.denylist),
        (StripeDetector, StripeDetector.denylist),
    ]
    for index, pattern in enumerate(patterns)
]
ASCII = st.characters(min_codepoint=0x21, max_codepoint=0x7E)  # their \d and \w mean ASCII here


@pytest.mark.parametrize("pattern", DETECT_SECRETS_PATTERNS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_what_detect_secrets_detects_is_redacted(pattern: re.Pattern[str], data: st.DataObject) -> None:
    token = data.draw(st.from_regex(pattern, fullmatch=True, alphabet=ASCII), label="token")
    text = f"request failed: {token} (HTTP 401)"
    found = [match.group(0) for match in pattern.finditer(text)]
    assert found, "detect-secrets detects the token"

    cleaned = redact(text)

    assert [secret for secret in found if secret in cleaned] == []
    assert cleaned.startswith("request failed: ") and cleaned.endswith(" (HTTP 401)")


# -- redact, then truncate -------------------------------------------------------------------

LIMIT = 2000
STRADDLING = [
    pytest.param(JWT, id="jwt"),
    pytest.param("password='correct horse battery staple'", id="quoted-password"),
    pytest.param("postgresql://app:s3cr3t-Pa55-word@db.internal:5432/app", id="url-password"),
    pytest.param(f"-----BEGIN RSA PRIVATE KEY-----\n{RSA_BODY}-----END RSA PRIVATE KEY-----", id="pem"),
    pytest.param("ghp_FAKEfake0123456789abcdefghijklmnopqr", id="github"),
]


def inside(secret: str) -> str:
    """The part of a straddling case that is secret (not its name, user or host)."""
    return secret.removeprefix("password='").removeprefix("postgresql://app:").split("@")[0]


@pytest.mark.parametrize("secret", STRADDLING)
@pytest.mark.parametrize("where", [0.25, 0.5, 0.75])
def test_a_secret_across_the_limit_leaves_no_half(secret: str, where: float) -> None:
    cut = LIMIT - len(TRUNCATED)  # where clean_text cuts
    start = cut - int(len(secret) * where)
    text = ("context " * LIMIT)[: start - 1] + " " + secret + " and after" * 100
    assert text.index(secret) < cut < text.index(secret) + len(secret)

    cleaned = clean_text(text, LIMIT)

    assert not [piece for piece in fragments(inside(secret)) if piece in cleaned]
    assert cleaned.startswith("context context")
    assert len(cleaned) <= LIMIT and cleaned.endswith(TRUNCATED)


@pytest.mark.parametrize("secret", STRADDLING)
def test_a_secret_across_the_window_leaves_no_half(secret: str) -> None:
    # a private key block shrinks to one word, so what was near the end of the window comes
    # near the start; and the window cuts the secret in two
    window = LIMIT * WINDOW_FACTOR
    block = f"-----BEGIN PRIVATE KEY-----\n{'A' * (window - 500)}\n-----END PRIVATE KEY-----"
    pad = window - len(block) - len(" see ") - len(secret) // 2
    text = block + " see " + ("x " * pad)[: pad - 1] + " " + secret + " and more" * 100
    assert text.index(secret) < window < text.index(secret) + len(secret)

    cleaned = clean_text(text, LIMIT)

    assert not [piece for piece in fragments(inside(secret)) if piece in cleaned]
    assert cleaned.startswith(REDACTED + " see x x")
    assert len(cleaned) <= LIMIT and cleaned.endswith(TRUNCATED)


def test_clean_text_makes_text_storable_and_caps_it() -> None:
    text = "pass\x00word=hunter2hunter2 \ud800 " + "é" * 3000
    cleaned = clean_text(text, LIMIT)

    cleaned.encode("utf-8")  # no lone surrogate left
    assert "\x00" not in cleaned and "hunter2" not in cleaned
    assert cleaned.startswith("password=[REDACTED] ? éé")
    assert len(cleaned) == LIMIT and cleaned.endswith(TRUNCATED)
    assert clean_text("short and plain", LIMIT) == "short and plain"


def test_clean_text_looks_at_a_bounded_window_only() -> None:
    head = "error: " + "word " * 2000
    tails = ["password=" + "p" * 10**6, "\x00" * 10**6, "-----BEGIN PRIVATE KEY-----" * 10**4]
    cleaned = {clean_text(head + tail, 500) for tail in tails}
    assert len(cleaned) == 1  # nothing past the window changes the result


# -- hostile input ---------------------------------------------------------------------------

MEGABYTE = 1 << 20
HOSTILE = [
    pytest.param("a" * MEGABYTE, id="one-word"),
    pytest.param("password=" * (MEGABYTE // 9), id="names-without-values"),
    pytest.param("password='" + "\\" * MEGABYTE, id="escapes"),
    pytest.param('"password": "' + '\\"' * (MEGABYTE // 2), id="escaped-quotes"),
    pytest.param("://a:" * (MEGABYTE // 5), id="url-starts"),
    pytest.param("://u:" + "@" * MEGABYTE, id="url-ats"),
    pytest.param("-----BEGIN PRIVATE KEY-----" * (MEGABYTE // 27), id="pem-starts"),
    pytest.param("Authorization: " * (MEGABYTE // 15), id="headers"),
    pytest.param("Authorization: Digest a, " + "b, " * (MEGABYTE // 3), id="digest-params"),
    pytest.param("eyJ" * (MEGABYTE // 3), id="jwt-starts"),
    pytest.param("eyJaaaaaaaaaaaa." * (MEGABYTE // 16), id="jwt-dots"),
    pytest.param("sk-" + "-" * MEGABYTE, id="sk-dashes"),
    pytest.param("aws " + "A1a/" * (MEGABYTE // 4), id="base64-run"),
    pytest.param("aws " + "Ab1/+=" * (MEGABYTE // 6), id="base64-padding"),
    pytest.param("\ud800" * MEGABYTE, id="surrogates"),
]


@pytest.mark.timeout(60)  # a guard against runaway backtracking, not a measurement
@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_neither_raises_nor_runs_away(text: str) -> None:
    cleaned = clean_text(text, LIMIT)
    assert len(cleaned) <= LIMIT
    cleaned.encode("utf-8")
    window = text[: LIMIT * WINDOW_FACTOR]
    assert isinstance(redact(window), str)  # the window itself, whole, in linear time


def test_redaction_never_raises() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert redact(Unprintable()) == REDACTED  # type: ignore[arg-type]
    assert clean_text(Unprintable(), 100) == REDACTED  # type: ignore[arg-type]
    assert redact(12345) == "12345"  # type: ignore[arg-type]
