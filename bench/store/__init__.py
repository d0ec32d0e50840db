"""Event-store benchmark: this store (``ledger.jetstream``) against its baselines, in one run.

Run ``python -m bench.store`` (``make bench``) from the repository root; ``--help`` lists options.

What is measured
----------------
The same workloads, through the ``eventsourcing`` recorder interface
(``InfrastructureFactory.construct(env).application_recorder()``), on:

- **this store** on an embedded nats-server it starts itself, twice: once with
  ``sync_interval: always`` (fsync before every acknowledgement: what the ledger runs) and
  once with the server's default (acknowledged before fsync; flushed every two minutes);
- **SQLite**: the library's recorder on a file in a temporary directory;
- **PostgreSQL**: the library's recorder in a fresh schema, when a server answers at
  127.0.0.1:5432 (user ``postgres``, trust); otherwise a line says it was skipped and why;
- **raw nats-py** on the same two servers: the ceiling, JetStream with no event store on top
  (see ``raw.py`` for what each raw workload does).

Workloads (``--events N``, default 10,000; events are ~300-byte JSON states built before the
clock starts):

- (a) single-event saves: one thread, one event of a new aggregate per ``insert_events``;
  raw: a request per message, awaiting its PubAck;
- (b) saves of 100: one thread, ``insert_events`` of 20 new aggregates × 5 events each;
  raw: atomic batches of 100 (same subjects layout);
- (c) read everything back: ``select_notifications`` in pages of 1,000 until the end (the
  events saved by warm-up, (a) and (b)); raw: an ordered consumer over the stream;
- (d) aggregate loads: 1,000 aggregates of 5 events inserted (untimed), then
  ``select_events(id)`` of each in random order; p50/p99 per load; raw: one batched direct
  get per subject;
- (e) group commit: 64 threads each doing single-event saves, all together; raw: pipelined
  ``publish_async`` of every message, then awaiting all acks;
- (f) nats-server memory (this store, sync always): VmRSS of the server before and after adding
  ``--aggregates N`` single-event aggregates (default 200,000) to a fresh stream; bytes per
  subject and the extrapolation to a million aggregates.

Each backend is warmed up (a few hundred untimed saves and reads) before its timed workloads.
On each nats-server the store's and raw nats-py's workloads alternate ((a) store, (a) raw,
(b) store, ...), each on its own stream, so the pairs behind a ratio run under the same
conditions.

How to read the table
---------------------
Each section has one row per backend: ``count`` of events (or aggregates loaded), ``seconds``
on the clock, the rate, and for some workloads p50/p99 per call in milliseconds. The two ratio
columns divide **this store's** rate (``always÷row``: the sync-always store, ``default÷row``:
the default-sync store) by that row's rate: 0.80 means the store reaches 80% of that row's
throughput, 2.0 means it is twice as fast. Raw rows are only compared with the store on the
same server (a raw row under sync always has no ``default÷row``). For loads (d) the rate is
aggregates loaded per second, so the ratio is the inverse ratio of mean load times.

The targets at the end come from the issue; "met"/"not met" is computed from this run's figures
and is information, not an assertion (the exit status does not depend on it). The machine line
says how much CPU other processes used meanwhile: on a 2-core machine, a concurrent test run
easily moves the figures by tens of percent.
"""
