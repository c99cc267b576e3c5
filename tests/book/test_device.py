import random

import numpy as np
import pytest
import torch

from mmcourse.book.device import best_device, describe, set_seed, setup


def draw() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), torch.rand(1).item()


def test_set_seed_repeats_python_numpy_and_torch() -> None:
    set_seed(123)
    first = draw()
    set_seed(123)
    assert draw() == first
    set_seed(124)
    assert draw() != first


@pytest.mark.parametrize(("seed", "error"), [(-1, ValueError), (1.5, TypeError), ("0", TypeError), (True, TypeError)])
def test_set_seed_rejects_bad_seeds(seed: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="seed must be an int"):
        set_seed(seed)  # type: ignore[arg-type]


def test_summary_line_names_profile_device_and_torch(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MMCOURSE_PROFILE", "fast")
    device = setup(seed=0)
    line = capsys.readouterr().out.strip()
    assert line == describe()
    assert "profile=fast" in line and f"device={device}" in line and torch.__version__ in line
    assert device == best_device()
