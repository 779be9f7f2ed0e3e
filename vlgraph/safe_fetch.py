"""Fetching an image by URL without letting a client reach internal addresses (SSRF guard).

The CLIP embeddings' ``POST /encode_image {"image_url": ...}`` makes the server open a URL a
client chose. :class:`ImageFetcher` checks every hop before it connects: the scheme, the host
against ``allowed_domains``, and every address the host resolves to (loopback, private,
link-local / cloud metadata, CGNAT, multicast, reserved ... are refused unless inside
``allowed_networks``).
It then connects to the address it checked, not to a second resolution of the name, so a DNS
answer that changes between check and connect cannot redirect it. Bodies are read as sent:
a compressed one (``Content-Encoding``, although the request asks for ``identity``) is refused
rather than inflated, so a small gzip bomb cannot expand in memory before the byte limit is
counted. Every refusal is a 4xx :class:`~vlgraph.errors.ServiceError` whose message says why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import unquote

import httpx

from vlgraph.config import ImageFetchConfig
from vlgraph.errors import (
    BadRequestError,
    ForbiddenError,
    PayloadTooLargeError,
    ServiceError,
    ServiceUnavailableError,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Resolves ``(host, port)`` to IP address strings.
Resolver = Callable[[str, int], Awaitable[list[str]]]

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_MAX_URL_IN_MESSAGE = 200
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")  # after IDNA encoding; IP literals are parsed apart
_MAX_PORT = 65535


@dataclass(frozen=True)
class FetchedImage:
    """The body of a fetched URL and where it finally came from (after redirects)."""

    data: bytes
    content_type: str | None
    final_url: str


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, NAT64 64:ff9b::/96, 6to4)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def address_class(address: IPAddress) -> str | None:
    """Why ``address`` must not be fetched from ("loopback", "private", ...), or None when it
    is a public address. Addresses that embed an IPv4 address are judged by that address."""
    embedded = embedded_ipv4(address)
    if embedded is not None:
        return address_class(embedded)
    # Order matters: the most specific reason first (e.g. ::1 is also "reserved").
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local / cloud metadata"
    if address in _CGNAT:
        return "CGNAT (100.64.0.0/10)"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    # Site-local fec0::/10 is deprecated but still not routable; older Pythons call it global.
    if address.is_private or getattr(address, "is_site_local", False):
        return "private"
    if not address.is_global:
        return "non-global"
    return None


async def default_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the event loop's ``getaddrinfo`` (TCP), in the order returned."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return _parse_address(unquote(host))
    except ValueError:
        return None


def _parse_address(text: str) -> IPAddress:
    # A scope ("fe80::1%eth0") cannot be written into the URL we connect to; drop it.
    return ipaddress.ip_address(text.partition("%")[0])


def _shorten(url: str) -> str:
    if len(url) <= _MAX_URL_IN_MESSAGE:
        return url
    return url[:_MAX_URL_IN_MESSAGE] + "..."


def _normalize_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".")
    # The same IDNA (punycode) form httpx gives the URL's host.
    return httpx.URL(scheme="http", host=domain).raw_host.decode("ascii").lower()


def _fetch_failed(message: str) -> ServiceError:
    return ServiceError(message, code="url_fetch_failed", status=422)


def _timed_out(message: str) -> ServiceError:
    return ServiceError(message, code="url_timeout", status=422)


class _HandRedirectClient(httpx.AsyncClient):
    """An httpx client that never parses a redirect's ``Location`` itself. httpx builds the
    next request of every 3xx even with ``follow_redirects=False``, and a malformed Location
    (an invalid IDNA label such as ``xn--``) then raises out of it unhandled; the fetcher
    follows redirects by hand, so the Location is judged there, like any URL."""

    def _build_redirect_request(
        self, request: httpx.Request, response: httpx.Response
    ) -> httpx.Request:
        return request


class ImageFetcher:
    """Fetches ``http``/``https`` URLs under the rules of an :class:`ImageFetchConfig`.

    ``max_bytes`` bounds the body. ``resolver`` replaces DNS resolution (tests only). One
    instance can serve many concurrent fetches; close it with :meth:`aclose`.
    """

    def __init__(
        self, config: ImageFetchConfig, max_bytes: int, resolver: Resolver | None = None
    ) -> None:
        self._config = config
        self._max_bytes = max_bytes
        self._resolve = resolver or default_resolver
        self._domains = tuple(_normalize_domain(domain) for domain in config.allowed_domains)
        self._client = _HandRedirectClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            # Pooled connections are keyed by IP, not by hostname: reusing one would send a
            # request for host B over a TLS session verified for host A.
            limits=httpx.Limits(max_keepalive_connections=0),
            # No cookies: one client's fetch must not carry what another's server set.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            headers={
                "User-Agent": config.user_agent,
                "Accept": "image/*",
                "Accept-Encoding": "identity",
            },
        )

    async def fetch(self, url: str) -> FetchedImage:
        """Fetch ``url``, following checked redirects.

        Every refusal or failure of the URL is a 4xx :class:`ServiceError`; only local
        overload (no free connection slot within ``read_timeout_s``) is a 503."""
        total = self._config.total_timeout_s
        try:
            async with asyncio.timeout(total):
                return await self._fetch(url)
        except TimeoutError:
            raise _timed_out(
                f"fetching the URL took longer than total_timeout_s ({total} s)"
            ) from None

    async def aclose(self) -> None:
        """Close the underlying HTTP client."""
        await self._client.aclose()

    async def _fetch(self, url: str) -> FetchedImage:
        current = self._checked_url(url, "the URL")
        redirects = 0
        while True:
            where = "the URL" if redirects == 0 else f"the redirect to {_shorten(str(current))}"
            address = await self._checked_address(current, where)
            result = await self._get(current, address, where)
            if isinstance(result, FetchedImage):
                return result
            if redirects >= self._config.max_redirects:
                raise ServiceError(
                    f"the URL redirected more than max_redirects "
                    f"({self._config.max_redirects}) times",
                    code="too_many_redirects",
                    status=422,
                )
            redirects += 1
            current = self._redirect_target(current, result)

    async def _get(self, url: httpx.URL, address: IPAddress, where: str) -> FetchedImage | str:
        """One hop: the image, or the Location of a redirect."""
        try:
            async with self._client.stream(**self._request_to(url, address)) as response:
                status = response.status_code
                if status in _REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise _fetch_failed(
                            f"the server answered {status} without a Location header"
                        )
                    return location
                if not 200 <= status < 300:
                    raise _fetch_failed(f"the server answered {status}")
                return FetchedImage(
                    data=await self._read_body(response),
                    content_type=response.headers.get("Content-Type"),
                    final_url=str(url),
                )
        except httpx.ConnectTimeout:
            raise _timed_out(
                f"connecting to {where} took longer than connect_timeout_s "
                f"({self._config.connect_timeout_s} s)"
            ) from None
        except httpx.PoolTimeout:
            raise ServiceUnavailableError(
                "too many URLs are being fetched at once; try again", code="overloaded"
            ) from None
        except httpx.TimeoutException:
            raise _timed_out(
                f"{where} sent nothing for longer than read_timeout_s "
                f"({self._config.read_timeout_s} s)"
            ) from None
        except httpx.HTTPError as error:
            detail = str(error) or type(error).__name__
            raise _fetch_failed(f"could not fetch {where}: {detail}") from None
        except UnicodeError as error:  # a header httpx could not decode
            raise _fetch_failed(f"could not read the answer of {where}: {error}") from None

    def _checked_url(self, url: str | httpx.URL, where: str) -> httpx.URL:
        """Rule 1: an absolute http(s) URL with a host and no credentials."""
        try:
            parsed = httpx.URL(url)
            host_name = parsed.host  # decoding an invalid IDNA label ("xn--") raises here
        except (httpx.InvalidURL, TypeError, UnicodeError, ValueError) as error:
            raise BadRequestError(
                f"{where} is not a valid URL: {error}", code="invalid_url"
            ) from None
        if not parsed.scheme:
            raise BadRequestError(f"{where} is not an absolute http(s) URL", code="invalid_url")
        if parsed.scheme not in ("http", "https"):
            raise BadRequestError(
                f"{where} has scheme {parsed.scheme!r}; only http and https URLs can be fetched",
                code="unsupported_url_scheme",
            )
        if not host_name:
            raise BadRequestError(f"{where} has no host", code="invalid_url")
        host = parsed.raw_host.decode("ascii")
        if _ip_literal(host) is None and not _HOSTNAME.fullmatch(host):
            raise BadRequestError(f"{where} has an invalid host {host!r}", code="invalid_url")
        if parsed.userinfo:
            raise BadRequestError(
                f"{where} contains credentials (user:password@); they are not allowed",
                code="invalid_url",
            )
        if parsed.port is not None and not 1 <= parsed.port <= _MAX_PORT:
            raise BadRequestError(
                f"{where} has port {parsed.port}; ports are 1 to {_MAX_PORT}", code="invalid_url"
            )
        return parsed

    def _redirect_target(self, current: httpx.URL, location: str) -> httpx.URL:
        where = f"the redirect to {_shorten(location)}"
        try:
            target = current.join(location)
        except (httpx.InvalidURL, UnicodeError, ValueError) as error:
            raise BadRequestError(
                f"{where} is not a valid URL: {error}", code="invalid_url"
            ) from None
        return self._checked_url(target, where)

    async def _checked_address(self, url: httpx.URL, where: str) -> IPAddress:
        """Rules 2 and 3: resolve the host once; every address must be allowed."""
        host = url.raw_host.decode("ascii")
        literal = _ip_literal(host)
        if self._domains:
            name = host.lower().rstrip(".")
            allowed = literal is None and any(
                name == domain or name.endswith("." + domain) for domain in self._domains
            )
            if not allowed:
                raise ForbiddenError(
                    f"{where} has host {host!r}, which is not in allowed_domains "
                    f"({', '.join(self._domains)}) or a subdomain of one",
                    code="url_domain_not_allowed",
                )
        if literal is not None:
            addresses = [literal]
        else:
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                addresses = [_parse_address(text) for text in await self._resolve(host, port)]
            except (OSError, UnicodeError, ValueError) as error:
                raise ServiceError(
                    f"the host {host!r} of {where} cannot be resolved: {error}",
                    code="url_unresolvable",
                    status=422,
                ) from None
            if not addresses:
                raise ServiceError(
                    f"the host {host!r} of {where} resolves to no address",
                    code="url_unresolvable",
                    status=422,
                )
        for address in addresses:
            if self._is_exempt(address):
                continue
            reason = address_class(address)
            if reason is not None:
                embedded = embedded_ipv4(address)
                shown = f"{address} (embeds {embedded})" if embedded else str(address)
                article = "an" if reason[0] in "aeiou" else "a"
                source = (
                    f"{where} points to"
                    if literal is not None
                    else f"the host {host!r} of {where} resolves to"
                )
                raise ForbiddenError(
                    f"{source} {shown}, {article} {reason} address; "
                    "only public addresses can be fetched",
                    code="url_forbidden_address",
                )
        return addresses[0]

    def _is_exempt(self, address: IPAddress) -> bool:
        candidates = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(
            candidate in network
            for candidate in candidates
            for network in self._config.allowed_networks
        )

    def _request_to(self, url: httpx.URL, address: IPAddress) -> dict[str, Any]:
        """Rule 4: connect to the checked address, but speak to the URL's real host."""
        host = url.raw_host.decode("ascii")
        extensions: dict[str, str] = {}
        if url.scheme == "https" and _ip_literal(host) is None:
            # TLS SNI and certificate verification use the hostname, not the IP we dial.
            extensions["sni_hostname"] = host.rstrip(".")
        return {
            "method": "GET",
            "url": url.copy_with(host=str(address)),
            "headers": {"Host": url.netloc.decode("ascii")},
            "extensions": extensions,
        }

    async def _read_body(self, response: httpx.Response) -> bytes:
        """Rule 7: refuse early on Content-Length, and stop reading past ``max_bytes``.

        The body is read raw: httpx would inflate a ``Content-Encoding`` (gzip, deflate,
        br, zstd, even stacked ones) a whole network chunk at a time, so one 64 KiB chunk of
        a nested gzip bomb could become gigabytes before a byte of it is counted."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise self._too_large(f"its Content-Length is {declared} bytes")
        encodings = [
            token.strip().lower()
            for value in response.headers.get_list("Content-Encoding")
            for token in value.split(",")
        ]
        if any(token not in ("", "identity") for token in encodings):
            raise _fetch_failed(
                f"the server sent a compressed body (Content-Encoding: {', '.join(encodings)}) "
                "although the request asked for identity; compressed bodies are not inflated"
            )
        chunks: list[bytes] = []
        received = 0
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > self._max_bytes:
                raise self._too_large("the body passed it while streaming")
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, what: str) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"the image at the URL is larger than the limit of {self._max_bytes} bytes ({what})",
            code="image_too_large",
        )
