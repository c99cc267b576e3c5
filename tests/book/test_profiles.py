import pytest
import torch

from mmcourse.book.profiles import PROFILES, current_profile, select

CONFIGS = {"fast": 1, "cpu": 2, "gpu": 3}


@pytest.mark.parametrize("name", PROFILES)
def test_profile_from_environment(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("MMCOURSE_PROFILE", name.upper())
    assert current_profile() == name
    assert select(CONFIGS) == CONFIGS[name]


@pytest.mark.parametrize("cuda", [True, False])
def test_default_profile_follows_cuda(monkeypatch: pytest.MonkeyPatch, cuda: bool) -> None:
    monkeypatch.delenv("MMCOURSE_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert current_profile() == ("gpu" if cuda else "cpu")


def test_unknown_profile_lists_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMCOURSE_PROFILE", "turbo")
    with pytest.raises(ValueError, match=r"MMCOURSE_PROFILE='turbo'.*fast, cpu, gpu"):
        current_profile()


def test_select_names_missing_and_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"missing=\['gpu'\], unknown=\['huge'\]"):
        select({"fast": 1, "cpu": 2, "huge": 3}, profile="fast")
    with pytest.raises(ValueError, match="profile='tiny'"):
        select(CONFIGS, profile="tiny")
