"""Checkers for the chapter 7 exercises (multimodal fusion). Each prints a pass line or a hint; none raises."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mmcourse.exercises import CheckResult, Hint, expect, expect_close, expect_shape, run_check


def check_late_fuse(my_late_fuse: Callable[[Tensor, Tensor], Tensor]) -> CheckResult:
    """``my_late_fuse(text_vector, image_vector)``: (B, d), (B, d) → (B, 3d) = [t; v; t ⊙ v]."""

    def test() -> None:
        generator = torch.Generator().manual_seed(1)
        text_vector, image_vector = torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator)
        answer = my_late_fuse(text_vector, image_vector)
        if isinstance(answer, Tensor) and tuple(answer.shape) == (3, 10):
            raise Hint("concatenation alone gives (batch, 2d): append the element-wise product t * v as well.")
        if isinstance(answer, Tensor) and tuple(answer.shape) == (9, 5):
            raise Hint("concatenate along the feature dimension (dim=-1), not the batch dimension.")
        expect_shape(answer, (3, 15), "my_late_fuse(text (3, 5), image (3, 5))")
        expected = torch.cat([text_vector, image_vector, text_vector * image_vector], dim=-1)
        swapped = torch.cat([image_vector, text_vector, text_vector * image_vector], dim=-1)
        if torch.allclose(answer, swapped):
            raise Hint("put the text vector first, then the image vector, then their product.")
        outer = answer[:, 10:]
        if torch.allclose(outer, text_vector + image_vector):
            raise Hint("the third part is the element-wise *product* t * v, not the sum.")
        expect_close(answer, expected, "the parts are [text, image, text * image], each of width d.")

    return run_check("late fusion: concatenation and product", test)


def check_cross_attention(my_cross_attention: Callable[..., tuple[Tensor, Tensor]]) -> CheckResult:
    """``my_cross_attention(words, patches, w_q, w_k, w_v)`` → (output (B, L, d), weights (B, L, P))."""

    def test() -> None:
        generator = torch.Generator().manual_seed(2)
        words, patches = torch.randn(2, 3, 8, generator=generator), torch.randn(2, 5, 8, generator=generator)
        w_q, w_k, w_v = (torch.randn(8, 8, generator=generator) / 2 for _ in range(3))
        result = my_cross_attention(words, patches, w_q, w_k, w_v)
        expect(isinstance(result, tuple) and len(result) == 2, "return a pair: (output, weights).")
        output, weights = result
        q, k, v = words @ w_q, patches @ w_k, patches @ w_v
        scores = q @ k.transpose(-2, -1)  # (2, 3, 5)
        expected_weights = (scores / math.sqrt(8)).softmax(dim=-1)
        if isinstance(weights, Tensor) and tuple(weights.shape) == (2, 5, 3):
            raise Hint("the queries come from the words: weights are (batch, L words, P patches), one row per word.")
        expect_shape(weights, (2, 3, 5), "weights")
        if torch.allclose(weights, scores.softmax(dim=-1), atol=1e-5):
            raise Hint("divide the dot products by sqrt(d) before the softmax.")
        if torch.allclose(weights, (scores / math.sqrt(8)).softmax(dim=-2), atol=1e-5):
            raise Hint("take the softmax over the patches (the last dimension): each word's weights sum to 1.")
        expect_close(weights, expected_weights, "weights = softmax over patches of (words W_q)(patches W_k)ᵀ / √d.",
                     "weights")  # fmt: skip
        expect_shape(output, (2, 3, 8), "output")
        if torch.allclose(output, expected_weights @ patches, atol=1e-5):
            raise Hint("mix the values (patches @ w_v), not the raw patches.")
        expect_close(output, expected_weights @ v, "output = weights @ (patches W_v).", "output")

    return run_check("cross-attention", test)


def check_last_real_state(my_last_real_state: Callable[[Tensor, Tensor], Tensor]) -> CheckResult:
    """``my_last_real_state(hidden_states, attention_mask)``: (B, L, d), (B, L) → (B, d) at each last real token."""

    def test() -> None:
        generator = torch.Generator().manual_seed(3)
        hidden_states = torch.randn(4, 6, 3, generator=generator)
        lengths = torch.tensor([6, 2, 4, 1])
        attention_mask = (torch.arange(6) < lengths[:, None]).long()  # (4, 6), right-padded
        answer = my_last_real_state(hidden_states, attention_mask)
        expect_shape(answer, (4, 3), "my_last_real_state(hidden_states (4, 6, 3), attention_mask (4, 6))")
        if torch.allclose(answer, hidden_states[:, -1]):
            raise Hint("that is the state at the last *position*, after the padding — what an LSTM run over the pads "
                       "returns. Use the mask to find each row's last real token.")  # fmt: skip
        rows = torch.arange(4)
        if torch.allclose(answer, hidden_states[rows, lengths.clamp(max=5)]):
            raise Hint("off by one: a row with n real tokens has its last one at index n - 1.")
        expect_close(answer, hidden_states[rows, lengths - 1], "row b's answer is hidden_states[b, n_b - 1].")

    return run_check("the state after the last word", test)


def _is_share(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def check_shuffled_images(real_accuracy: float, shuffled_accuracy: float, question_only_accuracy: float) -> CheckResult:
    """A fusion model's accuracy with its own images, with shuffled images, and the question-only accuracy."""

    def test() -> None:
        if real_accuracy is None or shuffled_accuracy is None or question_only_accuracy is None:
            raise NotImplementedError  # still the placeholders: not answered yet
        values = (real_accuracy, shuffled_accuracy, question_only_accuracy)
        expect(all(_is_share(value) for value in values), "store the three accuracies as floats in [0, 1].")
        expect(real_accuracy != shuffled_accuracy,
               "the two accuracies are identical: shuffle the images only, not the questions with them. (A model "
               "trained for a few seconds, as in the fast profile, may not look at the image yet.)")  # fmt: skip
        expect(shuffled_accuracy < real_accuracy,
               "with another scene's image the model should do worse than with its own.")  # fmt: skip
        expect(shuffled_accuracy < question_only_accuracy + 0.25,
               "with shuffled images the model should fall to about what the question alone allows; is "
               "question_only_accuracy the question-only model's overall test accuracy?")  # fmt: skip

    return run_check("does the model look?", test)


def check_beam_experiment(beam_sizes: Sequence[int], exact_matches: Sequence[float]) -> CheckResult:
    """Exact-match rates of the captioner for increasing beam sizes, starting with greedy (1)."""

    def test() -> None:
        if beam_sizes is None or exact_matches is None:
            raise NotImplementedError  # still the placeholders: not answered yet
        expect(len(beam_sizes) == len(exact_matches) >= 3, "measure at least three beam sizes, one rate each.")
        expect(all(isinstance(size, int) and size >= 1 for size in beam_sizes), "beam sizes are positive ints.")
        expect(list(beam_sizes) == sorted(set(beam_sizes)), "list distinct beam sizes in increasing order.")
        expect(beam_sizes[0] == 1, "start from beam size 1 (greedy decoding), the baseline the others are compared to.")
        expect(all(_is_share(value) for value in exact_matches), "exact-match rates are floats in [0, 1].")

    return run_check("how many beams?", test)
