"""The worker's Faust app passes the configured fetch wait to the consumer Faust builds."""

from __future__ import annotations

import asyncio

from streams.faust_app import App


def test_the_consumer_waits_at_most_the_configured_fetch_wait() -> None:
    async def build() -> int:
        app = App("cx-fetch-wait", broker="kafka://127.0.0.1:9", fetch_max_wait=0.05)
        thread = app.consumer._thread  # type: ignore[attr-defined]
        consumer = thread._create_worker_consumer(app.transport)
        try:
            # Faust's own value is 1500 ms; start() builds the fetcher from this attribute.
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert asyncio.run(build()) == 50
