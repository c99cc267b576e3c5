import time

import pytest

from mmcourse.online import fetch_online, is_online, online_or_skip


def test_offline_answer_is_quick_and_never_hangs() -> None:
    start = time.perf_counter()
    assert is_online(timeout=3.0) is False  # sockets are disabled in unit tests; no network here anyway
    assert time.perf_counter() - start < 5


def test_hub_offline_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_online("127.0.0.1", 1) is False


def test_online_only_cell_says_it_skips(capsys) -> None:
    assert online_or_skip("loading gpt2 from the hub") is False
    assert "skipping loading gpt2 from the hub" in capsys.readouterr().out


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        is_online(timeout=0)
    with pytest.raises(ValueError, match="sha256 must be 64 hex digits"):
        fetch_online("https://example.org/x", "abc")
