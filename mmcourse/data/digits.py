"""The 1,797 8x8 handwritten digits that scikit-learn ships."""

from __future__ import annotations

import torch


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (images (N, 8, 8) float in [0, 1], labels (N,) int64)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0  # (N, 8, 8)
    labels = torch.tensor(bunch.target, dtype=torch.int64)  # (N,)
    return images, labels
