"""The benchmark's own tools: goals, the side-by-side report, profile attribution."""

from __future__ import annotations

from pathlib import Path

from bench.harness import Row, percentile
from bench.profile import package_of, summarize
from bench.report import compare


def test_goals_read_ratios_or_absolute_values() -> None:
    assert Row("P1", "x", 60, 100, "req/s", ">= 0.6").met()
    assert not Row("P1", "x", 50, 100, "req/s", ">= 0.6").met()
    assert Row("P3", "x", 20.0, None, "ms p99", "<= 25 ms").met()
    assert not Row("P3", "x", 30.0, None, "ms p99", "<= 25 ms").met()
    assert Row("P7", "x", 30.0, None, "ms p99", "").met() is None


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50.0, 99.0, 100.0,
    )  # fmt: skip
    assert percentile([2.0, 1.0], 50) == 1.0


def test_the_report_puts_each_measure_before_and_after() -> None:
    before = {"rows": [{"id": "P1", "what": "w", "goal": ">= 1", "measured": 1.0,
                        "baseline": 2.0, "ratio": 0.5, "unit": "r/s", "met": False}]}  # fmt: skip
    after = {"rows": [{**before["rows"][0], "measured": 3.0, "ratio": 1.5, "met": True}]}
    lines = compare(before, after).splitlines()
    assert (
        lines[2] == "| P1 | w | >= 1 | 1.0 r/s ÷ 2.0 = **0.50** | 3.0 r/s ÷ 2.0 = **1.50** | yes |"
    )


def test_profile_samples_are_summed_by_package(tmp_path: Path) -> None:
    stacks = tmp_path / "profile.txt"
    stacks.write_text(
        "main (app/asgi.py:1);execute (sqlalchemy/engine/base.py:9) 3\n"
        "main (app/asgi.py:1);<lambda> (<string>:1) 1\n"
    )
    assert package_of("run (asyncio/runners.py:118)") == "asyncio"
    shares = summarize(stacks)
    assert shares["sqlalchemy"] == {"self": 75.0, "inclusive": 75.0}
    assert shares["python"]["self"] == 25.0
    assert "app" not in shares  # never a leaf here, so not among the self shares


async def test_a_closed_loop_counts_what_completes_inside_its_window() -> None:
    """Calls of 0.1 s by 2 workers over a 0.5 s window: about 10 completions, 20 per
    second, whatever lies in the warm-up or ends after the window."""
    import asyncio

    from bench.harness import closed_loop

    async def call(_: int) -> None:
        await asyncio.sleep(0.1)

    load = await closed_loop(call, concurrency=2, seconds=0.5, warmup=0.05)
    assert load.seconds == 0.5
    assert 4 <= load.count <= 10  # the old count took the calls started in it: 12
    assert all(latency >= 0.1 for latency in load.latencies)


def test_repeated_runs_show_the_median_and_the_range() -> None:
    from bench.cli import combine

    runs = [[Row("P1", "x", m, b, "req/s", ">= 0.6")] for m, b in ((10, 20), (30, 40), (20, 25))]
    [row] = combine(runs)
    assert (row.measured, row.baseline) == (20, 25)
    assert row.ratio == 0.75  # the median of 0.5, 0.75 and 0.8
    assert row.detail["measured_range"] == [10, 30]
    assert row.detail["ratio_range"] == [0.5, 0.8]
    assert "median of 3" in row.what


def test_cpu_is_read_from_proc_per_process() -> None:
    import os

    from bench.harness import CpuMeter

    meter = CpuMeter(os.getpid())  # this process stands in for the server
    before = meter.read()
    sum(i * i for i in range(2_000_000))  # some CPU
    after = meter.read()
    assert after["server"] > before["server"]
    assert after["client"] > before["client"]
    assert after["read_store"] >= before["read_store"]  # a FerretDB child of this process, if any
