"""TLS for every NATS connection the ledger makes: one setting per process.

A process of the ledger talks to one set of NATS servers, so it has one TLS setting: the CA
certificate(s) its servers' certificates are checked against, and, for mutual TLS, its own
certificate and key. ``service`` sets it once from its settings (``use``: ``ledger serve`` and
every command of the CLI); every connection then takes it — the event store's
(``NatsClient``), the broker's (``consumers.broker``), the one-off ones (``connect``) — through
``connect_options(url)``.

TLS is **required** for a connection when the setting names a CA file or a client certificate,
or when any of its URLs is ``tls://``: the server's certificate is verified (against the CA file,
else the system's trust store) for the host of the URL, and ``GuardedClient`` refuses to send
``CONNECT`` — which carries the password — over a connection that has not become TLS (a server
without TLS, or something in the middle pretending to be one). nats-py alone would send it in
clear to any server that does not ask for TLS, ``tls://`` or not.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats import errors
from nats.aio.client import Client as NATS


@dataclass(frozen=True)
class NatsTls:
    """The TLS setting of a process's NATS connections (empty: TLS only for ``tls://`` URLs)."""

    ca_file: Path | None = None
    """CA certificate(s), PEM, that signed the servers' certificates; none: the system's."""
    cert_file: Path | None = None
    """This client's certificate (PEM, with its chain) for mutual TLS."""
    key_file: Path | None = None
    """Its private key (PEM, unencrypted; keep it mode 0600)."""

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs its key, and a key its certificate (both or neither)")

    @property
    def configured(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    def required_for(self, url: str) -> bool:
        """Whether connections to ``url`` (comma-separated servers) must be TLS."""
        return self.configured or any(u.lower().startswith("tls://") for u in server_urls(url))

    def context(self) -> ssl.SSLContext:
        """A client context: TLS 1.2 or later, the server's certificate verified for its host
        against ``ca_file`` (only it) or the system's CAs, this client's certificate if any.
        Files are read now: unreadable or malformed ones fail here, naming the file."""
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (OSError, ssl.SSLError) as e:
            raise TlsSettingError(f"NATS CA file {self.ca_file}: {_reason(e)}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            try:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
            except (OSError, ssl.SSLError) as e:
                raise TlsSettingError(f"NATS client certificate {self.cert_file} / key {self.key_file}: {_reason(e)}") from None
        return context


class TlsSettingError(ValueError):
    """A TLS file that cannot be used (missing, unreadable, not PEM, key and certificate apart)."""


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e)


_process_tls = NatsTls()


def use(tls: NatsTls) -> NatsTls:
    """Make ``tls`` the process's setting for the connections made from now on; returns the
    previous one (to put it back)."""
    global _process_tls
    previous, _process_tls = _process_tls, tls
    return previous


def current() -> NatsTls:
    return _process_tls


def connect_options(url: str, tls: NatsTls | None = None) -> dict[str, Any]:
    """nats-py's ``servers`` and, when TLS is required, ``tls`` (an SSL context), for ``url`` under
    ``tls`` (default: the process's setting)."""
    tls = current() if tls is None else tls
    options: dict[str, Any] = {"servers": server_urls(url)}
    if tls.required_for(url):
        options["tls"] = tls.context()
        _quiet_tls_eof_warning()
    return options


class _TlsEofWarning(logging.Filter):
    """nats-py upgrades a connection to TLS with ``loop.start_tls`` under a stream protocol that
    never learns it is over TLS, so asyncio logs "returning true from eof_received() has no
    effect when using ssl" each time a server closes such a connection (every stop): harmless,
    and said to no one here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("returning true from eof_received() has no effect when using ssl")


_EOF_FILTER = _TlsEofWarning()


def _quiet_tls_eof_warning() -> None:
    logging.getLogger("asyncio").addFilter(_EOF_FILTER)  # once: adding the same filter again does nothing


def server_urls(url: str) -> list[str]:
    """The servers of a comma-separated NATS URL (nats-py takes a list, not that string)."""
    return [u.strip() for u in url.split(",") if u.strip()]


class GuardedClient(NATS):
    """nats-py's client, which never sends ``CONNECT`` (user and password) in clear when it was
    given a TLS context: if the server did not ask for TLS, the connection attempt fails with
    ``TlsNotStartedError`` instead (reported to ``error_cb``, then the next server is tried)."""

    def _connect_command(self) -> bytes:
        if self.options.get("tls") is not None and not _is_tls(self._transport):
            server = self._current_server.uri.netloc.rpartition("@")[2] if self._current_server else "?"
            raise TlsNotStartedError(
                f"nats: TLS is required but the server at {server} did not start TLS (no TLS on that listener, "
                "or not the real server): credentials not sent"
            )
        return super()._connect_command()


class TlsNotStartedError(errors.Error):
    """A server that did not start TLS where TLS is required."""


def _is_tls(transport: Any) -> bool:
    writer = getattr(transport, "_io_writer", None)
    return writer is not None and writer.get_extra_info("ssl_object") is not None


async def connect(url: str, tls: NatsTls | None = None, **options: Any) -> NATS:
    """``nats.connect`` to ``url`` (comma-separated servers) with the TLS setting (default: the
    process's), guarded by ``GuardedClient``."""
    nc = GuardedClient()
    await nc.connect(**connect_options(url, tls), **options)
    return nc
