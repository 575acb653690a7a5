"""Proxy URLs and NO_PROXY matching (pure)."""

from __future__ import annotations

import pytest

from syncd.proxy import env_proxies, parse_no_proxy, parse_proxy_url


@pytest.mark.parametrize(
    ("value", "host", "port", "bypass"),
    [
        ("10.0.0.0/8", "10.1.2.3", 443, True),
        ("10.0.0.0/8", "11.1.2.3", 443, False),
        ("10.0.0.0/8", "ten.example.com", 443, False),  # names are never resolved
        ("127.0.0.1/32", "127.0.0.1", 5000, True),
        ("fd00::/8", "fd00::1", 443, True),
        ("fd00::/8", "[fd00::1]", 443, True),
        ("::1", "::1", 443, True),
        ("[::1]:5000", "::1", 5000, True),
        ("[::1]:5000", "::1", 5001, False),
        ("example.com", "example.com", 443, True),
        ("example.com", "reg.example.com", 443, True),
        ("example.com", "badexample.com", 443, False),
        (".example.com", "reg.example.com", 443, True),
        (".example.com", "example.com", 443, True),
        ("*.example.com", "reg.example.com", 443, True),
        ("Example.COM", "REG.example.com.", 443, True),
        ("example.com:5000", "example.com", 5000, True),
        ("example.com:5000", "example.com", 443, False),
        ("127.0.0.1", "127.0.0.1", 1234, True),
        ("127.0.0.1", "127.0.0.2", 1234, False),
        ("localhost", "127.0.0.1", 80, False),  # no implicit loopback bypass
        ("*", "anything", 1, True),
        ("a.com, b.com  c.com", "c.com", 1, True),
        ("", "example.com", 443, False),
        ("not a/cidr, example.com", "example.com", 443, True),
    ],
)
def test_no_proxy(value: str, host: str, port: int, bypass: bool) -> None:
    assert parse_no_proxy(value).matches(host, port) is bypass


def test_no_proxy_reports_what_it_ignores() -> None:
    assert parse_no_proxy("10.0.0.0/33, ok.com, bad:port").ignored == ("10.0.0.0/33", "bad:port")


@pytest.mark.parametrize(
    ("value", "url", "user", "password"),
    [
        ("http://proxy.corp:3128", "http://proxy.corp:3128", None, None),
        ("http://proxy.corp:3128/", "http://proxy.corp:3128", None, None),
        ("http://Proxy.Corp", "http://proxy.corp:80", None, None),
        ("http://bob:p%40ss@proxy.corp:3128", "http://proxy.corp:3128", "bob", "p@ss"),
        ("http://bob@[fd00::1]:3128", "http://[fd00::1]:3128", "bob", None),
        ("http://bob:a:b@proxy:1", "http://proxy:1", "bob", "a:b"),
    ],
)
def test_proxy_url(value: str, url: str, user: str | None, password: str | None) -> None:
    p = parse_proxy_url(value)
    assert (p.url, p.username) == (url, user)
    assert (p.password.reveal() if p.password else None) == password
    assert "p@ss" not in repr(p) and "p%40ss" not in str(p)


@pytest.mark.parametrize(
    "value",
    [
        "https://bob:hunter2@proxy:3128",
        "socks5://bob:hunter2@proxy:1080",
        "http://bob:hunter2@proxy:99999",
        "http://bob:hunter2@proxy:3128/path",
        "http://bob:hunter2@:3128",
        "http://:hunter2@proxy:3128",
        "bob:hunter2@proxy:3128",
    ],
)
def test_bad_proxy_urls_are_refused_without_showing_the_password(value: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_proxy_url(value)
    assert "hunter2" not in str(e.value)


def test_environment_lower_case_first_bare_host_and_errors() -> None:
    env = env_proxies(
        {
            "HTTPS_PROXY": "http://upper:1",
            "https_proxy": "lower:2",
            "HTTP_PROXY": "",
            "NO_PROXY": "10.0.0.0/8",
        }
    )
    assert env.https is not None and env.https.url == "http://lower:2"
    assert env.https.origin == "https_proxy"
    assert env.http is None
    assert env.for_url("https", "10.9.9.9", None) is None
    assert env.for_url("https", "reg.example.com", None) is env.https
    assert env.for_url("http", "reg.example.com", None) is None
    with pytest.raises(ValueError, match="HTTPS_PROXY") as e:
        env_proxies({"HTTPS_PROXY": "socks5://u:hunter2@proxy:1080"})
    assert "hunter2" not in str(e.value)
