"""The service's settings, read once: from the environment, then the command line's options.

Every setting of ``ledger serve`` is a field here, with its environment variable and default;
nothing below ``service/`` reads the environment for them. ``docs/configuration.md`` lists the
same table (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumers.streams import IntakeLimits
from contract.subjects import LEDGER_PREFIX, LEDGER_STREAM
from ledger.jetstream.tls import NatsTls


def _setting(env: str, default: Any, meaning: str, *, option: str | None = None) -> Any:
    return field(default=default, metadata={"env": env, "option": option, "meaning": meaning})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What one ``ledger serve`` needs to know, immutable once read."""

    nats_url: str | None = _setting("NATS_URL", None, "the NATS server(s), comma-separated; none: an embedded server", option="--nats-url")
    nats_ca_file: Path | None = _setting("LEDGER_NATS_CA_FILE", None, "CA certificate(s) (PEM) the NATS servers' certificates are checked against; set (or a tls:// URL, checked against the system's CAs): every connection requires TLS", option="--nats-ca-file")
    nats_cert_file: Path | None = _setting("LEDGER_NATS_CERT_FILE", None, "the ledger's client certificate (PEM) for mutual TLS (servers with NATS_TLS_VERIFY=true); with its key", option="--nats-cert-file")
    nats_key_file: Path | None = _setting("LEDGER_NATS_KEY_FILE", None, "that certificate's private key (PEM, mode 0600)", option="--nats-key-file")
    data_dir: Path = _setting("LEDGER_DATA_DIR", Path("data"), "embedded server's data, views, local secrets, the lock", option="--data-dir")
    views_url: str | None = _setting("LEDGER_VIEWS", None, "view database (sqlite:///FILE or postgresql://…); default sqlite:///DATA_DIR/views.sqlite", option="--views")
    policy_file: Path | None = _setting("LEDGER_POLICY", None, "the region's policy table; default Hefei's", option="--policy")
    batch_size: int = _setting("LEDGER_BATCH_SIZE", 500, "upstream messages per pull", option="--batch-size")
    replicas: int = _setting("NATS_REPLICAS", 1, "replicas of the streams and buckets serve creates (3 in a cluster)", option="--replicas")
    sync_interval: str = _setting("LEDGER_SYNC_INTERVAL", "always", "embedded server's JetStream fsync policy", option="--sync-interval")
    port: int = _setting("LEDGER_NATS_PORT", 0, "embedded server's port (0: a free one)", option="--port")
    cipher_key: str | None = _setting("LEDGER_CIPHER_KEY", None, "base64 AES key encrypting event payloads")
    cipher_key_file: Path | None = _setting("LEDGER_CIPHER_KEY_FILE", None, "file holding that key", option="--cipher-key-file")
    payload_encryption: str = _setting("LEDGER_PAYLOAD_ENCRYPTION", "on", "on: LEDGER's payloads (events, snapshots, rejected originals) are encrypted with that key, else (embedded server only) with DATA_DIR/cipher.key, generated; an external server without a key is refused. off: stored in clear, an explicit choice", option="--payload-encryption")
    person_key_secret: str | None = _setting("LEDGER_PERSON_KEY_SECRET", None, "HMAC key of person keys; generated in DATA_DIR with the embedded server only")
    signing_key_file: Path | None = _setting("LEDGER_SIGNING_KEY_FILE", None, "ed25519 private key (PEM, mode 0600 or 0400: looser is refused) signing every write to LEDGER and every checkpoint, read by serve, never published (`ledger keys generate FILE` makes one); required with an external server (the same file for every serve of the ledger, standbys included); the embedded server: DATA_DIR/signing-key.pem, created", option="--signing-key-file")
    checkpoint_seconds: float = _setting("LEDGER_CHECKPOINT_SECONDS", 60.0, "how often the writer signs a checkpoint")
    trust_key_file: Path | None = _setting("LEDGER_TRUST_KEY_FILE", None, "`ledger verify`'s pinned public key (its --trust-key; `ledger keys public` prints it): kept outside DATA_DIR; serve refuses a signing key that is not this one")
    verify_stale_intervals: float = _setting("LEDGER_VERIFY_STALE_INTERVALS", 3.0, "`ledger verify` fails when a message has waited more than this many checkpoint intervals for a checkpoint (its --stale-after; 0: every message must be covered)")
    cache_size: int = _setting("LEDGER_CACHE_SIZE", 200_000, "persons the ingestion keeps in memory")
    lease_seconds: float = _setting("LEDGER_LEASE_SECONDS", 5.0, "the writer lease's TTL: a standby takes over this long after the writer stops renewing")
    ledger_stream: str = _setting("NATS_STREAM", LEDGER_STREAM, "the ledger's stream")
    ledger_prefix: str = _setting("NATS_SUBJECT_PREFIX", LEDGER_PREFIX, "the ledger stream's subject prefix")
    metrics_address: str | None = _setting("LEDGER_METRICS_ADDRESS", None, "HOST:PORT serving /metrics, /healthz and /readyz (port 0: a free one, logged as event=metrics); none: off", option="--metrics-address")
    api_prefix: str = _setting("NATS_API_PREFIX", "$JS.API", "where the ledger's JetStream API is; an auditor's account imports it as $JS.ledger.API (read-only commands: verify, replay)")
    unattributed: str = _setting("LEDGER_UNATTRIBUTED", "accept", "upstream messages the server could not attribute to a sender account (a server without accounts): accept (recorded as unattributed) or refuse (not_authorised)")
    intake_max_bytes: int = _setting("LEDGER_INTAKE_MAX_BYTES", 4 << 30, "bytes one sender's intake stream may hold (a full one refuses the sender's next message; WeChat's payments take about 330 bytes each)")
    intake_max_msg_size: int = _setting("LEDGER_INTAKE_MAX_MSG_SIZE", 1 << 20, "the largest message a sender may publish, in bytes")
    intake_max_age_days: float = _setting("LEDGER_INTAKE_MAX_AGE_DAYS", 30.0, "days a sender's intake keeps a message (UPSTREAM keeps it for ever)")

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Settings:
        """The settings from ``environ`` (default ``os.environ``), overridden by the options given
        (a ``None`` option is not given). A malformed value is a ``SystemExit`` naming it."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"], "").strip()
            if raw:
                values[f.name] = _convert(f, raw, f.metadata["env"])
        for name, value in options.items():
            if name not in cls.__dataclass_fields__:
                raise TypeError(f"no setting {name!r}")
            if value is not None:
                values[name] = value
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.batch_size < 1:
            raise SystemExit(f"the batch size must be at least 1, not {self.batch_size}")
        if self.replicas not in (1, 3, 5):
            raise SystemExit(f"replicas must be 1, 3 or 5, not {self.replicas}")
        if self.lease_seconds <= 0 or self.checkpoint_seconds <= 0:
            raise SystemExit("LEDGER_LEASE_SECONDS and LEDGER_CHECKPOINT_SECONDS must be positive")
        if self.verify_stale_intervals < 0:
            raise SystemExit(f"LEDGER_VERIFY_STALE_INTERVALS must be 0 or more, not {self.verify_stale_intervals}")
        if (self.nats_cert_file is None) != (self.nats_key_file is None):
            raise SystemExit("LEDGER_NATS_CERT_FILE and LEDGER_NATS_KEY_FILE go together: both or neither")
        if self.payload_encryption not in ("on", "off"):
            raise SystemExit(f"LEDGER_PAYLOAD_ENCRYPTION must be on or off, not {self.payload_encryption!r}")
        if self.unattributed not in ("accept", "refuse"):
            raise SystemExit(f"LEDGER_UNATTRIBUTED must be accept or refuse, not {self.unattributed!r}")
        if min(self.intake_max_bytes, self.intake_max_msg_size) < 1 or self.intake_max_age_days <= 0:
            raise SystemExit("LEDGER_INTAKE_MAX_BYTES, LEDGER_INTAKE_MAX_MSG_SIZE and LEDGER_INTAKE_MAX_AGE_DAYS must be positive")

    @property
    def embedded(self) -> bool:
        """Whether serve starts its own nats-server (no ``nats_url``)."""
        return not self.nats_url

    @property
    def views(self) -> str:
        return self.views_url or default_views_url(self.data_dir)

    @property
    def nats_tls(self) -> NatsTls:
        """The TLS setting of every NATS connection (``ledger.jetstream.tls``)."""
        return NatsTls(ca_file=self.nats_ca_file, cert_file=self.nats_cert_file, key_file=self.nats_key_file)

    @property
    def intake_limits(self) -> IntakeLimits:
        return IntakeLimits(self.intake_max_bytes, self.intake_max_msg_size, self.intake_max_age_days * 86400.0)

    def ledger_env(self) -> dict[str, str]:
        """The event store's part, as the ``eventsourcing`` environment of the ledger."""
        return {
            "NATS_STREAM": self.ledger_stream,
            "NATS_SUBJECT_PREFIX": self.ledger_prefix,
            "NATS_REPLICAS": str(self.replicas),
            "NATS_API_PREFIX": self.api_prefix,
        }


def default_views_url(data_dir: Path) -> str:
    """The views of a data directory when ``LEDGER_VIEWS`` names none: SQLite beside its data."""
    return f"sqlite:///{(data_dir / 'views.sqlite').resolve()}"


def _convert(f: dataclasses.Field[Any], raw: str, env: str) -> Any:
    kind = str(f.type)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("Path"):
            return Path(raw)
    except ValueError:
        what = {"int": "a whole number", "float": "a number", "Path": "a path"}.get(kind.split(" ")[0], kind)
        raise SystemExit(f"{env}={raw!r} is not {what}") from None
    return raw


def markdown_table() -> str:
    """The settings as ``docs/configuration.md``'s table: variable, option, default, meaning."""
    lines = ["| variable | option of `ledger serve` | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = "" if f.default is None else f"`{f.default}`"
        option = f"`{f.metadata['option']}`" if f.metadata["option"] else ""
        lines.append(f"| `{f.metadata['env']}` | {option} | {default} | {f.metadata['meaning']} |")
    return "\n".join(lines) + "\n"
