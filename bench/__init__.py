"""`make bench`: an honest, repeatable throughput and latency benchmark of cxstream on one machine.

It starts its own embedded broker, publishes one simulated workload in both input shapes (one event per
record, and envelopes of ~100 events per destination partition), measures two baselines on the same broker
and data (raw aiokafka ``getmany`` + parse, a bare Faust passthrough agent), then runs real ``cxstream worker``
processes on SQLite and PostgreSQL, one and two workers, and a paced latency run. Results go to
``docs/benchmarks.md``, ``docs/benchmarks.json`` and ``docs/benchmarks.png``.

Modules: :mod:`.procs` (child processes, RSS sampling, databases), :mod:`.workload` (simulate, convert,
publish, pace), :mod:`.baselines` (the two baselines, also run as child processes), :mod:`.runs` (worker
runs and their figures), :mod:`.report` (table, markdown, JSON, chart), :mod:`.__main__` (the command line).
"""
