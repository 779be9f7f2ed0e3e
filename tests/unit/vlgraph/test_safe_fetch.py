"""The SSRF-guarded image fetcher (CLIP embeddings' ``image_url``) against a real local server.

No Ray, no DNS, no internet: a stdlib HTTP server on 127.0.0.1 answers the fetches, names are
resolved by an injected resolver (or are IP literals), and tests that must not connect at all
replace ``httpx.AsyncClient.send`` with a function that fails the test.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from tests.support.common import free_port, noise_image
from vlgraph.config import ImageFetchConfig
from vlgraph.errors import ServiceError, UnsupportedMediaTypeError
from vlgraph.images import inspect_image
from vlgraph.safe_fetch import FetchedImage, ImageFetcher, address_class

LIMIT = 20_000  # max_bytes of every fetcher here
SLOW_S = 1.5  # how long /slow waits before answering; longer than READ_TIMEOUT_S
READ_TIMEOUT_S = 0.5
STREAM_CAP = 64 * 1024 * 1024  # /stream stops here if nobody hangs up earlier
LOCAL_ONLY = ("127.0.0.1/32",)


def _png() -> bytes:
    buffer = io.BytesIO()
    noise_image(3, (24, 16)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


@dataclass
class ServerState:
    """What the test server saw and did, shared with its handler threads."""

    requests: list[tuple[str, str | None]] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    stream_sent: int = 0
    stream_done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def paths(self) -> list[str]:
        with self.lock:
            return [path for path, _ in self.requests]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.sni.clear()
        self.stream_done.clear()


class Handler(BaseHTTPRequestHandler):
    """Routes: /png, /hops/N, /redirect?to=URL, /no-location, /bytes?n=N[&chunked=1],
    /stream, /slow, /drip, /text; anything else is a 404."""

    protocol_version = "HTTP/1.1"
    server: LocalServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server.state
        with state.lock:
            state.requests.append((self.path, self.headers.get("Host")))
        self.close_connection = True
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        path = url.path
        if path == "/png":
            self._send(200, PNG, "image/png")
        elif path.startswith("/hops/"):
            left = int(path.removeprefix("/hops/"))
            if left > 0:
                self._redirect(f"/hops/{left - 1}")
            else:
                self._send(200, PNG, "image/png")
        elif path == "/redirect":
            self._redirect(query["to"])
        elif path == "/no-location":
            self._send(302, b"", "text/plain")
        elif path == "/bytes":
            body = b"x" * int(query["n"])
            if query.get("chunked"):
                self._send_chunked(body[i : i + 4096] for i in range(0, len(body), 4096))
            else:
                self._send(200, body, "application/octet-stream")
        elif path == "/stream":
            self._stream()
        elif path == "/slow":
            time.sleep(SLOW_S)
            self._send(200, PNG, "image/png")
        elif path == "/drip":
            self._send_chunked(self._drip())
        elif path == "/text":
            self._send(200, b"hello, not an image", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def _send_chunked(self, chunks: Iterator[bytes]) -> int:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        sent = 0
        for chunk in chunks:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        self.wfile.write(b"0\r\n\r\n")
        return sent

    def _drip(self) -> Iterator[bytes]:
        # One byte every 0.2 s: never silent for read_timeout_s, never done for 3 s.
        for _ in range(15):
            yield b"x"
            time.sleep(0.2)

    def _stream(self) -> None:
        """64 KiB chunks up to STREAM_CAP; records how much got out before the client hung up."""
        state = self.server.state
        sent = 0

        def chunks() -> Iterator[bytes]:
            nonlocal sent
            block = b"x" * 65536
            while sent < STREAM_CAP:
                yield block
                sent += len(block)

        try:
            self._send_chunked(chunks())
        except OSError:
            pass
        finally:
            state.stream_sent = sent
            state.stream_done.set()


class LocalServer(ThreadingHTTPServer):
    """The test server; errors from clients that hang up early are expected and silenced."""

    daemon_threads = True

    def __init__(self, state: ServerState) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.state = state

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@dataclass
class RunningServer:
    state: ServerState
    port: int

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


def _serve(state: ServerState, tls: ssl.SSLContext | None = None) -> Iterator[RunningServer]:
    server = LocalServer(state)
    if tls is not None:
        server.socket = tls.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield RunningServer(state, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def _http_server() -> Iterator[RunningServer]:
    yield from _serve(ServerState())


@pytest.fixture
def server(_http_server: RunningServer) -> RunningServer:
    _http_server.state.reset()
    return _http_server


def make_config(**overrides: object) -> ImageFetchConfig:
    values: dict[str, object] = {
        "max_redirects": 3,
        "connect_timeout_s": 0.5,
        "read_timeout_s": READ_TIMEOUT_S,
        "total_timeout_s": 2.0,
        "user_agent": "vlgraph-test-fetch/1",
    }
    values.update(overrides)
    return ImageFetchConfig(**values)


class StaticResolver:
    """A resolver from a dict; unknown names fail like DNS does. Counts its calls."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.names[host]


def fetch(
    url: str,
    config: ImageFetchConfig | None = None,
    resolver: StaticResolver | None = None,
    max_bytes: int = LIMIT,
) -> FetchedImage:
    async def run() -> FetchedImage:
        fetcher = ImageFetcher(config or make_config(), max_bytes, resolver=resolver)
        try:
            return await fetcher.fetch(url)
        finally:
            await fetcher.aclose()

    return asyncio.run(run())


def refusal(url: str, status: int, code: str, **kwargs: object) -> ServiceError:
    """The error fetching ``url`` raises; it must have ``status`` and ``code``."""
    with pytest.raises(ServiceError) as caught:
        fetch(url, **kwargs)  # type: ignore[arg-type]
    error = caught.value
    assert (error.status, error.code) == (status, code), error.message
    return error


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to send a request fails the test."""

    async def forbidden_send(*args: object, **kwargs: object) -> None:
        raise AssertionError("the fetcher tried to connect")

    monkeypatch.setattr(httpx.AsyncClient, "send", forbidden_send)


# --- address classification ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.0.1", "private"),
        ("fd00:ec2::254", "private"),  # AWS IPv6 instance metadata (unique local)
        ("fec0::1", "private"),  # deprecated site-local
        ("169.254.169.254", "link-local / cloud metadata"),
        ("fe80::1", "link-local / cloud metadata"),
        ("100.64.0.1", "CGNAT (100.64.0.0/10)"),
        ("100.127.255.254", "CGNAT (100.64.0.0/10)"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        # Forms that embed an IPv4 address are judged by it.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local / cloud metadata"),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("2002:a9fe:a9fe::", "link-local / cloud metadata"),  # 6to4 of 169.254.169.254
        ("2002:808:808::1", None),
    ],
)
def test_address_class(address: str, expected: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == expected


@pytest.mark.parametrize(
    "address", ["192.0.2.1", "198.18.0.1", "2001:db8::1", "64:ff9b:1::a00:1", "::7f00:1"]
)
def test_other_non_global_addresses_are_refused(address: str) -> None:
    assert address_class(ipaddress.ip_address(address)) is not None


# --- fetching from the local server (allowed_networks = 127.0.0.1/32) ----------------------


def test_fetches_an_image(server: RunningServer) -> None:
    fetched = fetch(server.url("/png"), make_config(allowed_networks=LOCAL_ONLY))
    assert fetched.data == PNG
    assert fetched.content_type == "image/png"
    assert fetched.final_url == server.url("/png")
    assert server.state.requests == [("/png", f"127.0.0.1:{server.port}")]


def test_fetcher_returns_non_images_for_the_caller_to_judge(server: RunningServer) -> None:
    fetched = fetch(server.url("/text"), make_config(allowed_networks=LOCAL_ONLY))
    assert fetched.content_type == "text/plain; charset=utf-8"
    with pytest.raises(UnsupportedMediaTypeError):
        inspect_image(fetched.data, ("png", "jpeg"))


def test_connects_to_the_checked_address_with_the_real_host_header(
    server: RunningServer,
) -> None:
    resolver = StaticResolver({"images.test": ["127.0.0.1"]})
    url = server.url("/png", host="images.test")
    fetched = fetch(url, make_config(allowed_networks=LOCAL_ONLY), resolver)
    assert fetched.data == PNG
    assert fetched.final_url == url
    # Resolved once, by our resolver (there is no DNS here for httpx to use instead).
    assert resolver.calls == [("images.test", server.port)]
    assert server.state.requests == [("/png", f"images.test:{server.port}")]


def test_default_resolver_is_used_for_names(server: RunningServer) -> None:
    # "127.1" is not an IP literal to ipaddress but getaddrinfo reads it as 127.0.0.1
    # without asking DNS.
    fetched = fetch(server.url("/png", host="127.1"), make_config(allowed_networks=LOCAL_ONLY))
    assert fetched.data == PNG
    assert server.state.requests == [("/png", f"127.1:{server.port}")]


def test_sends_user_agent_and_accept(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[httpx.Headers] = []
    real_send = httpx.AsyncClient.send

    async def spy(self: httpx.AsyncClient, request: httpx.Request, **kwargs: object):
        seen.append(request.headers)
        return await real_send(self, request, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", spy)
    fetch(server.url("/png"), make_config(allowed_networks=LOCAL_ONLY))
    assert seen[0]["User-Agent"] == "vlgraph-test-fetch/1"
    assert seen[0]["Accept"] == "image/*"


def test_follows_redirects_up_to_the_limit(server: RunningServer) -> None:
    fetched = fetch(server.url("/hops/3"), make_config(allowed_networks=LOCAL_ONLY))
    assert fetched.data == PNG
    assert fetched.final_url == server.url("/hops/0")
    assert server.state.paths() == ["/hops/3", "/hops/2", "/hops/1", "/hops/0"]


def test_refuses_redirects_past_the_limit(server: RunningServer) -> None:
    error = refusal(
        server.url("/hops/4"),
        422,
        "too_many_redirects",
        config=make_config(allowed_networks=LOCAL_ONLY),
    )
    assert "max_redirects (3)" in error.message
    assert server.state.paths() == ["/hops/4", "/hops/3", "/hops/2", "/hops/1"]


def test_no_redirects_when_max_redirects_is_zero(server: RunningServer) -> None:
    config = make_config(allowed_networks=LOCAL_ONLY, max_redirects=0)
    refusal(server.url("/hops/1"), 422, "too_many_redirects", config=config)
    assert server.state.paths() == ["/hops/1"]


@pytest.mark.parametrize(
    ("target", "status", "code", "reason"),
    [
        ("http://10.0.0.1/x", 403, "url_forbidden_address", "10.0.0.1, a private address"),
        (
            "http://169.254.169.254/latest/meta-data/",
            403,
            "url_forbidden_address",
            "169.254.169.254, a link-local / cloud metadata address",
        ),
        ("http://[::1]:{port}/secret", 403, "url_forbidden_address", "::1, a loopback address"),
        (
            "http://[::ffff:10.0.0.1]/",
            403,
            "url_forbidden_address",
            "(embeds 10.0.0.1), a private address",
        ),
        ("file:///etc/passwd", 400, "unsupported_url_scheme", "scheme 'file'"),
        ("gopher://127.0.0.1:{port}/png", 400, "unsupported_url_scheme", "scheme 'gopher'"),
        ("http://user:pw@127.0.0.1:{port}/png", 400, "invalid_url", "credentials"),
    ],
)
def test_redirect_targets_are_checked_before_connecting(
    server: RunningServer, target: str, status: int, code: str, reason: str
) -> None:
    target = target.format(port=server.port)
    start = server.url(f"/redirect?to={quote(target, safe='')}")
    error = refusal(start, status, code, config=make_config(allowed_networks=LOCAL_ONLY))
    assert reason in error.message
    assert f"redirect to {target}" in error.message
    # The only request the server got is the one that redirected.
    assert len(server.state.requests) == 1


def test_redirect_without_location(server: RunningServer) -> None:
    error = refusal(
        server.url("/no-location"),
        422,
        "url_fetch_failed",
        config=make_config(allowed_networks=LOCAL_ONLY),
    )
    assert "302 without a Location" in error.message


def test_404_is_a_fetch_failure(server: RunningServer) -> None:
    error = refusal(
        server.url("/missing"),
        422,
        "url_fetch_failed",
        config=make_config(allowed_networks=LOCAL_ONLY),
    )
    assert "the server answered 404" in error.message


def test_connection_refused_is_a_fetch_failure() -> None:
    url = f"http://127.0.0.1:{free_port()}/png"
    refusal(url, 422, "url_fetch_failed", config=make_config(allowed_networks=LOCAL_ONLY))


# --- the guard fully on (no allowed_networks): refused before any connection ---------------


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1:{port}", "127.0.0.1, a loopback address"),
        ("localhost:{port}", "127.0.0.1, a loopback address"),
        ("[::1]", "::1, a loopback address"),
        # (Python < 3.13 writes the address itself as ::ffff:7f00:1.)
        ("[::ffff:127.0.0.1]", "(embeds 127.0.0.1), a loopback address"),
        ("[64:ff9b::a00:1]", "(embeds 10.0.0.1), a private address"),
        ("10.1.2.3", "a private address"),
        ("192.168.0.1", "a private address"),
        ("172.16.0.1", "a private address"),
        ("169.254.169.254", "a link-local / cloud metadata address"),
        ("100.64.0.1", "a CGNAT (100.64.0.0/10) address"),
        ("0.0.0.0", "0.0.0.0, an unspecified address"),
        ("[fe80::1]", "a link-local / cloud metadata address"),
        ("[fd00:ec2::254]", "fd00:ec2::254, a private address"),
        ("224.0.0.1", "a multicast address"),
    ],
)
@pytest.mark.usefixtures("no_connections")
def test_internal_addresses_are_refused(server: RunningServer, host: str, reason: str) -> None:
    resolver = StaticResolver({"localhost": ["127.0.0.1", "::1"]})
    url = f"http://{host.format(port=server.port)}/png"
    error = refusal(url, 403, "url_forbidden_address", resolver=resolver)
    assert reason in error.message
    assert server.state.requests == []


@pytest.mark.usefixtures("no_connections")
def test_default_resolver_results_are_checked(server: RunningServer) -> None:
    # getaddrinfo reads "127.1" and "0x7f000001" as 127.0.0.1 without asking DNS.
    for host in ("127.1", "0x7f000001"):
        error = refusal(server.url("/png", host=host), 403, "url_forbidden_address")
        assert "127.0.0.1, a loopback address" in error.message
    assert server.state.requests == []


@pytest.mark.usefixtures("no_connections")
def test_every_resolved_address_is_checked() -> None:
    resolver = StaticResolver({"mixed.test": ["93.184.216.34", "10.0.0.5"]})
    error = refusal("http://mixed.test/a.png", 403, "url_forbidden_address", resolver=resolver)
    assert "10.0.0.5, a private address" in error.message
    assert resolver.calls == [("mixed.test", 80)]


@pytest.mark.usefixtures("no_connections")
def test_allowed_networks_exempt_only_their_addresses() -> None:
    resolver = StaticResolver({"mixed.test": ["127.0.0.1", "127.0.0.2"]})
    config = make_config(allowed_networks=LOCAL_ONLY)
    error = refusal(
        "https://mixed.test/", 403, "url_forbidden_address", config=config, resolver=resolver
    )
    assert "127.0.0.2, a loopback address" in error.message
    assert resolver.calls == [("mixed.test", 443)]


@pytest.mark.usefixtures("no_connections")
def test_unresolvable_names() -> None:
    resolver = StaticResolver({"empty.test": []})
    error = refusal("http://nowhere.invalid/", 422, "url_unresolvable", resolver=resolver)
    assert "'nowhere.invalid'" in error.message
    refusal("http://empty.test/", 422, "url_unresolvable", resolver=resolver)


# --- URL shape ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("ftp://127.0.0.1/a.png", 400, "unsupported_url_scheme"),
        ("file:///etc/passwd", 400, "unsupported_url_scheme"),
        ("gopher://127.0.0.1:70/_", 400, "unsupported_url_scheme"),
        ("data:image/png;base64,iVBORw0KGgo=", 400, "unsupported_url_scheme"),
        ("http://user:secret@127.0.0.1/a.png", 400, "invalid_url"),
        ("http://user@example.com/a.png", 400, "invalid_url"),
        ("not a url", 400, "invalid_url"),
        ("", 400, "invalid_url"),
        ("http://", 400, "invalid_url"),
        ("http:///a.png", 400, "invalid_url"),
        ("http://[::1/a.png", 400, "invalid_url"),
        ("http://exa mple.com/", 400, "invalid_url"),
    ],
)
@pytest.mark.usefixtures("no_connections")
def test_malformed_or_unsupported_urls(url: str, status: int, code: str) -> None:
    refusal(url, status, code, resolver=StaticResolver({}))


# --- allowed_domains ------------------------------------------------------------------------


def test_allowed_domains(server: RunningServer) -> None:
    resolver = StaticResolver(
        {
            name: ["127.0.0.1"]
            for name in ("img.example.test", "img.example.test.", "evil.test", "notexample.test")
        }
    )
    config = make_config(allowed_domains=("Example.TEST",), allowed_networks=LOCAL_ONLY)
    fetched = fetch(server.url("/png", host="img.example.test"), config, resolver)
    assert fetched.data == PNG
    # Case and a trailing dot do not matter.
    assert fetch(server.url("/png", host="IMG.EXAMPLE.TEST."), config, resolver).data == PNG
    assert server.state.paths() == ["/png", "/png"]
    server.state.reset()
    for host in ("evil.test", "notexample.test", "127.0.0.1"):
        error = refusal(
            server.url("/png", host=host),
            403,
            "url_domain_not_allowed",
            config=config,
            resolver=resolver,
        )
        assert f"'{host}'" in error.message
    # A redirect out of the allowed domains is refused too.
    target = quote(server.url("/png", host="evil.test"), safe="")
    start = server.url(f"/redirect?to={target}", host="img.example.test")
    refusal(start, 403, "url_domain_not_allowed", config=config, resolver=resolver)
    assert server.state.paths() == [f"/redirect?to={target}"]


# --- size and time limits ------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_body_at_the_limit_is_accepted(server: RunningServer, chunked: bool) -> None:
    suffix = "&chunked=1" if chunked else ""
    fetched = fetch(
        server.url(f"/bytes?n={LIMIT}{suffix}"), make_config(allowed_networks=LOCAL_ONLY)
    )
    assert len(fetched.data) == LIMIT


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_the_limit_is_refused(server: RunningServer, chunked: bool) -> None:
    suffix = "&chunked=1" if chunked else ""
    error = refusal(
        server.url(f"/bytes?n={LIMIT + 1}{suffix}"),
        413,
        "image_too_large",
        config=make_config(allowed_networks=LOCAL_ONLY),
    )
    assert f"limit of {LIMIT} bytes" in error.message
    assert ("Content-Length" in error.message) is not chunked


def test_endless_chunked_body_stops_early(server: RunningServer) -> None:
    started = time.monotonic()
    refusal(
        server.url("/stream"),
        413,
        "image_too_large",
        config=make_config(allowed_networks=LOCAL_ONLY),
    )
    elapsed = time.monotonic() - started
    assert server.state.stream_done.wait(5)
    # The server was cut off long before the end: the fetcher read little and hung up.
    assert server.state.stream_sent < 16 * 1024 * 1024, server.state.stream_sent
    assert elapsed < 1.5


def test_slow_server_hits_the_read_timeout(server: RunningServer) -> None:
    started = time.monotonic()
    error = refusal(
        server.url("/slow"), 422, "url_timeout", config=make_config(allowed_networks=LOCAL_ONLY)
    )
    elapsed = time.monotonic() - started
    assert "read_timeout_s (0.5 s)" in error.message
    assert READ_TIMEOUT_S - 0.05 < elapsed < READ_TIMEOUT_S + 0.7


def test_trickling_server_hits_the_total_timeout(server: RunningServer) -> None:
    config = make_config(allowed_networks=LOCAL_ONLY, total_timeout_s=1.0)
    started = time.monotonic()
    error = refusal(server.url("/drip"), 422, "url_timeout", config=config)
    elapsed = time.monotonic() - started
    assert "total_timeout_s (1.0 s)" in error.message
    assert 0.95 < elapsed < 1.7


# --- https: SNI and certificate checks use the hostname, not the dialled IP ---------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA and a certificate it signed for ``images.test`` only (no IP address)."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            ).add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            ).add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("vlgraph test CA", ca_key, "vlgraph test CA", ca_key, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = build("images.test", leaf_key, "vlgraph test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    files["ca"].write_bytes(ca_cert.public_bytes(pem))
    files["cert"].write_bytes(leaf_cert.public_bytes(pem))
    files["key"].write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


@pytest.fixture(scope="module")
def _tls_server(tls_files: dict[str, Path]) -> Iterator[RunningServer]:
    state = ServerState()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])

    def record_sni(connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        with state.lock:
            state.sni.append(name)

    context.sni_callback = record_sni
    yield from _serve(state, context)


@pytest.fixture
def tls_server(
    _tls_server: RunningServer, tls_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> RunningServer:
    # httpx's default verification reads certifi's bundle; trust only the test CA instead.
    import certifi

    monkeypatch.setattr(certifi, "where", lambda: str(tls_files["ca"]))
    _tls_server.state.reset()
    return _tls_server


def test_https_uses_the_hostname_for_sni_and_verification(tls_server: RunningServer) -> None:
    resolver = StaticResolver({"images.test": ["127.0.0.1"]})
    url = tls_server.url("/png", host="images.test", scheme="https")
    fetched = fetch(url, make_config(allowed_networks=LOCAL_ONLY), resolver)
    assert fetched.data == PNG
    assert tls_server.state.sni == ["images.test"]
    assert tls_server.state.requests == [("/png", f"images.test:{tls_server.port}")]


def test_https_certificate_for_another_name_is_refused(tls_server: RunningServer) -> None:
    resolver = StaticResolver({"other.test": ["127.0.0.1"]})
    url = tls_server.url("/png", host="other.test", scheme="https")
    error = refusal(
        url,
        422,
        "url_fetch_failed",
        config=make_config(allowed_networks=LOCAL_ONLY),
        resolver=resolver,
    )
    assert "certificate" in error.message.lower()
    assert tls_server.state.sni == ["other.test"]
    assert tls_server.state.requests == []
