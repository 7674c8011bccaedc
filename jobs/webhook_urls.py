"""Where webhooks may go: public addresses only, unless the operator allows more.

A webhook URL is a request the server makes on a tenant's behalf, so it must not reach
into the private network (SSRF): every address its host resolves to must be a global
unicast address, or inside a network the operator listed in
SEEKQ_WEBHOOK_ALLOWED_NETWORKS. The check runs when the endpoint is registered (a clear
error) and again at every delivery, where the connection goes to the very address that
was checked (no second DNS answer can swap in 127.0.0.1). Redirects are not followed.
"""

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from jobs.errors import WebhookUrlError

MAX_URL_CHARS = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (`address`) and what to say it is (`host`)."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent
    address: str

    @property
    def pinned_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        literal = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{literal}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return [str(info[4][0]) for info in infos]


class UrlPolicy:
    def __init__(
        self,
        allowed_networks: Sequence[str] = (),
        allow_http: bool = False,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.allowed: list[IPNetwork] = [
            ipaddress.ip_network(n, strict=False) for n in allowed_networks
        ]
        self.allow_http = allow_http
        self.resolver = resolver

    def check(self, url: str) -> Target:
        """The URL's target, or WebhookUrlError saying exactly what is wrong with it."""
        parts = self._parse(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = self._resolve(host, port)
        refused = [a for a in addresses if not self.allows(a)]
        if refused:
            raise WebhookUrlError(
                f"url: {host} resolves to {refused[0]}, a {_kind(refused[0])} address; webhooks "
                "go to public addresses only unless the operator lists the network in "
                "SEEKQ_WEBHOOK_ALLOWED_NETWORKS"
            )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return Target(url, parts.scheme, host, port, path, str(addresses[0]))

    def allows(self, address: IPAddress) -> bool:
        if any(address in network for network in self.allowed):
            return True
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            return self.allows(mapped)
        return address.is_global and not address.is_multicast

    def _parse(self, url: str) -> SplitResult:
        if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
            raise WebhookUrlError(f"url: must be 1 to {MAX_URL_CHARS} characters")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
            raise WebhookUrlError("url: must not contain spaces or control characters")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise WebhookUrlError("url: not a valid URL") from None
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parts.scheme not in schemes:
            allowed = " or ".join(schemes)
            raise WebhookUrlError(f"url: must start with {allowed}://")
        if not parts.hostname:
            raise WebhookUrlError("url: has no host")
        if parts.username is not None or parts.password is not None:
            raise WebhookUrlError("url: must not carry a user name or password")
        if parts.fragment:
            raise WebhookUrlError("url: must not have a #fragment")
        return parts

    def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        found = []
        for text in self.resolver(host, port):
            try:
                found.append(ipaddress.ip_address(text.split("%", 1)[0]))
            except ValueError:
                continue
        if not found:
            raise WebhookUrlError(f"url: the host {host} does not resolve")
        return found


def _kind(address: IPAddress) -> str:
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        return _kind(mapped)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    return "reserved"
