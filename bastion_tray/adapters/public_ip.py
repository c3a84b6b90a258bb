"""This machine's public IPv4 address, as `[settings] public_ip_url` answers it (plain text)."""

from __future__ import annotations

import logging
import urllib.error
import urllib.parse
import urllib.request

from bastion_tray.core.errors import CloudError
from bastion_tray.core.ingress import host_cidr
from bastion_tray.core.text import clip

log = logging.getLogger(__name__)

TIMEOUT = 5.0  # seconds for the whole answer
_LIMIT = 200  # bytes: an address, a newline; anything longer is not the answer
_HINT = ('the SSH port stays closed: ingress = "my-ip" never falls back to 0.0.0.0/0. Check '
         "the network, or point [settings] public_ip_url at a service that answers your "
         "public IPv4 address as text")


def learn_public_ip(url: str, timeout: float = TIMEOUT) -> str:
    """The address as a /32 CIDR ("203.0.113.7/32"). Raises CloudError saying why not."""
    shown = clip(url, 200)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            body = reply.read(_LIMIT + 1)
    except urllib.error.HTTPError as exc:
        raise CloudError(f"could not learn this machine's public address: {shown} answered "
                         f"HTTP {exc.code}", hint=_HINT) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CloudError(f"could not learn this machine's public address from {shown}: "
                         f"{clip(str(reason), 200)}", hint=_HINT) from None
    text = body.decode("ascii", "replace").strip()
    try:
        if len(body) > _LIMIT:
            raise ValueError("too long")
        cidr = host_cidr(text)
    except ValueError:
        raise CloudError(f"could not learn this machine's public address: {shown} answered "
                         f"{clip(text, 60)!r}, not an IPv4 address", hint=_HINT) from None
    log.debug("public address %s (from %s)", cidr, shown)
    return cidr
