"""``coverage.query`` latency benchmark: ``ledger serve``'s responder against a bare NATS echo.

Run ``python -m bench.query`` from the repository root; ``--help`` lists options (``--people N``,
default 5,000; ``--rate R`` requests per second, default 2,000; ``--seconds S`` of load per
responder, default 10; ``--quick``: 1,000 people, 2 s at 500/s; ``--json FILE``). A default run
takes about 40 seconds, a quick one about 15.

What is measured
----------------
The ledger (``population.py``): N people, each with a ``resident`` enrollment for 2022 requested in
the 2021 concentrated period; 92% of them paid (``enrolled``, benefits from 2022-01-01), 8% did
not (``awaiting_payment``). They are recorded before any clock, in this process, through the
``Ledger``'s own methods inside ``ledger.batch()`` on the JetStream store (one embedded
nats-server, ``sync_interval: always``, in a temporary directory; never the system one).

The requests: R × S bodies ``{"id_number", "date"}``, built before any clock, each about a known
person drawn at random (2% about valid ID numbers the ledger has never seen), dated in 2022 for
80% of them and otherwise in late 2021 or early 2023. No ``as_of``.

Two responders on that server, one after the other, each in its own process:

- **ledger serve**: ``ledger serve --nats-url URL`` with ``LEDGER_PERSON_KEY_SECRET`` set, exactly
  the production service (ingestion consumer, projections, and the ``coverage.query`` responder:
  ``CoverageQueryService`` on FastStream's ``NatsBroker``). It is a separate process, as in
  production, not an in-process broker: the load generator and the responder never share a GIL.
  Its aggregate cache starts empty (the people were written by another process), so the first
  request about each person loads them from the store. The clock starts once it has answered
  a first request (the contract's readiness rule) and then gone idle (whatever it does at
  start-up, such as projections catching up with LEDGER, is over); that first reply is kept.
- **echo**: ``bench.query.echo``, a plain nats-py subscription answering every request with that
  kept reply (the same bytes, so only the work behind the reply differs). The floor any Python
  NATS responder on this machine stands on.

The load (``load.py``, its own process): open loop, request ``i`` due at ``t0 + i / R`` whatever
happened to the earlier ones, on one NATS connection of its own (the client protocol spoken
directly: a sender thread sleeping until each request is due, a receiver thread stamping replies
on arrival; replies to ``<inbox>.<i>``). Latency = reply received − *scheduled* send time, so a
responder that falls behind is charged for the whole backlog (no coordinated omission); a
request with no reply within 10 s of the last one sent counts as "no reply", i.e. larger than
anything measured.

How to read the output
----------------------
One row per responder: requests, answered, the rate actually sent and the rate of replies (from
the first request's due time to the last reply), and the latency p50/p90/p99/max (nearest rank,
over *all* requests: when more than 1% had no reply, p99 reads "no reply"). Then the ratio of the
two p99s. "ledger serve in detail": p99 for each second of the schedule (a growing series means
the responder falls behind: its capacity is below the offered rate; the replies/s figure is then
about its capacity), what the answered requests waited when some were not answered, first
requests about a person (cold in the aggregate cache) against the others, and the replies by
status (a check that the answers are real). "Load generator": its send lag (actual − scheduled
send time, part of every latency above; on two cores a busy responder and nats-server delay it).
"CPU": seconds used while each clock ran by the responder (and per answered request), the
nats-server and the load generator (``/proc``). Then the issue's targets, "met"/"not met"
(information: the exit status is 0 either way), and the machine line (CPU used by other processes
meanwhile; on two cores anything else running moves the figures a lot).

Everything printed is measured in that run. The server, child processes and the temporary
directory are removed at the end, also on errors and on SIGTERM/Ctrl-C.
"""
