"""Build the book into _build/html: ``python book/build.py [--no-execute]`` (``make book`` / ``make test``).

Jupyter Book's execution cache keys on notebook content only, not on ``MMCOURSE_PROFILE``, so each profile gets
its own cache: this script writes ``_build/config/<profile>.yml`` from ``_config.yml`` with the execution mode
and cache path filled in, builds with ``-W -n --keep-going`` (every warning fails the build), and says where to
open the result.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from mmcourse.profiles import current_profile

ROOT = Path(__file__).resolve().parents[1]


def write_config(profile: str, execute: bool) -> Path:
    """The book's config for this build: execute with a per-profile cache, or not at all."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "cache" if execute else "off"
    config["execute"]["cache"] = str(ROOT / "_build" / ".jupyter_cache" / profile)
    # The derived config lives in _build/config: make the paths in it absolute, as they were meant from the root.
    sphinx = config["sphinx"]
    sphinx["local_extensions"] = {name: str(ROOT / path) for name, path in sphinx["local_extensions"].items()}
    sphinx["config"]["html_static_path"] = [str(ROOT / path) for path in sphinx["config"]["html_static_path"]]
    config["bibtex_bibfiles"] = [str(ROOT / path) for path in config["bibtex_bibfiles"]]
    if not execute:
        # Unexecuted notebooks have no glued values; the executed build (`make book`) keeps these as errors.
        sphinx["config"]["suppress_warnings"] += ["mystnb.glue", "mystnb.glue_ref"]
    path = ROOT / "_build" / "config" / f"{profile}-{'execute' if execute else 'no-execute'}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-execute", action="store_true", help="build without executing notebooks")
    args = parser.parse_args()
    profile = current_profile()
    config = write_config(profile, execute=not args.no_execute)
    environment = dict(os.environ, MMCOURSE_PROFILE=profile, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [str(jupyter_book), "build", str(ROOT), "--config", str(config), "-W", "-n", "--keep-going"]
    mode = "without executing notebooks" if args.no_execute else "executing notebooks"
    print(f"Building the book ({mode}, profile {profile})")
    completed = subprocess.run(command, env=environment, cwd=ROOT)
    if completed.returncode != 0:
        print("The book build failed: see the warnings above (every warning is an error).", file=sys.stderr)
        return completed.returncode
    print(f"\nThe book is built. Open it in a browser: {ROOT / '_build' / 'html' / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
