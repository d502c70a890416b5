"""The benchmark's report is written for any run, a tiny one included."""

from __future__ import annotations

from bench.report import _cpu_section


def test_a_run_that_measured_no_cpu_has_no_ceiling_rather_than_failing_the_report() -> None:
    results = {
        "machine": {"nproc": 2},
        "baselines": {
            "faust-pass": {"status": "ok", "events": 40, "cpu_by_process": {"faust-pass": 0.0}, "rate": 900.0}
        },
        "pipelines": {
            "sqlite-envelopes": {
                "status": "ok (1 commit)",
                "events": 40,
                "cpu_by_process": {"worker-1 apply": 0.004, "broker": 0.0},
                "sustained_eps": None,
            }
        },
    }

    lines = _cpu_section(results)

    assert "| faust-pass | faust-pass 0 | 0 | — | 900 |" in lines
    assert "| sqlite-envelopes | worker-1 apply 100, broker 0 | 100 | 20,000 | — |" in lines
