"""Guards for the cells that need the internet (pretrained weights from a hub, for Colab readers).

Tests and the book build are offline: such cells check ``online_or_skip`` first, which answers within a few
seconds and prints why a cell is skipped instead of hanging.
"""

from __future__ import annotations

import os
import socket

HUB_HOST = "huggingface.co"


def is_online(host: str = HUB_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """True if a TCP connection to ``host:port`` opens within ``timeout`` seconds (and the hub is not disabled)."""
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except Exception:  # noqa: BLE001 - DNS failure, refusal, timeout, or sockets blocked in tests
        return False


def online_or_skip(what: str, host: str = HUB_HOST) -> bool:
    """Return True when ``host`` can be reached; otherwise print that ``what`` is skipped and return False."""
    if is_online(host):
        return True
    print(f"Offline (or HF_HUB_OFFLINE=1): skipping {what}. It runs on Colab or any machine with internet access.")
    return False
