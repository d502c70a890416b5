"""Worker processes for integration tests: real `cxstream worker` subprocesses that can be killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil

from tests.support.processes import free_port, wait_until


class WorkerProcess:
    """One running `cxstream worker`, its environment and log file."""

    def __init__(self, proc: subprocess.Popen[bytes], env: dict[str, str], log_path: Path) -> None:
        self.proc = proc
        self.env = env
        self.log_path = log_path
        self.web_port = int(env["CXSTREAM_WEB_PORT"])

    @property
    def metrics_url(self) -> str:
        """Where this worker serves Prometheus metrics."""
        return f"http://127.0.0.1:{self.web_port}/metrics"

    def metrics_text(self) -> str:
        """The worker's /metrics page."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            return resp.read().decode()

    def is_serving(self) -> bool:
        """True once /metrics answers."""
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        try:
            self.metrics_text()
        except OSError:
            return False
        return True

    def log(self) -> str:
        """What the worker printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def apply_pid(self) -> int | None:
        """The worker's apply process once it runs: the pool worker multiprocessing spawned, not its resource
        tracker (which starts first)."""
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if "spawn_main" in " ".join(child.cmdline()):
                    return child.pid
        return None

    def kill(self) -> None:
        """SIGKILL: the crash the guarantees are about."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


class WorkerFactory:
    """Starts workers with a test's settings; remembers them to stop them all at the end."""

    def __init__(self, tmp_path: Path, kafka_url: str) -> None:
        self.tmp_path = tmp_path
        self.kafka_url = kafka_url
        self.started: list[WorkerProcess] = []

    def env(self, database_url: str, topic_prefix: str, **settings: str) -> dict[str, str]:
        """Environment of a worker for this test: its broker, database, topics and a free web port.

        A test that sets ``batch_max_events`` wants batches that small (kills and outages between many of them):
        it gets the same bound while behind its input, unless it sets ``batch_max_events_behind`` too."""
        if "batch_max_events" in settings:
            settings.setdefault("batch_max_events_behind", settings["batch_max_events"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXSTREAM_")}
        env.update(
            CXSTREAM_KAFKA_URL=self.kafka_url,
            CXSTREAM_DATABASE_URL=database_url,
            CXSTREAM_TOPIC_PREFIX=topic_prefix,
            CXSTREAM_APP_ID=f"{topic_prefix}app",
            CXSTREAM_DATA_DIR=str(self.tmp_path / "var"),
            CXSTREAM_PARTITIONS="4",
        )
        env.update({f"CXSTREAM_{k.upper()}": v for k, v in settings.items()})
        return env

    def start(
        self, env: dict[str, str], name: str = "worker-1", wait: bool = True, loglevel: str = "warning"
    ) -> WorkerProcess:
        """Start `cxstream worker` and wait until its /metrics answers."""
        env = {**env, "CXSTREAM_WORKER_ID": name, "CXSTREAM_WEB_PORT": str(free_port())}
        log_path = self.tmp_path / f"{name}.{len(self.started)}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--loglevel", loglevel],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.tmp_path,
            )
        worker = WorkerProcess(proc, env, log_path)
        self.started.append(worker)
        if wait:
            wait_until(worker.is_serving, 60, f"{name} to serve /metrics")
        return worker

    def stop_all(self) -> None:
        """Stop every worker this factory started."""
        for worker in self.started:
            worker.stop()
