"""Where a server's time goes during a measure: py-spy samples, summed by package.

``cqrs-shop-bench --profile`` samples the server process while P1 and P4 run
and keeps the raw stacks (collapsed format, one ``frame;frame;... count`` line per
stack) next to the results, for a flame graph (``py-spy``/speedscope read them).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.harness import ROOT

FRAME_FILE = re.compile(r"\((?P<file>[^:()]+)(?::\d+)?\)$")


def start(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes] | None:
    """Samples ``pid`` for ``seconds`` (100 Hz, GIL-idle samples left out); None without py-spy."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
               "100", "--format", "raw", "--output", str(output), "--nonblocking"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def package_of(frame: str) -> str:
    """The top-level package of a frame's file: ``domain``, ``sqlalchemy``, ``asyncio``…

    py-spy names files relative to their ``sys.path`` entry (``domain/bus.py``,
    ``sqlalchemy/sql/base.py``); a lone module counts as itself.
    """
    match = FRAME_FILE.search(frame)
    if not match or match.group("file").startswith("<"):
        return "python"
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3.11/"):
        path = path.split(marker, 1)[-1]
    if path.startswith(f"{ROOT}/"):
        path = path.removeprefix(f"{ROOT}/")
    return path.split("/", 1)[0].removesuffix(".py")


def summarize(path: Path, top: int = 12) -> dict[str, dict[str, float]]:
    """Per package, the share of samples spent in it (self) and under it (inclusive)."""
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        total += count
        own[package_of(frames[-1])] += count
        for package in {package_of(f) for f in frames}:
            under[package] += count
    if not total:
        return {}
    return {
        package: {"self": 100 * n / total, "inclusive": 100 * under[package] / total}
        for package, n in own.most_common(top)
    }
