"""The library's own recorder conformance suite, unmodified, on a real nats-server.

Each test case gets fresh streams (the library's tests expect notification ids from 1).
"""

from __future__ import annotations

from typing import Any

import pytest
from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
    InfrastructureFactoryTestCase,
    NonInterleavingNotificationIDsBaseCase,
    ProcessRecorderTestCase,
    TrackingRecorderTestCase,
)
from eventsourcing.utils import Environment

from ledger.jetstream import JetStreamFactory
from ledger.jetstream.recorders import (
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamProcessRecorder,
    JetStreamTrackingRecorder,
)
from tests.conftest import Datastores, unique_names


class OnNats:
    """Mixin: a ``Datastores`` for each test, closed afterwards."""

    datastores: Datastores

    @pytest.fixture(autouse=True)
    def _datastores(self, datastores: Datastores) -> None:
        self.datastores = datastores


class TestJetStreamAggregateRecorder(OnNats, AggregateRecorderTestCase):
    def create_recorder(self) -> JetStreamAggregateRecorder:
        recorder = JetStreamAggregateRecorder(self.datastores.new())
        recorder.create_stream()
        return recorder


class TestJetStreamSnapshotRecorder(OnNats, AggregateRecorderTestCase):
    """The same contract for the snapshot stream (another purpose, another stream)."""

    def create_recorder(self) -> JetStreamAggregateRecorder:
        recorder = JetStreamAggregateRecorder(self.datastores.new(), purpose="snapshots")
        recorder.create_stream()
        return recorder


class TestJetStreamApplicationRecorder(OnNats, ApplicationRecorderTestCase[JetStreamApplicationRecorder]):
    def create_recorder(self) -> JetStreamApplicationRecorder:
        recorder = JetStreamApplicationRecorder(self.datastores.new())
        recorder.create_stream()
        return recorder

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()


class TestJetStreamNonInterleavingNotificationIds(OnNats, NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> JetStreamApplicationRecorder:
        recorder = JetStreamApplicationRecorder(self.datastores.new())
        recorder.create_stream()
        return recorder


class TestJetStreamTrackingRecorder(OnNats, TrackingRecorderTestCase):
    def create_recorder(self) -> JetStreamTrackingRecorder:
        recorder = JetStreamTrackingRecorder(self.datastores.new())
        recorder.create_stream()
        return recorder


class TestJetStreamProcessRecorder(OnNats, ProcessRecorderTestCase):
    def create_recorder(self) -> JetStreamProcessRecorder:
        recorder = JetStreamProcessRecorder(self.datastores.new())
        recorder.create_stream()
        return recorder


class TrackingRecorderSubclass(JetStreamTrackingRecorder):
    pass


class TestJetStreamFactory(InfrastructureFactoryTestCase[JetStreamFactory]):
    nats_url: str

    @pytest.fixture(autouse=True)
    def _server(self, nats_server: Any) -> None:
        self.nats_url = nats_server.url

    def setUp(self) -> None:
        stream, prefix = unique_names()
        self.env = Environment(
            "TestCase",
            {
                "PERSISTENCE_MODULE": "ledger.jetstream",
                "NATS_URL": self.nats_url,
                "NATS_STREAM": stream,
                "NATS_SUBJECT_PREFIX": prefix,
            },
        )
        super().setUp()

    def expected_factory_class(self) -> type[JetStreamFactory]:
        return JetStreamFactory

    def expected_aggregate_recorder_class(self) -> type[JetStreamAggregateRecorder]:
        return JetStreamAggregateRecorder

    def expected_application_recorder_class(self) -> type[JetStreamApplicationRecorder]:
        return JetStreamApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[JetStreamTrackingRecorder]:
        return JetStreamTrackingRecorder

    def tracking_recorder_subclass(self) -> type[JetStreamTrackingRecorder]:
        return TrackingRecorderSubclass

    def expected_process_recorder_class(self) -> type[JetStreamProcessRecorder]:
        return JetStreamProcessRecorder


del AggregateRecorderTestCase
del ApplicationRecorderTestCase
del InfrastructureFactoryTestCase
del NonInterleavingNotificationIDsBaseCase
del ProcessRecorderTestCase
del TrackingRecorderTestCase
