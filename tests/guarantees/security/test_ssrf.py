"""Security, section 2: SSRF through every route that fetches a URL (``POST /encode_image``'s
``image_url``, single and listed; ``image_url`` parts of ``POST /v1/chat/completions``; image
inputs of ``POST /v1/embeddings``), with a local server on ``TEST_IMAGE_HOST`` that redirects
to forbidden targets and misbehaves (compressed bodies, oversize bodies, slowness)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest

from tests.support.common import REPO_ROOT, TEST_IMAGE_HOST, RunningApp
from tests.support.security import URL_ROUTES, check, encode_url, fetch_url, redirect_to, tally
from vlgraph.safe_fetch import address_class

pytestmark = pytest.mark.integration

FORBIDDEN = "url_forbidden_address"

#: (url, status, code, message fragment): refused before any connection is made.
SSRF_URL_CASES = [
    # IPv4 loopback, in every spelling a resolver accepts
    ("http://127.0.0.1/x.jpg", 403, FORBIDDEN, "127.0.0.1, a loopback address"),
    ("http://127.0.0.1:8265/api/jobs/", 403, FORBIDDEN, "loopback"),  # Ray's Jobs API
    ("http://127.255.255.254/", 403, FORBIDDEN, "loopback"),
    ("http://127.0.0.3/", 403, FORBIDDEN, "loopback"),  # the exemption is one address
    ("http://127.1/", 403, FORBIDDEN, "resolves to 127.0.0.1, a loopback"),
    ("http://127.0.1/", 403, FORBIDDEN, "resolves to 127.0.0.1, a loopback"),
    ("http://2130706433/", 403, FORBIDDEN, "resolves to 127.0.0.1, a loopback"),
    ("http://0x7f000001/", 403, FORBIDDEN, "resolves to 127.0.0.1, a loopback"),
    ("http://0x7f.0.0.1/", 403, FORBIDDEN, "resolves to 127.0.0.1, a loopback"),
    ("http://017700000001/", 403, FORBIDDEN, "resolves to 127.0.0.1, a loopback"),
    ("http://0177.0.0.1/", 400, "invalid_url", "Invalid IPv4 address"),
    ("http://127.000.000.001/", 400, "invalid_url", "Invalid IPv4 address"),
    ("http://%31%32%37.0.0.1/", 403, FORBIDDEN, "127.0.0.1, a loopback"),
    ("http://127\u30020\u30020\u30021/", 403, FORBIDDEN, "127.0.0.1, a loopback"),
    ("HTTP://127.0.0.1/", 403, FORBIDDEN, "loopback"),
    ("http://127.0.0.1#@example.com/", 403, FORBIDDEN, "loopback"),
    # unspecified, private, link-local / cloud metadata, CGNAT, multicast, reserved
    ("http://0.0.0.0/", 403, FORBIDDEN, "0.0.0.0, an unspecified address"),
    ("http://0/", 403, FORBIDDEN, "resolves to 0.0.0.0, an unspecified"),
    ("http://10.0.0.1/", 403, FORBIDDEN, "10.0.0.1, a private address"),
    ("http://10.255.255.254/", 403, FORBIDDEN, "private"),
    ("http://172.16.0.1/", 403, FORBIDDEN, "172.16.0.1, a private address"),
    ("http://172.31.255.254/", 403, FORBIDDEN, "private"),
    ("http://192.168.0.1/", 403, FORBIDDEN, "192.168.0.1, a private address"),
    ("http://198.18.0.1/", 403, FORBIDDEN, "private"),
    ("http://169.254.169.254/latest/meta-data/", 403, FORBIDDEN, "link-local / cloud metadata"),
    ("http://169.254.170.2/v2/credentials", 403, FORBIDDEN, "link-local / cloud metadata"),
    ("http://2852039166/", 403, FORBIDDEN, "resolves to 169.254.169.254"),
    ("http://0xa9fea9fe/", 403, FORBIDDEN, "resolves to 169.254.169.254"),
    ("http://0xa9.0xfe.0xa9.0xfe/", 403, FORBIDDEN, "resolves to 169.254.169.254"),
    ("http://169.254.43518/", 403, FORBIDDEN, "resolves to 169.254.169.254"),
    ("http://0251.0376.0251.0376/", 400, "invalid_url", "Invalid IPv4 address"),
    ("http://100.64.0.1/", 403, FORBIDDEN, "CGNAT"),
    ("http://100.100.100.200/latest/meta-data/", 403, FORBIDDEN, "CGNAT"),  # Alibaba metadata
    ("http://224.0.0.1/", 403, FORBIDDEN, "multicast"),
    ("http://240.0.0.1/", 403, FORBIDDEN, "reserved"),
    ("http://255.255.255.255/", 403, FORBIDDEN, "reserved"),
    ("http://4294967295/", 403, FORBIDDEN, "resolves to 255.255.255.255, a reserved"),
    # IPv6 forms, and IPv6 addresses that embed a forbidden IPv4 address
    ("http://[::1]/", 403, FORBIDDEN, "::1, a loopback address"),
    ("http://[0:0:0:0:0:0:0:1]/", 403, FORBIDDEN, "::1, a loopback address"),
    ("http://[::]/", 403, FORBIDDEN, "::, an unspecified address"),
    ("http://[::ffff:127.0.0.1]/", 403, FORBIDDEN, "(embeds 127.0.0.1), a loopback"),
    ("http://[::ffff:7f00:1]/", 403, FORBIDDEN, "(embeds 127.0.0.1), a loopback"),
    ("http://[::ffff:169.254.169.254]/", 403, FORBIDDEN, "(embeds 169.254.169.254)"),
    ("http://[::ffff:a00:1]/", 403, FORBIDDEN, "(embeds 10.0.0.1), a private"),
    ("http://[::ffff:127.0.0.1%25eth0]/", 403, FORBIDDEN, "(embeds 127.0.0.1)"),
    ("http://[64:ff9b::a9fe:a9fe]/", 403, FORBIDDEN, "(embeds 169.254.169.254)"),
    ("http://[64:ff9b::169.254.169.254]/", 403, FORBIDDEN, "(embeds 169.254.169.254)"),
    ("http://[64:ff9b::7f00:1]/", 403, FORBIDDEN, "(embeds 127.0.0.1), a loopback"),
    ("http://[64:ff9b::7f00:2]/", 403, FORBIDDEN, "(embeds 127.0.0.2), a loopback"),
    ("http://[64:ff9b:1::a9fe:a9fe]/", 403, FORBIDDEN, "reserved"),
    ("http://[2002:7f00:1::]/", 403, FORBIDDEN, "(embeds 127.0.0.1), a loopback"),
    ("http://[2002:a9fe:a9fe::]/", 403, FORBIDDEN, "(embeds 169.254.169.254)"),
    ("http://[2002:c0a8:1::1]/", 403, FORBIDDEN, "(embeds 192.168.0.1), a private"),
    ("http://[::127.0.0.1]/", 403, FORBIDDEN, "reserved"),
    ("http://[::ffff:0:7f00:1]/", 403, FORBIDDEN, "reserved"),
    ("http://[fe80::1]/", 403, FORBIDDEN, "fe80::1, a link-local"),
    ("http://[fe80::1%25eth0]/", 403, FORBIDDEN, "fe80::1, a link-local"),
    ("http://[fd00:ec2::254]/latest/meta-data/", 403, FORBIDDEN, "private"),  # AWS IMDS v6
    ("http://[fc00::1]/", 403, FORBIDDEN, "fc00::1, a private address"),
    ("http://[fec0::1]/", 403, FORBIDDEN, "private"),
    ("http://[ff02::1]/", 403, FORBIDDEN, "multicast"),
    ("http://[2001:db8::1]/", 403, FORBIDDEN, "private"),
    ("http://[100::1]/", 403, FORBIDDEN, "reserved"),
    # schemes other than http(s)
    ("file:///etc/passwd", 400, "unsupported_url_scheme", "'file'"),
    ("file://localhost/etc/passwd", 400, "unsupported_url_scheme", "'file'"),
    ("FILE:///etc/passwd", 400, "unsupported_url_scheme", "'file'"),
    ("ftp://127.0.0.1/x.jpg", 400, "unsupported_url_scheme", "'ftp'"),
    ("gopher://127.0.0.1:6379/_INFO", 400, "unsupported_url_scheme", "'gopher'"),
    ("dict://127.0.0.1:11211/stat", 400, "unsupported_url_scheme", "'dict'"),
    ("data:image/png;base64,iVBORw0KGgo=", 400, "unsupported_url_scheme", "'data'"),
    ("javascript:alert(1)", 400, "unsupported_url_scheme", "'javascript'"),
    ("jar:http://example.com/x.jar!/", 400, "unsupported_url_scheme", "'jar'"),
    ("ws://127.0.0.1/", 400, "unsupported_url_scheme", "'ws'"),
    ("ldap://127.0.0.1/", 400, "unsupported_url_scheme", "'ldap'"),
    # credentials in the URL (and the parser confusions built on them)
    ("http://user:pass@example.com/x.jpg", 400, "invalid_url", "credentials"),
    ("http://user@example.com/x.jpg", 400, "invalid_url", "credentials"),
    ("http://example.com@127.0.0.1/", 400, "invalid_url", "credentials"),
    ("http://127.0.0.1:80@example.com/", 400, "invalid_url", "credentials"),
    ("http://1.1.1.1\\@127.0.0.1/", 400, "invalid_url", "credentials"),
    ("http://127.0.0.1%2f@example.com/", 400, "invalid_url", "credentials"),
    # malformed URLs: 400, never a 500
    ("//127.0.0.1/x.jpg", 400, "invalid_url", "absolute"),
    ("/etc/passwd", 400, "invalid_url", "absolute"),
    ("", 400, "invalid_url", "absolute"),
    ("http:///x.jpg", 400, "invalid_url", "no host"),
    ("http:127.0.0.1/", 400, "invalid_url", "no host"),
    ("http://[::1/", 400, "invalid_url", "not a valid URL"),
    ("http://exa mple.com/", 400, "invalid_url", "invalid host"),
    ("http://%2e%2e/", 400, "invalid_url", "invalid host"),
    ("http://127.0.0.2/x\r\nX-Injected: 1", 400, "invalid_url", "non-printable"),
    ("http://127.0.0.1\x00.example.com/", 400, "invalid_url", "non-printable"),
    ("http://xn--/", 400, "invalid_url", "not a valid URL"),
    ("http://127.0.0.2:65536/x.jpg", 400, "invalid_url", "port 65536"),
    ("http://127.0.0.2:0/x.jpg", 400, "invalid_url", "port 0"),
    ("http://127.0.0.2:1/" + "x" * 70_000, 400, "invalid_url", "characters; the limit is"),
    ("http://no-such-host.invalid/x.jpg", 422, "url_unresolvable", "cannot be resolved"),
]


def url_id(url: str) -> str:
    """A short printable test id for a URL row."""
    shown = url.encode("unicode_escape").decode("ascii")
    return (shown[:60] + f"...{len(url)}") if len(shown) > 60 else shown or "empty"


def _private_names() -> list[str]:
    """Host names this machine resolves only to addresses the fetcher refuses (computed
    here, since /etc/hosts differs between machines): localhost, its hostname, ..."""
    names = {"localhost", "localhost.", "LOCALHOST", "ip6-localhost", "ip6-loopback"}
    names |= {socket.gethostname(), socket.getfqdn(), "localhost.localdomain"}
    try:
        for line in Path("/etc/hosts").read_text().splitlines():
            names.update(line.split("#", 1)[0].split()[1:])
    except OSError:
        pass
    exempt = ipaddress.ip_network(f"{TEST_IMAGE_HOST}/32")
    private = []
    for name in sorted(names):
        try:
            infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            continue
        addresses = {ipaddress.ip_address(info[4][0].partition("%")[0]) for info in infos}
        if addresses and all(
            address_class(address) is not None and address not in exempt for address in addresses
        ):
            private.append(name)
    return private


PRIVATE_NAMES = _private_names()


#: The /v1 routes read a data: URI themselves (its own cases: test_openai_images.py).
V1_SKIPS = {"data:image/png;base64,iVBORw0KGgo="}


@pytest.mark.parametrize("form", ["single", "listed", "v1-chat-url", "v1-embed-url"])
@pytest.mark.parametrize(
    ("url", "status", "code", "fragment"),
    SSRF_URL_CASES,
    ids=[url_id(c[0]) for c in SSRF_URL_CASES],
)
def test_image_urls_refuse_internal_and_malformed_urls(
    app: RunningApp, hostile: str, form: str, url: str, status: int, code: str, fragment: str
) -> None:
    if form == "single":
        check(encode_url(app, url), status, code, fragment)
    elif form == "listed":  # a good URL first: the bad item still refuses the request
        check(encode_url(app, [f"{hostile}/image.jpg", url]), status, code, fragment, "item 1")
    elif url not in V1_SKIPS:
        error = check(fetch_url(app, form, url), status, code, fragment)["error"]
        assert error["param"] in ("input[0]", "messages[0].content[0].image_url"), error


def test_these_are_all_the_routes_that_fetch_urls() -> None:
    """This section covers every route that fetches a URL: ``/encode_image`` and the /v1
    image URLs (chat and embeddings read them through one module). A new caller of the
    fetcher fails here until its route gets rows above."""
    callers = {
        str(path.relative_to(REPO_ROOT))
        for folder in ("deployments", "graphs", "vlgraph")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if any(call in path.read_text() for call in ("_fetcher.fetch(", ".fetch(url", ".fetched("))
    }
    assert callers == {
        "deployments/ingress/routes/embeddings.py",
        "deployments/ingress/routes/openai/image_urls.py",
    }, callers
    image_url_readers = {
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "deployments").rglob("*.py")
        if "ImageUrls(" in path.read_text()
    }
    assert image_url_readers == {
        "deployments/ingress/routes/openai/chat.py",
        "deployments/ingress/routes/openai/embeddings.py",
    }, image_url_readers


@pytest.mark.parametrize("route", URL_ROUTES)
@pytest.mark.parametrize("name", PRIVATE_NAMES)
def test_image_urls_refuse_names_resolving_to_private_addresses(
    app: RunningApp, name: str, route: str
) -> None:
    check(fetch_url(app, route, f"http://{name}/x.jpg"), 403, FORBIDDEN, "resolves to")


def test_private_names_were_found() -> None:
    """The machine's own names must be among the rows (localhost at least)."""
    assert "localhost" in PRIVATE_NAMES, PRIVATE_NAMES
    tally(200, None)


#: (redirect target, status, code, fragment): every hop is checked like the first URL.
REDIRECT_TARGETS = [
    ("http://127.0.0.1/x.jpg", 403, FORBIDDEN, "loopback"),
    ("http://127.1/x.jpg", 403, FORBIDDEN, "loopback"),
    ("http://2130706433/x.jpg", 403, FORBIDDEN, "loopback"),
    ("http://0x7f000001/x.jpg", 403, FORBIDDEN, "loopback"),
    ("http://0.0.0.0/x.jpg", 403, FORBIDDEN, "unspecified"),
    ("http://10.0.0.1/x.jpg", 403, FORBIDDEN, "private"),
    ("http://172.16.0.1/x.jpg", 403, FORBIDDEN, "private"),
    ("http://192.168.0.1/x.jpg", 403, FORBIDDEN, "private"),
    ("http://169.254.169.254/latest/meta-data/", 403, FORBIDDEN, "cloud metadata"),
    ("http://2852039166/latest/meta-data/", 403, FORBIDDEN, "cloud metadata"),
    ("http://100.64.0.1/x.jpg", 403, FORBIDDEN, "CGNAT"),
    ("http://[::1]/x.jpg", 403, FORBIDDEN, "loopback"),
    ("http://[::]/x.jpg", 403, FORBIDDEN, "unspecified"),
    ("http://[::ffff:127.0.0.1]/x.jpg", 403, FORBIDDEN, "embeds 127.0.0.1"),
    ("http://[64:ff9b::a9fe:a9fe]/x.jpg", 403, FORBIDDEN, "embeds 169.254.169.254"),
    ("http://[fe80::1]/x.jpg", 403, FORBIDDEN, "link-local"),
    ("http://[fc00::1]/x.jpg", 403, FORBIDDEN, "private"),
    ("http://[2002:7f00:1::]/x.jpg", 403, FORBIDDEN, "embeds 127.0.0.1"),
    ("http://localhost/x.jpg", 403, FORBIDDEN, "the host 'localhost'"),
    ("//127.0.0.1/x.jpg", 403, FORBIDDEN, "loopback"),  # scheme-relative
    ("file:///etc/passwd", 400, "unsupported_url_scheme", "'file'"),
    ("gopher://127.0.0.1:6379/_INFO", 400, "unsupported_url_scheme", "'gopher'"),
    ("ftp://127.0.0.1/x.jpg", 400, "unsupported_url_scheme", "'ftp'"),
    ("http://user:pass@example.com/x.jpg", 400, "invalid_url", "credentials"),
    ("http://127.0.0.2:65536/x.jpg", 400, "invalid_url", "port 65536"),
    ("http://xn--/x.jpg", 400, "invalid_url", "not a valid URL"),
    ("http://[::1/x.jpg", 400, "invalid_url", "not a valid URL"),
    ("http://%ff/x.jpg", 400, "invalid_url", "invalid host"),
    *(
        (f"http://{name}/x.jpg", 403, FORBIDDEN, "resolves to")
        for name in PRIVATE_NAMES
        if name == socket.gethostname()
    ),
]


@pytest.mark.parametrize("route", URL_ROUTES)
@pytest.mark.parametrize("redirect_status", [302, 307])
@pytest.mark.parametrize(
    ("target", "status", "code", "fragment"),
    REDIRECT_TARGETS,
    ids=[url_id(c[0]) for c in REDIRECT_TARGETS],
)
def test_redirects_to_forbidden_targets_are_refused(
    app: RunningApp,
    hostile: str,
    redirect_status: int,
    target: str,
    status: int,
    code: str,
    fragment: str,
    route: str,
) -> None:
    response = fetch_url(app, route, redirect_to(hostile, target, redirect_status))
    check(response, status, code, "the redirect to", fragment)


#: (path on the hostile server, status, code, fragments): what a fetched answer may not do.
HOSTILE_ANSWER_CASES = [
    ("/image.jpg", 200, None, ()),  # control: the exempt server is reachable
    ("/hops-then-image/3", 200, None, ()),  # control: max_redirects hops are followed
    ("/hop/0", 422, "too_many_redirects", ("max_redirects (3)",)),
    ("/hops-then-image/4", 422, "too_many_redirects", ("max_redirects (3)",)),
    ("/redirect?to=%2Fredirect%3Fto%3D%252Fhop%252F0", 422, "too_many_redirects", ()),
    ("/no-location", 422, "url_fetch_failed", ("without a Location",)),
    ("/status/500", 422, "url_fetch_failed", ("answered 500",)),
    ("/status/404", 422, "url_fetch_failed", ("answered 404",)),
    ("/page.html", 415, "unsupported_media_type", ("not a known image format",)),
    ("/big.jpg", 413, "image_too_large", ("Content-Length",)),
    ("/big-chunked.jpg", 413, "image_too_large", ("streaming",)),
    ("/gzip.jpg", 422, "url_fetch_failed", ("Content-Encoding: gzip",)),
    ("/gzip-nested.jpg", 422, "url_fetch_failed", ("Content-Encoding: gzip, gzip",)),
    ("/deflate.jpg", 422, "url_fetch_failed", ("Content-Encoding: deflate",)),
    ("/br.jpg", 422, "url_fetch_failed", ("Content-Encoding: br",)),
    ("/slow.jpg", 422, "url_timeout", ("read_timeout_s",)),
]


@pytest.mark.parametrize("route", URL_ROUTES)
@pytest.mark.parametrize(
    ("path", "status", "code", "fragments"),
    HOSTILE_ANSWER_CASES,
    ids=[url_id(c[0]) for c in HOSTILE_ANSWER_CASES],
)
def test_hostile_answers_are_refused(
    app: RunningApp,
    hostile: str,
    path: str,
    status: int,
    code: str | None,
    fragments: tuple,
    route: str,
) -> None:
    body = check(fetch_url(app, route, hostile + path), status, code, *fragments)
    if code is None and route == "encode-url":
        assert body["dimension"] == 512 and len(body["embedding"]) == 512
    elif code is None and route == "v1-chat-url":
        assert body["choices"][0]["message"]["content"], body
    elif code is None:
        assert len(body["data"][0]["embedding"]) == 512, body


@pytest.mark.parametrize("route", URL_ROUTES)
def test_https_to_a_plain_server_fails_cleanly(app: RunningApp, hostile: str, route: str) -> None:
    url = hostile.replace("http://", "https://") + "/image.jpg"
    check(fetch_url(app, route, url), 422, "url_fetch_failed", "could not fetch")
