"""The origin policy (docs/limits.md): validator, no-Origin rule, allowlist, same-origin."""

from __future__ import annotations

from typing import Any

import pytest

from wslifecycle import Config, origin_allowed

STRICT = Config()
ALLOWLIST = Config(allowed_origins=frozenset({"https://app.example.com", "http://localhost:8080"}))


def test_validator_decides_alone() -> None:
    """A configured validator overrides allow_no_origin, the allowlist and same-origin."""
    calls: list[tuple[str | None, str | None]] = []

    def refuse_all(origin: str | None, host: str | None) -> bool:
        calls.append((origin, host))
        return False

    config = Config(
        origin_validator=refuse_all,
        allow_no_origin=True,
        allowed_origins=frozenset({"https://app.example.com"}),
    )
    assert not origin_allowed(config, None, "app.example.com")
    assert not origin_allowed(config, "https://app.example.com", "app.example.com")
    assert calls == [(None, "app.example.com"), ("https://app.example.com", "app.example.com")]


def test_validator_result_is_made_a_bool() -> None:
    """A validator returning a truthy non-bool still yields exactly True."""

    def truthy(origin: str | None, host: str | None) -> Any:
        return "yes" if origin == "https://evil.example" else 0

    config = Config(origin_validator=truthy)
    assert origin_allowed(config, "https://evil.example", "app.example.com") is True
    assert origin_allowed(config, "https://app.example.com", "app.example.com") is False


@pytest.mark.parametrize("allow", [True, False])
def test_no_origin_follows_allow_no_origin(allow: bool) -> None:
    """A request without Origin passes only with allow_no_origin."""
    assert origin_allowed(Config(allow_no_origin=allow), None, "app.example.com") is allow
    assert origin_allowed(Config(allow_no_origin=allow), None, None) is allow


@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com",
        "HTTPS://APP.EXAMPLE.COM",
        "https://app.example.com/",
        "  https://app.example.com  ",
        "http://localhost:8080",
    ],
)
def test_allowlist_ignores_case_whitespace_and_trailing_slash(origin: str) -> None:
    """An allowlisted origin passes whatever the Host, in any case, with a trailing slash."""
    assert origin_allowed(ALLOWLIST, origin, "other.example.org")
    assert origin_allowed(ALLOWLIST, origin, None)


@pytest.mark.parametrize(
    "origin",
    ["https://app.example.com:8443", "http://app.example.com", "https://evil.example", "null"],
)
def test_allowlist_is_exact_about_scheme_host_and_port(origin: str) -> None:
    """Another port, scheme or host is not on the allowlist (and Host does not match)."""
    assert not origin_allowed(ALLOWLIST, origin, "other.example.org")


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://app.example.com", "app.example.com"),
        ("https://app.example.com", "app.example.com:443"),
        ("https://app.example.com:443", "app.example.com"),
        ("wss://app.example.com", "app.example.com:443"),
        ("http://app.example.com", "app.example.com:80"),
        ("http://app.example.com:80", "app.example.com"),
        ("ws://app.example.com:80", "app.example.com"),
        ("http://app.example.com:8080", "app.example.com:8080"),
        ("https://App.Example.COM", " APP.example.com "),
        ("https://app.example.com/", "app.example.com"),
        ("https://[::1]", "[::1]"),
        ("https://[::1]:443", "[::1]"),
        ("http://[2001:db8::1]:8080", "[2001:db8::1]:8080"),
        ("http://[::1]", "[::1]:80"),
    ],
)
def test_same_origin_passes_with_default_ports_ignored(origin: str, host: str) -> None:
    """Origin and Host naming the same host and port pass; default ports may be omitted."""
    assert origin_allowed(STRICT, origin, host)


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        ("https://app.example.com", "app.example.com:80"),  # https default is 443
        ("http://app.example.com", "app.example.com:443"),  # http default is 80
        ("https://app.example.com:8443", "app.example.com"),
        ("https://evil.example", "app.example.com"),
        ("https://app.example.com.evil.example", "app.example.com"),
        ("https://[::1]", "[::2]"),
        ("https://[::1]:8443", "[::1]"),
        ("https://app.example.com", None),
        ("null", "app.example.com"),
        ("app.example.com", "app.example.com"),  # no scheme
        ("https://", "app.example.com"),  # no host
        ("https:///", ""),
        ("https://user@app.example.com", "user@app.example.com"),  # userinfo
        ("https://app.example.com/path", "app.example.com/path"),  # a path
        ("ftp://app.example.com", "app.example.com"),  # unknown scheme
        ("file://app.example.com", "app.example.com"),
        ("https://app.example.com:", "app.example.com"),  # empty port
    ],
)
def test_anything_else_is_refused(origin: str, host: str | None) -> None:
    """Cross-site, 'null', malformed, userinfo, paths and unknown schemes are refused."""
    assert not origin_allowed(STRICT, origin, host)


def test_allowlist_does_not_disable_same_origin() -> None:
    """An origin that is not allowlisted still passes when it matches the Host."""
    assert origin_allowed(ALLOWLIST, "https://api.example.net", "api.example.net")
