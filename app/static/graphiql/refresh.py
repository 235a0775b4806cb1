"""Refreshes the vendored GraphiQL assets from their npm packages at pinned versions.

    python app/static/graphiql/refresh.py

Installs the packages below with npm into a temporary folder, copies the built files
and each package's license here, and writes ``manifest.json`` with every file's
SHA-384 (the page's subresource integrity; the server hashes our own
``shop-graphiql.*`` files itself when it starts). Change a version here, run it, and commit
the folder. Needs Node.js and npm; nothing else of the project.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# package -> (version, {file in the package: name served here})
PACKAGES: dict[str, tuple[str, dict[str, str]]] = {
    "react": ("18.3.1", {"umd/react.production.min.js": "react.production.min.js"}),
    "react-dom": ("18.3.1", {"umd/react-dom.production.min.js": "react-dom.production.min.js"}),
    "graphiql": ("3.8.3", {"graphiql.min.js": "graphiql.min.js",
                           "graphiql.min.css": "graphiql.min.css"}),
    "@graphiql/plugin-explorer": ("1.0.2", {"dist/index.umd.js": "plugin-explorer.umd.js",
                                            "dist/style.css": "plugin-explorer.css"}),
}  # fmt: skip


def sri(path: Path) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(path.read_bytes()).digest()).decode()


def write_manifest(packages: dict[str, str]) -> None:
    """``manifest.json``: each served file's integrity, and the packages' versions."""
    files = sorted(name for _, (_, names) in PACKAGES.items() for name in names.values())
    manifest = {
        "packages": packages,
        "files": {name: sri(HERE / name) for name in files},
    }
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / "package.json").write_text('{"private": true}')
        specs = [f"{name}@{version}" for name, (version, _) in PACKAGES.items()]
        print(f"npm install {' '.join(specs)}", flush=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--save-exact", *specs],
            cwd=work, check=True,
        )  # fmt: skip
        licenses = HERE / "licenses"
        shutil.rmtree(licenses, ignore_errors=True)
        licenses.mkdir()
        for name, (version, files) in PACKAGES.items():
            package = work / "node_modules" / name
            found = json.loads((package / "package.json").read_text())["version"]
            assert found == version, f"{name}: wanted {version}, npm gave {found}"
            for source, target in files.items():
                shutil.copy(package / source, HERE / target)
                print(f"  {name}@{version}/{source} -> {target}")
            license_file = next(iter(sorted(package.glob("LICENSE*"))), None)
            text = (
                license_file.read_text()
                if license_file
                else f"{name}@{version} is licensed {found_license(package)} "
                "(its package ships no LICENSE file; see its package.json).\n"
            )
            (licenses / f"{name.replace('/', '__')}.txt").write_text(text)
        write_manifest({name: version for name, (version, _) in PACKAGES.items()})
    print(f"wrote {HERE / 'manifest.json'}")


def found_license(package: Path) -> str:
    return str(json.loads((package / "package.json").read_text()).get("license", "unknown"))


if __name__ == "__main__":
    main()
