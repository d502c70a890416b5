"""`make run`: the embedded default in one command — broker, worker, simulated traffic; Ctrl-C stops it all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click

from config.settings import Settings
from streams import lifetime
from streams.sandbox.embedded_broker import port_is_free, start_broker, stop_process


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"the worker exited with code {proc.returncode}; see its log above")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise click.ClickException(f"the worker did not answer on {url} within {timeout:.0f}s")


def _forget_earlier_offsets(settings: Settings) -> None:
    """A fresh embedded broker starts empty: offsets an earlier demo left in the database point into a log that
    is gone (the worker would refuse them), so they are reset. Results stay; replayed events are duplicates."""
    from sinks.database import make_engine, upgrade
    from sinks.sql import SqlSink

    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        if SqlSink(engine).reset_offsets(settings.app_id):
            click.echo(
                f"[demo] {settings.database_url} holds an earlier run's results: its input offsets were reset for the "
                "fresh broker (results kept; events seen before count once)"
            )
    finally:
        engine.dispose()


def _stop_requested(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_demo(settings: Settings, customers: int, days: int, rate: float, seed: int, degrade: str | None = None) -> None:
    """Start what is not running yet (broker), then a worker and the simulator; stop everything on Ctrl-C.

    Also on SIGTERM (``kill``), SIGHUP (the terminal closed) and when the process that started the demo dies
    (``make``, killed on its own): the children started here are stopped, and would die with the demo anyway.
    """
    lifetime.die_with_parent(signal.SIGTERM, os.getppid())
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_requested)
    if not port_is_free(settings.web_port, settings.web_host):
        # Another worker (or demo) answers there: waiting for /metrics would take its answer for this worker's.
        raise click.ClickException(
            f"CXSTREAM_WEB_PORT: {settings.web_host}:{settings.web_port} is in use (another worker or demo?): "
            "stop it, or give this demo another port"
        )
    children: list[subprocess.Popen[bytes]] = []
    var = Path(settings.data_dir)
    var.mkdir(parents=True, exist_ok=True)
    port = settings.kafka_port
    local = settings.bootstrap_servers[0].split(":")[0] in ("127.0.0.1", "localhost")
    try:
        if local and port_is_free(port):
            click.echo(f"[demo] starting the embedded broker on 127.0.0.1:{port} (log: {var / 'broker.log'})")
            children.append(start_broker(port, log_path=var / "broker.log", die_with_parent=True))
            _forget_earlier_offsets(settings)
        else:
            click.echo(f"[demo] using the broker at {settings.kafka_url}")
        env = dict(os.environ)
        cli = [sys.executable, "-m", "streams.cli"]
        worker = subprocess.Popen(
            [*cli, "worker", "--loglevel", "warning"],
            env=env,
            start_new_session=True,
            preexec_fn=lifetime.die_with_parent,
        )
        children.append(worker)
        metrics_url = f"http://{settings.web_host}:{settings.web_port}/metrics"
        _wait_http(metrics_url, worker)
        click.echo(f"[demo] worker up: metrics at {metrics_url}")
        command = Path(sys.executable).parent / "cxstream"
        click.echo(f"[demo] results in {settings.database_url}  (try: {command} timeline <customer-or-identifier>)")
        click.echo(f"[demo] simulating {customers} customers over {days} days at {rate:g} events/s; Ctrl-C stops")
        sim = subprocess.Popen(
            [
                *cli,
                "simulate",
                "--customers",
                str(customers),
                "--days",
                str(days),
                "--seed",
                str(seed),
                "--rate",
                str(rate),
                # A business already running: without it everyone's journey starts with the demo, and the
                # shift from enquiries to issues over its first two weeks is a trend the baselines report.
                "--warmup-days",
                "14",
                *(("--degrade", degrade) if degrade else ()),
            ],
            env=env,
            start_new_session=True,
            preexec_fn=lifetime.die_with_parent,
        )
        children.append(sim)
        while all(c.poll() is None for c in (worker,)):
            time.sleep(0.5)
        raise click.ClickException(f"the worker stopped with code {worker.returncode}")
    except KeyboardInterrupt:
        click.echo("\n[demo] stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second signal must not orphan children
            signal.signal(sig, signal.SIG_IGN)
        for child in reversed(children):
            stop_process(child, timeout=settings.shutdown_timeout_s + 5)
        signal.signal(signal.SIGINT, signal.default_int_handler)
