"""DALL·E-style generation: the caption-then-codes sequence, the image-token loss, sampling and reranking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcourse.dalle import check_image_token_model, image_token_loss, image_token_sequences, rerank, sample_image_tokens
from mmcourse.gpt import GPT, GPTConfig
from mmcourse.vqvae import VQVAE, VQVAEConfig

TEXT_VOCAB, CODEBOOK, TEXT_LENGTH, GRID = 7, 5, 3, (2, 3)


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    n_codes = GRID[0] * GRID[1]
    config = GPTConfig(
        vocab_size=TEXT_VOCAB + CODEBOOK, context_length=TEXT_LENGTH + n_codes - 1, d_model=32, n_heads=2, n_layers=2
    )
    return GPT(config)


def test_sequences_put_the_caption_first_then_the_codes_row_by_row_shifted_past_the_words() -> None:
    text_ids = torch.tensor([[1, 2, 0]])
    codes = torch.tensor([[[0, 1, 2], [3, 4, 0]]])  # (1, 2, 3)
    sequence = image_token_sequences(text_ids, codes, TEXT_VOCAB, CODEBOOK)
    assert sequence.tolist() == [[1, 2, 0, 7, 8, 9, 10, 11, 7]]


@pytest.mark.parametrize(
    ("text_ids", "codes", "field"),
    [
        (torch.tensor([[1, 7, 0]]), torch.zeros(1, 2, 3, dtype=torch.long), "text_ids"),  # 7 is not a word id
        (torch.tensor([[1, 2, 0]]), torch.full((1, 2, 3), CODEBOOK), "codes"),  # past the codebook
        (torch.tensor([[1, 2, 0]]), torch.zeros(2, 2, 3, dtype=torch.long), "codes"),  # another batch
        (torch.tensor([[1, 2, 0]]), torch.zeros(1, 6, dtype=torch.long), "codes"),  # not a grid
        (torch.tensor([1, 2, 0]), torch.zeros(1, 2, 3, dtype=torch.long), "text_ids"),  # not (batch, L)
    ],
)
def test_sequence_errors_name_the_argument(text_ids: torch.Tensor, codes: torch.Tensor, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        image_token_sequences(text_ids, codes, TEXT_VOCAB, CODEBOOK)


def test_the_loss_is_the_cross_entropy_of_the_image_tokens_over_the_codes_only() -> None:
    model = tiny_gpt()
    generator = torch.Generator().manual_seed(0)
    text_ids = torch.randint(TEXT_VOCAB, (4, TEXT_LENGTH), generator=generator)
    codes = torch.randint(CODEBOOK, (4, *GRID), generator=generator)
    sequences = image_token_sequences(text_ids, codes, TEXT_VOCAB, CODEBOOK)
    logits = model(sequences[:, :-1])  # (4, L + n - 1, vocab)
    by_hand = torch.stack(
        [
            F.cross_entropy(logits[b, TEXT_LENGTH - 1 + i, TEXT_VOCAB:], codes[b].flatten()[i], reduction="none")
            for b in range(4)
            for i in range(GRID[0] * GRID[1])
        ]
    ).mean()
    torch.testing.assert_close(image_token_loss(model, sequences, TEXT_LENGTH, TEXT_VOCAB), by_hand)


def test_the_model_check_refuses_what_cannot_hold_the_sequence() -> None:
    model = tiny_gpt()
    with pytest.raises(TypeError, match="GPT"):
        check_image_token_model(torch.nn.Linear(2, 2), TEXT_LENGTH, 6, TEXT_VOCAB)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="context_length"):
        check_image_token_model(model, TEXT_LENGTH + 1, 6, TEXT_VOCAB)
    with pytest.raises(ValueError, match="text_vocab_size"):
        check_image_token_model(model, TEXT_LENGTH, 6, TEXT_VOCAB + CODEBOOK - 1)
    assert check_image_token_model(model, TEXT_LENGTH, 6, TEXT_VOCAB) == CODEBOOK


def test_greedy_sampling_with_the_cache_follows_the_argmax_of_the_full_forward_pass() -> None:
    model = tiny_gpt().eval()
    text_ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    codes = sample_image_tokens(model, text_ids, GRID, TEXT_VOCAB, temperature=0.0)
    assert codes.shape == (2, *GRID)
    sequence = text_ids
    with torch.no_grad():
        for _ in range(GRID[0] * GRID[1]):
            nxt = model(sequence)[:, -1, TEXT_VOCAB:].argmax(dim=-1) + TEXT_VOCAB  # (2,): codes only compete
            sequence = torch.cat([sequence, nxt[:, None]], dim=1)
    assert torch.equal(codes.flatten(1), sequence[:, TEXT_LENGTH:] - TEXT_VOCAB)


def test_seeded_sampling_repeats_and_stays_in_the_codebook() -> None:
    model = tiny_gpt()
    text_ids = torch.tensor([[1, 2, 3]] * 8)
    draws = [
        sample_image_tokens(model, text_ids, GRID, TEXT_VOCAB, top_k=3, generator=torch.Generator().manual_seed(s))
        for s in (0, 0, 1)
    ]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])
    assert int(draws[0].min()) >= 0 and int(draws[0].max()) < CODEBOOK
    assert model.training, "sampling restores the model's mode"


def test_sampling_errors_name_the_argument() -> None:
    model = tiny_gpt()
    with pytest.raises(ValueError, match="grid height"):
        sample_image_tokens(model, torch.tensor([[1, 2, 3]]), (0, 3), TEXT_VOCAB)
    with pytest.raises(ValueError, match="text_ids"):
        sample_image_tokens(model, torch.tensor([[1, 2, 9]]), GRID, TEXT_VOCAB)  # 9 is a code's id, not a word's
    with pytest.raises(ValueError, match="context_length"):
        sample_image_tokens(model, torch.tensor([[1, 2, 3, 4]]), GRID, TEXT_VOCAB)


@pytest.mark.slow
def test_overfitting_two_captions_makes_greedy_sampling_draw_their_grids() -> None:
    model = tiny_gpt()
    text_ids = torch.tensor([[1, 2, 0], [3, 4, 0]])
    codes = torch.tensor([[[0, 1, 2], [3, 4, 0]], [[4, 4, 3], [2, 1, 1]]])
    sequences = image_token_sequences(text_ids, codes, TEXT_VOCAB, CODEBOOK)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = image_token_loss(model, sequences, TEXT_LENGTH, TEXT_VOCAB)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]
    assert torch.equal(sample_image_tokens(model, text_ids, GRID, TEXT_VOCAB, temperature=0.0), codes)


def test_rerank_keeps_the_best_scored_candidate_of_each_row() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.2, 0.5]])
    candidates = torch.arange(6 * 2).view(2, 3, 2)  # (batch, k, …)
    best, index = rerank(scores, candidates)
    assert index.tolist() == [1, 0]
    assert best.tolist() == [[2, 3], [6, 7]]
    with pytest.raises(ValueError, match="candidates"):
        rerank(scores, candidates[:, :2])
    with pytest.raises(ValueError, match="scores"):
        rerank(scores.long(), candidates)


def test_latents_decode_like_the_codes_they_are() -> None:
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(image_size=16, widths=(8, 8), codebook_size=6, code_dim=4)).eval()
    images = torch.rand(3, 3, 16, 16)
    latents = model.encode_latents(images)  # (3, 4, 4, 4)
    assert latents.shape == (3, 4, 4, 4)
    torch.testing.assert_close(model.decode_latents(latents), model.decode(model.encode(images)))
    nudged = latents + 1e-4 * torch.randn(latents.shape)  # still nearest to the same codes
    torch.testing.assert_close(model.decode_latents(nudged), model.decode(model.encode(images)))
    with pytest.raises(ValueError, match="code_dim"):
        model.decode_latents(torch.zeros(3, 5, 4, 4))
