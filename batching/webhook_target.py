"""Where a batch webhook may go: checked when the batch is submitted, and again at delivery.

A webhook makes the bulk worker send a request wherever a tenant says, so the target is
checked like any server-side request: an http(s) URL with a host and a valid port, no
control characters, at most ``MAX_URL`` characters; and every address its host resolves
to must be public (not loopback, private, link-local such as 169.254.169.254, shared,
reserved or multicast), unless the operator allows it (``webhook_allow_private``, or the
host, or host:port, in ``webhook_allow``). Delivery resolves once, checks, and connects
to the checked address, so a DNS answer that changes in between cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from batching.settings import Settings

MAX_URL = 2048
INTERNAL_SUFFIXES = (".localhost", ".internal", ".local", ".home.arpa")
"""Names that only mean something inside a network (metadata.google.internal, …)."""


class WebhookRefused(ValueError):
    """The URL is malformed, or names an address this server will not call."""


class Unresolved(WebhookRefused):
    """The host does not resolve now: refused at submit, retried at delivery."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    """Lower-case host name or IP literal, without brackets."""
    port: int
    path: str
    """Path and query, as sent on the request line."""

    @property
    def authority(self) -> str:
        """What the Host header says: the host (bracketed when IPv6), and a non-default port."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def via(self, address: str) -> str:
        """This URL with its host replaced by ``address`` (connect there, send ``authority``)."""
        host = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def parse(url: str) -> Target:
    """The URL's parts, or :class:`WebhookRefused` saying what is wrong with it."""
    if len(url) > MAX_URL:
        raise WebhookRefused(f"webhook_url is longer than {MAX_URL} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise WebhookRefused("webhook_url must not hold spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused(f"webhook_url must be an http(s) URL, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise WebhookRefused("webhook_url has an invalid port (1..65535)") from None
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise WebhookRefused(f"webhook_url needs a host, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("webhook_url must not hold credentials (user:password@)")
    if port == 0:
        raise WebhookRefused("webhook_url has an invalid port (1..65535)")
    try:
        host.encode("idna")
    except UnicodeError:
        raise WebhookRefused(f"webhook_url has an invalid host {host!r}") from None
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    default = 443 if parts.scheme == "https" else 80
    return Target(url, parts.scheme, host, port or default, path)


def allowed(target: Target, settings: Settings) -> bool:
    """Whether the operator lets webhooks reach this host (any address it resolves to)."""
    if settings.webhook_allow_private:
        return True
    rules = {r.strip().lower() for r in settings.webhook_allow.split(",") if r.strip()}
    host = f"[{target.host}]" if ":" in target.host else target.host
    return bool(rules & {target.host, host, f"{host}:{target.port}"})


def resolve(target: Target, settings: Settings) -> list[str]:
    """The addresses to connect to, each checked; :class:`WebhookRefused` if any is not public."""
    permitted = allowed(target, settings)
    if not permitted and (target.host == "localhost" or target.host.endswith(INTERNAL_SUFFIXES)):
        raise WebhookRefused(f"webhook_url host {target.host!r} is an internal name")
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise Unresolved(f"webhook_url host {target.host!r} does not resolve: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        if not permitted and not public(address):
            raise WebhookRefused(
                f"webhook_url host {target.host!r} resolves to {address}, which is not a"
                " public address (set FUSIONSERVE_WEBHOOK_ALLOW to allow it)"
            )
    if not addresses:
        raise Unresolved(f"webhook_url host {target.host!r} has no address")
    return addresses


def public(address: str) -> bool:
    """Whether an IP address is globally routable unicast (IPv4-mapped IPv6 unwrapped)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check(url: str, settings: Settings) -> tuple[Target, list[str]]:
    """Parse and resolve: the target and its checked addresses."""
    target = parse(url)
    return target, resolve(target, settings)
