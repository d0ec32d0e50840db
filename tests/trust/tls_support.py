"""Development certificates for the tests that run the deploy configs (which require TLS).

``dev_certs(directory)`` runs ``deploy/tls/make-dev-ca`` (the script an operator runs) into
``directory``; ``DevCerts`` gives a server's environment (the ``NATS_TLS_*`` variables of
``deploy/systemd/nats.env.example``) and client SSL contexts trusting the dev CA of the servers.
Two CAs: ``ca.crt`` signs the servers' certificates (and the routes trust it alone),
``client-ca.crt`` the clients' (the client listener's CA for mutual TLS).
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ledger.jetstream.tls import NatsTls

ROOT = Path(__file__).resolve().parents[2]
MAKE_DEV_CA = ROOT / "deploy" / "tls" / "make-dev-ca"
SERVERS = ("ledger-1", "ledger-2", "ledger-3")
"""The server names of deploy/nats/single.conf and deploy/nats/cluster (the script's default)."""


@dataclass(frozen=True)
class DevCerts:
    directory: Path
    output: str
    """What the script printed."""

    @property
    def ca_file(self) -> Path:
        """The servers' CA: what clients trust, and all the routes trust."""
        return self.directory / "ca.crt"

    @property
    def client_ca_file(self) -> Path:
        """The clients' CA: what the client listener checks client certificates against."""
        return self.directory / "client-ca.crt"

    def server_env(self, name: str = "ledger-1", *, verify_clients: bool = False) -> dict[str, str]:
        """The nats-server's TLS variables (deploy/systemd/nats.env.example) for server ``name``."""
        return {
            "NATS_TLS_CERT_FILE": str(self.directory / f"{name}.crt"),
            "NATS_TLS_KEY_FILE": str(self.directory / f"{name}.key"),
            "NATS_TLS_CA_FILE": str(self.ca_file),
            "NATS_TLS_CLIENT_CA_FILE": str(self.client_ca_file),
            "NATS_TLS_VERIFY": "true" if verify_clients else "false",
        }

    def client(self, name: str | None = None) -> NatsTls:
        """The ledger's TLS setting: the dev CA, and the client certificate ``name`` if given."""
        if name is None:
            return NatsTls(ca_file=self.ca_file)
        return NatsTls(
            ca_file=self.ca_file,
            cert_file=self.directory / f"client-{name}.crt",
            key_file=self.directory / f"client-{name}.key",
        )

    def context(self, client: str | None = None) -> ssl.SSLContext:
        """A client SSL context trusting the dev CA (nats-py's ``tls=``)."""
        return self.client(client).context()

    def cli_options(self, client: str | None = None) -> list[str]:
        """The same as options of a ``ledger`` command."""
        options = ["--nats-ca-file", str(self.ca_file)]
        if client is not None:
            options += ["--nats-cert-file", str(self.directory / f"client-{client}.crt"),
                        "--nats-key-file", str(self.directory / f"client-{client}.key")]  # fmt: skip
        return options


def dev_certs(directory: Path, *, clients: tuple[str, ...] = (), servers: tuple[str, ...] = ()) -> DevCerts:
    """``deploy/tls/make-dev-ca --dir directory`` (default servers ledger-1..3; ``clients``)."""
    command = [str(MAKE_DEV_CA), "--dir", str(directory)]
    for name in servers:
        command += ["--server", name]
    for name in clients:
        command += ["--client", name]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return DevCerts(directory, done.stdout)
