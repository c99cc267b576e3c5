import math
import random

import pytest
import torch

from mmcourse.gpt import GPT, GPTConfig
from mmcourse.prompting import (
    SoftPromptModel,
    balanced_labels,
    calibrate,
    chatml,
    draw_demonstrations,
    expand_cache,
    few_shot_prompt,
    few_shot_query,
    label_mass,
    label_word_loss,
    last_token_logits,
    score_label_words,
    score_with_prefix,
)


def tiny_gpt(positions: str = "rotary") -> GPT:
    torch.manual_seed(0)
    if positions == "rotary":
        return GPT(GPTConfig.llama_style(vocab_size=30, context_length=64, d_model=16, n_heads=2, n_layers=2)).eval()
    return GPT(GPTConfig(vocab_size=30, context_length=64, d_model=16, n_heads=2, n_layers=2)).eval()


def test_label_word_scoring_on_a_hand_made_distribution() -> None:
    probabilities = torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.5, 0.05, 0.05, 0.4]])  # (batch 2, vocab 4)
    scores = score_label_words(probabilities.log() + 3.0, torch.tensor([2, 1]))  # a constant shift changes nothing
    torch.testing.assert_close(scores, torch.tensor([[0.2, 0.6], [0.05, 0.05]]).log())
    assert scores.argmax(dim=-1).tolist() == [1, 0]  # ties go to the first label
    torch.testing.assert_close(label_mass(scores), torch.tensor([0.8, 0.1]))


def test_label_word_scoring_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="next_token_logits"):
        score_label_words(torch.zeros(4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="label_ids"):
        score_label_words(torch.zeros(2, 4), torch.tensor([3]))  # one label word is no choice
    with pytest.raises(ValueError, match="label_ids"):
        score_label_words(torch.zeros(2, 4), torch.tensor([1.0, 2.0]))


def test_few_shot_prompt_format_and_demonstrations() -> None:
    prompt = few_shot_prompt([("good film", 1), ("dull", 0)], instruction="Classify.")
    assert prompt == "Classify.\n\nReview: good film\nSentiment: positive\n\nReview: dull\nSentiment: negative"
    assert few_shot_prompt([]) == ""
    assert few_shot_query("fine", after_prefix=True) == "\n\nReview: fine\nSentiment:"
    assert few_shot_query("fine", after_prefix=False) == "Review: fine\nSentiment:"
    with pytest.raises(ValueError, match="label"):
        few_shot_prompt([("x", 2)])
    with pytest.raises(ValueError, match="template"):
        few_shot_prompt([("x", 1)], template="no slot")
    pool = [(f"text {i}", i % 2) for i in range(20)]
    drawn = draw_demonstrations(pool, 4, random.Random(0), [1, 1, 0, 1])
    assert [label for _, label in drawn] == [1, 1, 0, 1] and len({text for text, _ in drawn}) == 4
    assert len(draw_demonstrations(pool, 3, random.Random(0))) == 3
    with pytest.raises(ValueError, match="labels"):
        draw_demonstrations(pool, 2, random.Random(0), [1])
    with pytest.raises(ValueError, match="examples of label 1"):
        draw_demonstrations(pool, 11, random.Random(0), [1] * 11)
    for k in range(9):
        labels = balanced_labels(k, random.Random(k))
        assert len(labels) == k and abs(labels.count(1) - labels.count(0)) <= 1


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_scoring_from_a_cached_prefix_equals_scoring_the_whole_prompt(positions: str) -> None:
    model = tiny_gpt(positions)
    prefix, queries, label_ids = [5, 6, 7, 8], [[9, 10, 11], [12, 13], [14, 15, 16, 17, 18]], torch.tensor([3, 4])
    cached = score_with_prefix(model, prefix, queries, label_ids, batch_size=2)
    with torch.no_grad():
        direct = torch.cat([score_label_words(model(torch.tensor([prefix + q]))[:, -1], label_ids) for q in queries])
    torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)
    no_prefix = score_with_prefix(model, [], queries, label_ids)
    with torch.no_grad():
        alone = torch.cat([score_label_words(model(torch.tensor([q]))[:, -1], label_ids) for q in queries])
    torch.testing.assert_close(no_prefix, alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="query_ids"):
        score_with_prefix(model, prefix, [], label_ids)
    with pytest.raises(ValueError, match=r"must be in \[0, vocab_size=30\), got \[30\]"):  # checked once, up front
        score_with_prefix(model, prefix, [[1, 2], [30]], label_ids)


def test_expand_cache_repeats_one_sequence() -> None:
    model = tiny_gpt()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), cache=cache)
    expanded = expand_cache(cache, 4)
    assert expanded.length == 3 and expanded.layers[0][0].shape[0] == 4
    with pytest.raises(ValueError, match="filled"):
        expand_cache(model.new_cache(), 2)


def test_chatml_matches_the_format_smollm2_uses() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert chatml(messages, add_generation_prompt=True) == expected
    with pytest.raises(ValueError, match="role"):
        chatml([{"role": "bot", "content": "x"}])


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_forward_from_embeddings_equals_the_model(positions: str) -> None:
    model = tiny_gpt(positions)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_embeddings(model.token_embedding(ids)), model(ids))
    with pytest.raises(ValueError, match="d_model"):
        model.forward_embeddings(torch.zeros(1, 3, 7))


def test_soft_prompt_gradients_reach_only_the_prefix() -> None:
    model = tiny_gpt()
    soft = SoftPromptModel(model, n_prompt=3, init_ids=[7, 8])
    assert [name for name, p in soft.named_parameters() if p.requires_grad] == ["prompt"]
    torch.testing.assert_close(soft.prompt[2], model.token_embedding.weight[7])  # init ids repeat to n_prompt
    ids, lengths, labels = torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2]), torch.tensor([1, 0])
    loss, _ = label_word_loss(soft(ids), lengths, labels, torch.tensor([10, 11]))
    loss.backward()
    assert soft.prompt.grad is not None and soft.prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="n_prompt"):
        SoftPromptModel(model, n_prompt=0)
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, T\)"):
        soft(torch.tensor([1, 2]))


def test_soft_prompt_learns_a_label() -> None:
    model = tiny_gpt()
    for parameter in model.parameters():  # larger weights than GPT-2's init: the prompt must matter at the end
        if parameter.dim() > 1:
            torch.nn.init.normal_(parameter, std=0.3)
    soft = SoftPromptModel(model, n_prompt=2, seed=1)
    ids, lengths = torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([3, 3])
    labels, label_ids = torch.tensor([1, 1]), torch.tensor([10, 11])
    optimizer = torch.optim.Adam([soft.prompt], lr=0.1)
    first = None
    for _ in range(40):
        loss, _ = label_word_loss(soft(ids), lengths, labels, label_ids)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first and loss.item() < math.log(2)


def test_last_token_logits_reads_each_rows_end() -> None:
    logits = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    torch.testing.assert_close(
        last_token_logits(logits, torch.tensor([3, 1])), torch.stack([logits[0, 2], logits[1, 0]])
    )
    with pytest.raises(ValueError, match="lengths"):
        last_token_logits(logits, torch.tensor([3]))


def test_label_word_loss_returns_tensors_without_reading_them() -> None:
    logits = torch.zeros(2, 3, 12)
    logits[0, 2, 11] = logits[1, 0, 10] = 5.0  # row 0 says label 1, row 1 label 0
    loss, accuracy = label_word_loss(logits, torch.tensor([3, 1]), torch.tensor([1, 1]), torch.tensor([10, 11]))
    assert loss.dim() == accuracy.dim() == 0 and accuracy.item() == 0.5


def test_calibration_removes_a_prompts_label_bias() -> None:
    biased = torch.tensor([[0.1, 0.5], [0.3, 0.35], [0.05, 0.6]]).log()  # every row leans positive
    content_free = torch.tensor([0.1, 0.4]).log()  # so does the content-free query
    calibrated = calibrate(biased, content_free)
    torch.testing.assert_close(calibrated.exp(), torch.tensor([[1.0, 1.25], [3.0, 0.875], [0.5, 1.5]]))
    assert calibrated.argmax(-1).tolist() == [1, 0, 1] and biased.argmax(-1).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="content_free"):
        calibrate(biased, torch.zeros(3))
