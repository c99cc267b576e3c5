"""The minimal GPT that `make bench` measures the book's GPT against: causal, the book's sizes, and it learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcourse.book.reference_gpt import MinimalGPT


def tiny() -> MinimalGPT:
    torch.manual_seed(0)
    return MinimalGPT(vocab_size=11, context_length=8, d_model=16, n_heads=2, n_layers=2)


def test_logits_have_the_vocabulary_and_never_read_the_future() -> None:
    model = tiny().eval()
    ids = torch.randint(11, (2, 8))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11  # change positions 5 … 7 only
    with torch.no_grad():
        logits, changed_logits = model(ids), model(changed)
    assert logits.shape == (2, 8, 11)
    torch.testing.assert_close(logits[:, :5], changed_logits[:, :5])
    assert not torch.allclose(logits[:, 5:], changed_logits[:, 5:])


def test_no_biases_and_the_head_is_the_token_embedding() -> None:
    model = tiny()
    assert not [name for name, _ in model.named_parameters() if name.endswith("bias")]
    # 11·16 tokens + 8·16 positions + per block (3 + 1 + 4 + 4)·16² + 2·16 norms, and the final norm
    assert sum(p.numel() for p in model.parameters()) == 11 * 16 + 8 * 16 + 2 * (12 * 16 * 16 + 2 * 16) + 16


def test_it_overfits_one_batch() -> None:
    model = tiny()
    ids = torch.randint(11, (4, 8), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [({"n_layers": 0}, ValueError, "n_layers"), ({"d_model": 15}, ValueError, "divisible"),
     ({"vocab_size": 2.5}, TypeError, "vocab_size")],
)  # fmt: skip
def test_bad_sizes_are_named(options: dict, error: type[Exception], message: str) -> None:
    sizes = {"vocab_size": 11, "context_length": 8, "d_model": 16, "n_heads": 2, "n_layers": 2, **options}
    with pytest.raises(error, match=message):
        MinimalGPT(**sizes)
