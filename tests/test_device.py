import random

import numpy as np
import pytest
import torch

from mmcourse.device import best_device, describe, set_seed, setup


def draw() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), torch.rand(1).item()


def test_set_seed_repeats_python_numpy_and_torch() -> None:
    set_seed(123)
    first = draw()
    set_seed(123)
    assert draw() == first
    set_seed(124)
    assert draw() != first


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_set_seed_rejects_bad_seeds(seed: object) -> None:
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        set_seed(seed)  # type: ignore[arg-type]


def test_summary_line_names_profile_device_and_torch(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MMCOURSE_PROFILE", "fast")
    device = setup(seed=0)
    line = capsys.readouterr().out.strip()
    assert line == describe()
    assert "profile=fast" in line and f"device={device}" in line and torch.__version__ in line
    assert device == best_device()
