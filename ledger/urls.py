"""URLs as they may be shown, and as ``serve.url`` keeps them: credentials never appear.

One pair of functions for every place that shows or stores a URL — the event store's
connections, the commands' errors, ``serve``'s log and ``serve.url``, the views' database in a
report — so a password and a token are hidden alike everywhere. A module of its own, importing
nothing of the ledger: the command line reaches it without loading the event store.
"""

from __future__ import annotations

from collections.abc import Callable


def redacted(url: str) -> str:
    """``url`` as it may be shown (a log line, an error, ``ledger status``): a password becomes
    ``***`` and the user name stays (``nats://ledger:***@host``), a token becomes ``***``
    (``nats://***@host``). Any URL: NATS servers (comma-separated), the views' database. The one
    function every place that shows a URL uses."""
    return _each_userinfo(url, lambda user, password: f"{user}:***@" if password is not None else "***@")


def without_credentials(url: str) -> str:
    """``url`` (comma-separated servers) without user, password or token: what ``serve.url``
    holds. A command that finds the server there brings its own credentials."""
    return _each_userinfo(url, lambda user, password: "")


def _each_userinfo(url: str, userinfo: Callable[[str, str | None], str]) -> str:
    """Each comma-separated part of ``url`` with what stands before its last ``@`` (after the
    scheme, if any) replaced by ``userinfo(user, password)`` (password ``None``: a token). The
    last ``@``, not the first ``/``: a password mistyped with an unescaped ``/`` or ``@`` is
    hidden all the same (a path holding an ``@`` is hidden too: shown less, never more)."""
    shown = []
    for part in url.split(","):
        server = part.strip()
        scheme, sep, rest = server.partition("://")
        if not sep:
            scheme, rest = "", server
        given, at, host = rest.rpartition("@")
        if at:
            user, colon, password = given.partition(":")
            rest = userinfo(user, password if colon else None) + host
        shown.append(f"{scheme}{sep}{rest}")
    return ",".join(shown)
