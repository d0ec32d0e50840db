"""End-to-end ingestion benchmark: upstream messages through ``ledger serve``, against the raw ceiling.

Run ``python -m bench.ingest`` from the repository root; ``--help`` lists options
(``--messages N``, default 20,000; ``--batch-size B``, default 500; ``--window W``, publishes in
flight, default 2,000; ``--quick``: 4,000 messages; ``--json FILE``). A default run takes about
20 seconds.

What is measured
----------------
The messages (``population.py``): N contract messages of a synthetic enrollment season, about
N/2.1 people each sending an enrollment request and its payment, one in ten of them listed first
on a partial-subsidy roster (so they owe less); all valid under the Hefei policy, so every message
should be recorded and none rejected. All bytes are built before any clock starts.

Two runs, each on a fresh embedded nats-server with ``sync_interval: always`` (fsync before every
acknowledgement, as the ledger runs) in a temporary directory, publishing the same bytes with the
same ``Nats-Msg-Id`` headers from this process (pipelined ``publish_async``, windows of 2,000) to
a stream configured like UPSTREAM (see ``runs.py``):

- **end to end**: ``ledger serve --nats-url URL --batch-size B`` in its own process, as in
  production (durable pull consumer on ``upstream.>``, decoding, the ledger's decisions, atomic
  saves to LEDGER, rejections to REJECTED, acknowledgement after each outcome);
- **raw ceiling**: a durable pull consumer with the same settings in its own process
  (``raw_consumer.py``), fetching batches of B and acknowledging each message, nothing else.

The clock starts at the first publish and stops when the consumer's ack floor
(``$JS.API.CONSUMER.INFO``) reaches the last published sequence with nothing pending or awaiting
acknowledgement: every message has its outcome. The consumer is running (its consumer exists)
before the clock starts; nothing is warmed up.

How to read the output
----------------------
One row per run: messages, publish seconds (first publish to last PubAck), total seconds, the
rate (messages ÷ total seconds), and the CPU seconds the consumer process, the nats-server and the
publisher used while the clock ran (``/proc/<pid>/stat``, utime + stime). The ratio is end to
end ÷ raw ceiling. "Consumer progress" splits each run at the moment publishing ended: how many
messages were acknowledged by then and the rate before and after. "Outcomes" checks the data:
events on LEDGER, rejections on REJECTED (expected: none) and what ``ledger serve`` logged when
stopped. Then the issue's targets, "met"/"not met" from this run's figures (information: the exit
status is 0 either way), and the machine line (CPU used by other processes meanwhile; on two
cores anything else running moves the figures a lot).

Everything printed is measured in that run. Servers, child processes and temporary directories
are removed at the end, also on errors and on SIGTERM/Ctrl-C.
"""
