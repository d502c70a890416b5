"""Try cxstream locally: an embedded broker, simulated traffic and the demo that runs them with a worker.

Development tooling, shipped with the package so that ``cxstream broker``, ``cxstream simulate`` and
``cxstream demo`` (``make run``) work from an install. Nothing the worker, the apply path or the collector
runs imports it: only those three commands do, inside their command functions in :mod:`streams.cli`
(tests and the benchmark use it too).

Modules: :mod:`.journeys` (the deterministic simulator of multi-channel customer journeys, as raw source
records), :mod:`.traffic` (``cxstream simulate``: those records through the adapters onto the topics, or
into files), :mod:`.embedded_broker` (the Tansu broker on loopback: start, wait, stop), :mod:`.demo`
(``cxstream demo``: broker, worker and traffic in one command).
"""
