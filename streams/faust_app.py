"""The worker's Faust app: Faust's aiokafka transport with the consumer's fetch wait taken from the settings.

Faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` fixed in the driver, with no setting to
change it. Under steady traffic the embedded broker (Tansu) holds a fetch for most of that wait before it
answers: measured here at 1,800 records/s over 16 partitions, a plain aiokafka consumer saw its records
p50 378 ms / p99 771 ms after they were produced with a 1.5 s wait and p50 21 ms / p99 65 ms with 0.1 s.
That wait landed in every event's end-to-end latency (records reached the worker in bursts about 0.8 s
apart). A broker with records ready answers at once either way, so a short wait costs no throughput; idle,
it costs one more fetch request per wait.

Its web server is ``streams.http.Web``: the app's own pages (/metrics, the collector) and none of Faust's.
"""

from __future__ import annotations

from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TransportT
from faust.web import Web

from streams.http import Web as PagesOnlyWeb


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts and builds its fetcher: the one value Faust does not pass through.
        consumer._fetch_max_wait_ms = int(self.app.fetch_max_wait * 1000)  # type: ignore[attr-defined]
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class App(faust.App):
    """A ``faust.App`` whose consumer waits at most ``fetch_max_wait`` seconds per fetch, serving only its own pages."""

    def __init__(self, *args: Any, fetch_max_wait: float, **kwargs: Any) -> None:
        self.fetch_max_wait = fetch_max_wait
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)

    def _new_web(self) -> Web:
        # Faust picks its web driver by URL (``web`` setting) and has no setting that drops every built-in view.
        return PagesOnlyWeb(self)
