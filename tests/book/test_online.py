import socket

import pytest

from mmcourse.book.online import HUB_HOST, is_online, online_or_skip


def test_offline_answer_never_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection attempt is bounded by the timeout it is given (sockets are disabled in unit tests)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = []

    def refuse(address: tuple[str, int], timeout: float) -> None:
        seen.append((address, timeout))
        raise OSError("no network here")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert is_online(timeout=3.0) is False
    assert seen == [((HUB_HOST, 443), 3.0)]


def test_hub_offline_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_online("127.0.0.1", 1) is False


def test_online_only_cell_says_it_skips(capsys) -> None:
    assert online_or_skip("loading gpt2 from the hub") is False
    assert "skipping loading gpt2 from the hub" in capsys.readouterr().out


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="timeout must be positive"):
        is_online(timeout=0)
