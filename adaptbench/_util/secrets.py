"""Keep credentials out of everything adaptbench writes or prints.

An API key is read from an environment variable and sent in a header; it must never reach a record, the
index, ``sweep.json``, the response cache, a tracker or the console -- yet a server's error body may echo
the ``Authorization`` header, and a ``base_url`` may carry ``user:password@``.  Every key adaptbench reads
is registered here, and :func:`redact` replaces registered values and URL credentials with ``***`` in any
text on its way out (``records.dumps``, the API cache, error messages, the console).
"""

from __future__ import annotations

import re

_SECRETS: set[str] = set()
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/\s@\"']+@")
MIN_LENGTH = 4  # shorter values would redact ordinary text (and are no secret)


def register(value: str | None) -> None:
    """A value that must never be written or printed (an API key, a URL's password)."""
    if value and len(value) >= MIN_LENGTH:
        _SECRETS.add(value)


def register_credentials(user: str, password: str) -> None:
    """A URL's ``user:password``: the password, and the basic-auth header value a client derives from both."""
    import base64

    register(password)
    register(base64.b64encode(f"{user}:{password}".encode()).decode())


def redact(text: str) -> str:
    """``text`` with every registered secret and every URL's ``user:password@`` replaced by ``***``."""
    text = _URL_CREDENTIALS.sub("***@", text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
