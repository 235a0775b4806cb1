"""npm packages for the end-to-end tests, installed once per lock file under .cache/node.

Each folder beside this file with a ``package.json`` and ``package-lock.json`` is
installed with ``npm ci`` (exact versions from the lock) into ``.cache/node/<folder>``,
and again only when its lock changes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "node"


def installed(name: str) -> Path:
    """The folder where ``tests/e2e/<name>``'s packages are installed, with its files."""
    source = Path(__file__).parent / name
    target = CACHE / name
    lock = (source / "package-lock.json").read_bytes()
    stamp = target / ".lock-sha256"
    digest = hashlib.sha256(lock).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for file in ("package.json", "package-lock.json"):
            shutil.copy(source / file, target / file)
        npm = shutil.which("npm")
        assert npm is not None, "the end-to-end tests need Node.js and npm"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=target,
            check=True,
            timeout=300,
        )
        stamp.write_text(digest)
    for file in source.iterdir():
        if file.suffix in (".js", ".mjs"):
            shutil.copy(file, target / file.name)
    return target
