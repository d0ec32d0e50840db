"""The persistence module's factory, chosen the library's usual way:

    PERSISTENCE_MODULE=ledger.jetstream  NATS_URL=nats://127.0.0.1:4222

Settings (environment, optionally prefixed with the application's name, as the library does):

| variable | default | meaning |
|---|---|---|
| ``NATS_URL`` | (required) | server URL(s), comma-separated |
| ``NATS_STREAM`` | ``LEDGER`` | the event stream; snapshots go to ``<stream>_SNAPSHOTS`` |
| ``NATS_SUBJECT_PREFIX`` | ``ledger`` | subjects are ``<prefix>.evt.<aggregate id>``, ``<prefix>.trk.<follower>.<app followed>`` |
| ``NATS_TIMEOUT`` | ``5`` | seconds to wait for any answer from the server |
| ``NATS_CONNECT_TIMEOUT`` | ``5`` | seconds to wait for the first connection |
| ``NATS_REPLICAS`` | ``1`` | stream replicas when the stream is created (3 in a cluster) |
| ``NATS_DUPLICATE_WINDOW`` | ``120`` | seconds the server remembers ``Nats-Msg-Id`` values |
| ``NATS_MAX_BATCH`` | ``1000`` | most messages gathered into one atomic batch (group commit) |
| ``NATS_API_PREFIX`` | ``$JS.API`` | where the JetStream API is: another account's user reading the ledger through imports (an auditor) gives the import's prefix, ``$JS.ledger.API`` |
| ``ORIGINATOR_ID_TYPE`` | ``uuid`` | ``text`` allows ids like ``person.<key>`` (subject tokens) |
| ``CREATE_TABLE`` | ``yes`` | create missing streams (existing ones are always checked) |
| ``LEDGER_SIGNING_KEY_FILE`` | (none) | ed25519 private key (PEM) signing every save (``signing``); none: unsigned |
| ``TRANSCODER_TOPIC`` | msgspec | the library's setting; by default ``MsgspecTranscoder`` |
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar, cast

from eventsourcing.persistence import InfrastructureFactory, OperationalError, Transcoder
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool

from ledger.jetstream.client import JS_API, MAX_ATOMIC_BATCH, NatsClient, NatsUnavailableError
from ledger.jetstream.datastore import JetStreamDatastore
from ledger.jetstream.recorders import (
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamProcessRecorder,
    JetStreamTrackingRecorder,
)
from ledger.jetstream.signing import SigningKey
from ledger.jetstream.transcoder import MsgspecTranscoder, register_default_transcodings

R = TypeVar("R", JetStreamApplicationRecorder, JetStreamTrackingRecorder, JetStreamProcessRecorder)


class JetStreamFactory(InfrastructureFactory[JetStreamTrackingRecorder]):
    """Builds JetStream recorders sharing one connection (one private event-loop thread)."""

    NATS_URL = "NATS_URL"
    NATS_STREAM = "NATS_STREAM"
    NATS_SUBJECT_PREFIX = "NATS_SUBJECT_PREFIX"
    NATS_TIMEOUT = "NATS_TIMEOUT"
    NATS_CONNECT_TIMEOUT = "NATS_CONNECT_TIMEOUT"
    NATS_REPLICAS = "NATS_REPLICAS"
    NATS_DUPLICATE_WINDOW = "NATS_DUPLICATE_WINDOW"
    NATS_MAX_BATCH = "NATS_MAX_BATCH"
    ORIGINATOR_ID_TYPE = "ORIGINATOR_ID_TYPE"
    CREATE_TABLE = "CREATE_TABLE"
    LEDGER_SIGNING_KEY_FILE = "LEDGER_SIGNING_KEY_FILE"
    NATS_API_PREFIX = "NATS_API_PREFIX"

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        url = self.env.get(self.NATS_URL)
        if not url:
            keys = ", ".join(self.env.create_keys(self.NATS_URL))
            raise OSError(f"NATS server URL not found in environment with keys: {keys}")
        id_type = self.env.get(self.ORIGINATOR_ID_TYPE, "uuid").lower()
        if id_type not in ("uuid", "text"):
            raise OSError(f"Invalid {self.ORIGINATOR_ID_TYPE} {id_type!r}, must be 'uuid' or 'text'")
        timeout = self._number(self.NATS_TIMEOUT, 5.0)
        signer = self._signing_key()
        try:
            client = NatsClient.shared(
                url,
                timeout=timeout,
                connect_timeout=self._number(self.NATS_CONNECT_TIMEOUT, 5.0),
                max_batch=int(self._number(self.NATS_MAX_BATCH, MAX_ATOMIC_BATCH)),
                api_prefix=(self.env.get(self.NATS_API_PREFIX) or "").strip() or JS_API,
            )
        except NatsUnavailableError as e:
            raise OperationalError(str(e)) from e
        self.datastore = JetStreamDatastore(
            client,
            stream=self.env.get(self.NATS_STREAM, "LEDGER"),
            subject_prefix=self.env.get(self.NATS_SUBJECT_PREFIX, "ledger"),
            originator_id_type=cast(Literal["uuid", "text"], id_type),
            replicas=int(self._number(self.NATS_REPLICAS, 1)),
            duplicate_window_s=self._number(self.NATS_DUPLICATE_WINDOW, 120.0),
            # Tracking subjects name the follower (this application) beside what it follows.
            follower=self.env.name or None,
            signer=signer,
        )

    def _signing_key(self) -> SigningKey | None:
        path = (self.env.get(self.LEDGER_SIGNING_KEY_FILE) or "").strip()
        if not path:
            return None
        try:
            return SigningKey.load(Path(path))
        except OSError as e:
            raise OSError(f"{self.LEDGER_SIGNING_KEY_FILE}={path}: {e.strerror}") from None
        except ValueError as e:
            raise OSError(str(e)) from None

    def _number(self, key: str, default: float) -> float:
        value = (self.env.get(key) or "").strip()
        if not value:
            return default
        try:
            return float(value)
        except ValueError:
            raise OSError(f"{key}={value!r} is not a number") from None

    def _create(self) -> bool:
        return bool(strtobool(self.env.get(self.CREATE_TABLE) or "yes"))

    def transcoder(self) -> Transcoder:
        topic = self.env.get(self.TRANSCODER_TOPIC)
        if topic:
            return resolve_topic(topic)()
        transcoder = MsgspecTranscoder()
        register_default_transcodings(transcoder)
        return transcoder

    def aggregate_recorder(self, purpose: str = "events") -> JetStreamAggregateRecorder:
        recorder = JetStreamAggregateRecorder(self.datastore, purpose)
        recorder.create_stream(create=self._create())
        return recorder

    def application_recorder(self) -> JetStreamApplicationRecorder:
        return self._recorder(self._recorder_class(self.APPLICATION_RECORDER_TOPIC, JetStreamApplicationRecorder))

    def tracking_recorder(
        self, tracking_recorder_class: type[JetStreamTrackingRecorder] | None = None
    ) -> JetStreamTrackingRecorder:
        return self._recorder(
            tracking_recorder_class or self._recorder_class(self.TRACKING_RECORDER_TOPIC, JetStreamTrackingRecorder)
        )

    def process_recorder(self) -> JetStreamProcessRecorder:
        return self._recorder(self._recorder_class(self.PROCESS_RECORDER_TOPIC, JetStreamProcessRecorder))

    def _recorder(self, cls: type[R]) -> R:
        """A recorder of ``cls`` on this factory's connection, its stream created or checked."""
        recorder = cls(self.datastore)
        recorder.create_stream(create=self._create())
        return recorder

    def _recorder_class(self, topic_key: str, default: type[R]) -> type[R]:
        """``default``, or the subclass of it named by the environment variable ``topic_key``."""
        topic = self.env.get(topic_key)
        if not topic:
            return default
        cls = resolve_topic(topic)
        if not (isinstance(cls, type) and issubclass(cls, default)):
            raise OSError(f"{topic_key}={topic!r} is not a subclass of {default.__name__}")
        return cls

    def close(self) -> None:
        """Give back this store's share of the process's client (once, however often called)."""
        if not getattr(self, "_closed", False):
            self._closed = True
            self.datastore.client.close()
