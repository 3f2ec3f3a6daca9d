"""The handshake hook's vocabulary (headers, request, Accept, Reject) and the
trusted-proxy rule that names the client."""

from __future__ import annotations

import pytest

from wslifecycle import Config, ConfigError
from wslifecycle.forwarded import TrustedProxies, parse_trusted, trusted_proxies
from wslifecycle.handshake import Accept, HandshakeRequest, Headers, Reject

# ----------------------------------------------------------------- Headers


def test_headers_are_case_insensitive_and_multi_valued() -> None:
    headers = Headers([("X-Tag", "a"), ("Host", "h"), ("x-tag", "b")])
    assert headers["X-TAG"] == "a, b"
    assert headers.get_all("x-tag") == ["a", "b"]
    assert headers.get("host") == "h"
    assert headers.get("missing") is None
    assert "HOST" in headers
    assert "nope" not in headers
    assert 3 not in headers  # type: ignore[comparison-overlap]
    assert list(headers) == ["x-tag", "host"]
    assert len(headers) == 2
    assert headers.raw_items() == (("x-tag", "a"), ("host", "h"), ("x-tag", "b"))
    assert repr(headers) == "Headers([('x-tag', 'a'), ('host', 'h'), ('x-tag', 'b')])"
    with pytest.raises(KeyError):
        headers["missing"]


def test_a_request_without_a_query() -> None:
    request = HandshakeRequest("GET", "/", "", Headers(), (), ())
    assert (request.target, request.params) == ("/", {})
    assert (request.origin, request.host, request.header("x")) == (None, None, None)
    assert request.peer_address is None


# ----------------------------------------------------------- Accept, Reject


def test_accept_takes_a_mapping_or_pairs() -> None:
    assert Accept(headers={"X-A": "1"}).headers == (("X-A", "1"),)
    assert Accept(headers=[("X-A", "1")]).headers == (("X-A", "1"),)
    assert Accept() == Accept(None, (), None)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Accept(subprotocol=3), "Accept.subprotocol: must be a str or None, got 3"),  # type: ignore[arg-type]
        (lambda: Accept(headers=[("x",)]), r"Accept.headers: each header is a \(name, value\)"),  # type: ignore[list-item]
        (lambda: Accept(headers=["xy"]), r"Accept.headers: each header is a \(name, value\)"),  # type: ignore[list-item]
        (lambda: Accept(headers={"bad name": "v"}), "'bad name' is not a valid header name"),
        (lambda: Accept(headers={3: "v"}), "3 is not a valid header name"),  # type: ignore[arg-type]
        (lambda: Accept(headers={"x": "a\r\nb"}), "the value of 'x' must be a str without CR"),
        (lambda: Accept(headers={"x": 3}), "the value of 'x' must be a str without CR"),  # type: ignore[arg-type]
        (lambda: Reject(200), "Reject.status: must be an HTTP status 300-599, got 200"),
        (lambda: Reject(True), "Reject.status: must be an HTTP status 300-599, got True"),
        (lambda: Reject("401"), "Reject.status: must be an HTTP status 300-599, got '401'"),  # type: ignore[arg-type]
        (lambda: Reject(401, 3), "Reject.body: must be str or bytes, got int"),  # type: ignore[arg-type]
        (lambda: Reject(401, headers={"x": "\0"}), "Reject.headers: the value of 'x'"),
    ],
)
def test_a_bad_answer_names_the_field(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_a_rejections_reason_is_its_first_line_bounded() -> None:
    assert Reject(401, "first\nsecond").reason == "first"
    assert Reject(401, b"\xff" * 300).reason == "\ufffd" * 200
    assert Reject(403).body == b""


# ---------------------------------------------------------- trusted proxies


def test_parse_trusted_expands_loopback() -> None:
    networks, unix = parse_trusted(["loopback"])
    assert [str(n) for n in networks] == ["127.0.0.0/8", "::1/128"]
    assert unix
    assert parse_trusted(["unix"]) == ((), True)
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300' is not an IP address"):
        parse_trusted(["10.0.0.300"])


def test_an_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    headers = Headers([("x-forwarded-for", "1.2.3.4")])
    assert proxies.client_address(("192.0.2.1", 5), headers) == ("192.0.2.1", 5)
    assert proxies.client_address(None, headers) is None
    assert proxies.client_address("/run/sock", headers) == "/run/sock"  # unix not trusted
    assert proxies.client_address(("not-an-ip", 1), headers) == ("not-an-ip", 1)
    assert not TrustedProxies([])
    assert TrustedProxies(["unix"])


def test_x_forwarded_for_is_walked_from_the_right() -> None:
    proxies = TrustedProxies(["10.0.0.0/8", "unix"])
    headers = Headers(
        [("x-forwarded-for", "6.6.6.6, 203.0.113.7:4711"), ("x-forwarded-for", "10.1.1.1, ")]
    )
    # 10.1.1.1 is a trusted hop; 203.0.113.7 is the first untrusted one.
    assert proxies.client_address(("10.0.0.2", 80), headers) == ("203.0.113.7", 4711)
    assert proxies.client_address("", headers) == ("203.0.113.7", 4711)
    only_proxies = Headers([("x-forwarded-for", "10.9.9.9")])
    assert proxies.client_address(("10.0.0.2", 80), only_proxies) == ("10.9.9.9", 0)
    assert proxies.client_address(("10.0.0.2", 80), Headers()) == ("10.0.0.2", 80)


def test_forwarded_wins_and_unknown_ends_the_walk() -> None:
    proxies = TrustedProxies(["loopback"])
    peer = ("127.0.0.1", 9)
    headers = Headers(
        [
            ("forwarded", 'for="[2001:db8::1]:4711";proto=https, for=127.0.0.2'),
            ("x-forwarded-for", "6.6.6.6"),
        ]
    )
    assert proxies.client_address(peer, headers) == ("2001:db8::1", 4711)
    hidden = Headers([("forwarded", "for=198.51.100.1, for=_hidden, for=127.0.0.3")])
    # Nothing left of an obfuscated hop can be trusted: the last known proxy.
    assert proxies.client_address(peer, hidden) == ("127.0.0.3", 0)
    no_for = Headers([("forwarded", "proto=https;by=127.0.0.1")])
    assert proxies.client_address(peer, no_for) == peer
    bare_v6 = Headers([("forwarded", 'for="[2001:db8::2]"'), ("forwarded", "for=2001:db8::3")])
    assert proxies.client_address(peer, bare_v6) == ("2001:db8::3", 0)
    odd_port = Headers([("x-forwarded-for", "1.2.3.4:http")])
    assert proxies.client_address(peer, odd_port) == ("1.2.3.4", 0)
    a_name = Headers([("x-forwarded-for", "client.example")])
    assert proxies.client_address(peer, a_name) == peer
    assert proxies.trusts(("fe80::1%eth0", 1)) is False
    assert proxies.trusts(("::1%lo", 1)) is True


def test_trusted_proxies_are_parsed_once_per_set() -> None:
    entries = frozenset({"10.0.0.0/8"})
    assert trusted_proxies(entries) is trusted_proxies(entries)


def test_config_validates_trusted_proxies() -> None:
    assert Config(trusted_proxies=frozenset({" unix "})).trusted_proxies == {"unix"}
    with pytest.raises(ConfigError, match="trusted_proxies: must be a set of addresses"):
        Config(trusted_proxies="10.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="trusted_proxies: 'proxy' is not an IP address"):
        Config(trusted_proxies=frozenset({"proxy"}))
