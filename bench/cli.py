"""``cqrs-shop-bench`` (or ``python -m bench``): P1-P9 on fresh embedded stores, P10 on the
production topology."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import platform
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.bootstrap import connect_read_store
from app.seed import seed
from app.settings import Settings
from bench import measures, profile, topology
from bench.harness import ROOT, Row, ServerProcess, Stores, caught_up, progress
from domain.bus import CommandBus
from domain.commands import RestockProduct
from domain.store import create_engine, create_schema

ALL = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10", "PG")


def bench(
    only: Annotated[
        str, typer.Option(help="Comma-separated measures to run, e.g. P1,P3 (P3 needs P1).")
    ] = ",".join(ALL),
    quick: Annotated[
        bool, typer.Option(help="Shorter runs and smaller data: a smoke test, not a result.")
    ] = False,
    output: Annotated[Path, typer.Option(help="Where to write the JSON.")] = (
        ROOT / "bench" / "results" / "latest.json"
    ),
    seconds: Annotated[float | None, typer.Option(help="Seconds per closed-loop run.")] = None,
    repeats: Annotated[
        int | None,
        typer.Option(help="Runs of P1, P2 and P4 (median and range); default 3, 1 with --quick."),
    ] = None,
    history_orders: Annotated[int | None, typer.Option(help="Orders for P5.")] = None,
    profile: Annotated[
        bool, typer.Option(help="Sample the server with py-spy during P1, P4 and P7.")
    ] = False,
) -> None:
    """Runs each measure next to its baseline in one run and prints the ratios."""
    chosen = [m.strip().upper() for m in only.split(",") if m.strip()]
    if unknown := set(chosen) - set(ALL):
        typer.echo(f"unknown measure(s) {', '.join(sorted(unknown))}; known: {', '.join(ALL)}")
        raise typer.Exit(2)
    if "P3" in chosen and "P1" not in chosen:
        chosen.insert(0, "P1")
    options = measures.Options()
    if quick:
        options = measures.Options(
            seconds=2, subscribers=(200, 1000), history_orders=10_000, commands=1000,
            seed_orders=200, repeats=1,
        )  # fmt: skip
    if seconds:
        options.seconds = seconds
    if repeats:
        options.repeats = repeats
    if history_orders:
        options.history_orders = history_orders
    _raise_open_files_limit()
    settings = Settings()
    folder = ROOT / "var" / "bench" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    started = time.monotonic()
    folder.mkdir(parents=True)
    stores = Stores(folder, settings.cache_dir, settings.mongodb_url)
    rows = asyncio.run(run(stores, options, chosen, output.parent if profile else None))
    render(rows)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": _cpus(), "python": platform.python_version()},
                "options": asdict(options),
                "seconds": round(time.monotonic() - started, 1),
                "rows": [asdict(row) | {"met": row.met()} for row in rows],
            },
            indent=2,
        )
        + "\n"
    )
    typer.echo(f"written to {output}")


async def run(
    stores: Stores, options: measures.Options, chosen: list[str], profiles: Path | None = None
) -> list[Row]:
    rows: list[Row] = []

    def record(row: Row) -> None:
        rows.append(row)
        progress(f"{row.id}: {row.measured:,.1f} {row.unit}" + _ratio_text(row))

    async def attempt(
        name: str, measure: Callable[[], Awaitable[Row | list[Row]]], repeats: int = 1
    ) -> None:
        """Runs one measure ``repeats`` times (rows: the median, with the range); a failure
        is a row of its own, shown as n/a, and the others still run."""
        runs: list[list[Row]] = []
        for n in range(repeats):
            progress(name if repeats == 1 else f"{name} (run {n + 1} of {repeats})")
            try:
                result = await measure()
            except Exception as error:
                traceback.print_exc()
                rows.append(Row(name.split(":")[0], f"FAILED: {error!r}"[:200], float("nan"),
                                None, "", ""))  # fmt: skip
                return
            runs.append(result if isinstance(result, list) else [result])
        for row in combine(runs):
            record(row)

    if "P10" in chosen:
        await attempt(
            "P10: the production topology",
            lambda: topology.p10_topology(stores.folder / "topology", stores.cache_dir,
                                  writes=100 if options.seconds < 5 else 300),
        )  # fmt: skip
    if "PG" in chosen:
        await attempt(
            "PG: P4 and P5 on FerretDB on PostgreSQL",
            lambda: topology.pg_read_store(stores, options),
        )
    if set(chosen) <= {"P10", "PG"}:
        return rows
    if "P2" in chosen:
        await attempt(
            "P2: command bus and plain sqlite3",
            lambda: measures.p2_command_bus(stores, options),
            options.repeats,
        )
    products, customers, version = await seed_shop(stores, options)
    server_measures = {"P1", "P3", "P4", "P7", "P9"} & set(chosen)
    if server_measures:
        async with ServerProcess(stores, stores.folder / "server.log") as server:
            await caught_up(server, version)
            shop = measures.Shop(stores, server, options, products, customers, version)
            if "P1" in chosen:
                with sampled(server, profiles, "P1", options):
                    await attempt(
                        "P1: placeOrder and no-op mutations",
                        lambda: measures.p1_place_order(shop),
                        options.repeats,
                    )
                shop.results["P1"] = rows[-1]
            if "P3" in chosen and rows[-1].measured > 0:
                await attempt("P3: lag at half the relay's capacity", lambda: measures.p3_lag(shop))
                await caught_up(server, shop.version)  # the backlog of the loaded run drained
                await attempt(
                    f"P3: lag at {options.low_rate:.0f} orders/s",
                    lambda: measures.p3_lag(shop, options.low_rate),
                )
            if "P4" in chosen:
                with sampled(server, profiles, "P4", options):
                    await attempt(
                        "P4: product and no-op queries",
                        lambda: measures.p4_product_query(shop),
                        options.repeats,
                    )
            if "P9" in chosen:
                await attempt(
                    "P9: refusals next to { __typename }", lambda: measures.p9_refusals(shop)
                )
            if "P7" in chosen:
                for subscribers in options.subscribers:
                    sample = profiles / f"profile-P7-{subscribers}.txt" if profiles else None
                    await attempt(
                        f"P7: {subscribers} subscribers",
                        functools.partial(measures.p7_fanout, shop, subscribers, sample),
                    )
                    if sample is not None and sample.exists():
                        report_profile(f"P7/{subscribers}", sample)
    if not {"P5", "P6", "P8"} & set(chosen):
        return rows
    async with stores.read_store() as mongodb_url:
        await in_process_read_measures(stores, mongodb_url, options, chosen, attempt)
    return rows


async def in_process_read_measures(
    stores: Stores,
    mongodb_url: str,
    options: measures.Options,
    chosen: list[str],
    attempt: Callable[..., Awaitable[None]],
) -> None:
    store = await connect_read_store(mongodb_url)
    try:
        if "P6" in chosen:
            await attempt(
                "P6: relay from zero, and raw upserts",
                lambda: measures.p6_relay(stores, store),
            )
        if "P8" in chosen:
            await attempt(
                "P8: PyMongo async and Motor",
                lambda: measures.p8_drivers(stores, mongodb_url, store),
            )
        if "P5" in chosen:
            await attempt(
                f"P5: orderHistory at {options.history_orders:,} orders",
                lambda: measures.p5_order_history(stores, store, options),
            )
    finally:
        await store.client.close()


async def seed_shop(stores: Stores, options: measures.Options) -> tuple[list[str], list[str], int]:
    """``cqrs-shop seed``'s data, and a deep restock so P1 and P3 never run out."""
    from sqlalchemy import select

    from domain import model

    engine = create_engine(stores.database_url)
    try:
        await create_schema(engine)
        bus = CommandBus(engine)
        progress(f"seeding 50 products, 200 customers, {options.seed_orders} orders")
        counts = await seed(bus, products=50, customers=200, orders=options.seed_orders)
        async with engine.connect() as conn:
            products = list((await conn.scalars(select(model.products.c.id))).all())
            customers = list((await conn.scalars(select(model.customers.c.id))).all())
        version = counts.version
        for product in products:
            outcome = await bus.execute(RestockProduct(product, 1_000_000))
            version = max(version, outcome.version or 0)
        bus.close()
    finally:
        await engine.dispose()
    await asyncio.to_thread(stores.freeze_outbox)
    return products, customers, version


@contextlib.contextmanager
def sampled(
    server: ServerProcess, folder: Path | None, name: str, options: measures.Options
) -> Iterator[None]:
    """Samples the server during the first closed loop of a measure (warm-up included)."""
    if folder is None or server.process is None:
        yield
        return
    output = folder / f"profile-{name}.txt"
    sampler = profile.start(server.process.pid, 1 + options.seconds, output)
    try:
        yield
    finally:
        if sampler is not None:
            sampler.wait(60)
            report_profile(name, output)


def report_profile(name: str, output: Path) -> None:
    progress(f"{name} server profile: {output}")
    for package, share in profile.summarize(output).items():
        progress(f"  {package:<14} self {share['self']:5.1f}%  "
                 f"inclusive {share['inclusive']:5.1f}%")  # fmt: skip


def combine(runs: list[list[Row]]) -> list[Row]:
    """One row per measure over several runs: the medians, each run and the range kept
    in ``detail`` (a ratio is the median of the runs' ratios, not a ratio of medians)."""
    if len(runs) == 1:
        return runs[0]
    combined = []
    for index, first in enumerate(runs[0]):
        same = [run[index] for run in runs if index < len(run)]
        measured = [row.measured for row in same]
        ratios = [row.ratio for row in same if row.ratio is not None]
        baselines = [row.baseline for row in same if row.baseline is not None]
        detail = {
            **same[-1].detail,
            "runs": [
                {"measured": r.measured, "baseline": r.baseline, "ratio": r.ratio} for r in same
            ],
            "measured_range": [min(measured), max(measured)],
        }
        if ratios:
            detail["ratio_range"] = [min(ratios), max(ratios)]
        combined.append(
            Row(first.id, f"{first.what} (median of {len(same)})", statistics.median(measured),
                statistics.median(baselines) if baselines else None, first.unit, first.goal,
                ratio=statistics.median(ratios) if ratios else None, detail=detail)
        )  # fmt: skip
    return combined


def render(rows: list[Row]) -> None:
    table = Table(title="cqrs-shop benchmarks (ratio = measured ÷ baseline)")
    for column in ("", "measure", "measured", "baseline", "ratio", "goal", "met"):
        table.add_column(column, justify="right" if column in ("measured", "baseline") else "left")
    for row in rows:
        met = row.met()
        table.add_row(
            row.id, row.what,
            "n/a" if math.isnan(row.measured) else f"{row.measured:,.1f} {row.unit}",
            "" if row.baseline is None else f"{row.baseline:,.1f} {row.unit}",
            "" if row.ratio is None else f"{row.ratio:.2f}", row.goal,
            {True: "yes", False: "NO", None: ""}[met],
        )  # fmt: skip
    console = Console(width=160)
    console.print(table)
    for row in rows:
        cpu, noop = row.detail.get("cpu_ms_per_request"), row.detail.get("noop_cpu_ms_per_request")
        if cpu:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
            baseline = ", ".join(f"{k} {v:.2f}" for k, v in (noop or {}).items())
            console.print(f"{row.id} CPU ms per request: {parts} (baseline: {baseline})")


def _ratio_text(row: Row) -> str:
    return "" if row.ratio is None else f" (ratio {row.ratio:.2f})"


def _raise_open_files_limit() -> None:
    """P7 holds thousands of WebSocket connections in this process and in the server."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 12_000:
        print(f"warning: open files limit {hard}; P7 may fail", file=sys.stderr)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def main() -> None:
    typer.run(bench)
