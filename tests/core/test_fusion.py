"""Chapter 7's fusion models: shapes, padding, cross-attention weights, learning, the captioner, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcourse.finetune import predict
from mmcourse.fusion import (
    VQA_MODELS,
    CaptionerConfig,
    FusionConfig,
    ImageCaptioner,
    LateFusionModel,
    LSTMCNNModel,
    caption_images,
)
from mmcourse.generation import beam_search

CONFIG = FusionConfig(vocab_size=20, n_answers=7, context_length=12, image_size=24, patch_size=8, d_model=16,
                      n_heads=2, n_layers=1, n_fusion_layers=1, d_ff=32, head_hidden=32)  # fmt: skip


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = VQA_MODELS[name](CONFIG)
    if isinstance(model, LSTMCNNModel):
        model = LSTMCNNModel(CONFIG, embedding_dim=8, conv_widths=(4, 8))
    return model.eval()


def batch(size: int = 4, length: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(size, 3, 24, 24, generator=generator)  # (B, 3, 24, 24)
    input_ids = torch.randint(4, 20, (size, length), generator=generator)  # (B, L): ids 0-3 are special
    lengths = torch.randint(2, length + 1, (size,), generator=generator)
    attention_mask = (torch.arange(length) < lengths[:, None]).long()  # (B, L), right-padded
    return images, input_ids.masked_fill(attention_mask == 0, 0), attention_mask


NAMES = list(VQA_MODELS)


@pytest.mark.parametrize("name", NAMES)
def test_logits_shape(name: str) -> None:
    images, input_ids, attention_mask = batch()
    assert build(name)(images, input_ids, attention_mask).shape == (4, CONFIG.n_answers)


@pytest.mark.parametrize("name", NAMES)
def test_padding_does_not_change_the_answer(name: str) -> None:
    model = build(name)
    images, input_ids, attention_mask = batch()
    longer_ids = F.pad(input_ids, (0, 4), value=0)  # four more pad tokens
    longer_mask = F.pad(attention_mask, (0, 4), value=0)
    with torch.no_grad():
        torch.testing.assert_close(model(images, longer_ids, longer_mask), model(images, input_ids, attention_mask))


def test_an_lstm_that_reads_the_pads_changes_its_answer() -> None:
    """What Keras does without mask_zero=True: the last state comes after the padding."""
    torch.manual_seed(0)
    model = LSTMCNNModel(CONFIG, embedding_dim=8, conv_widths=(4, 8), respect_padding=False).eval()
    images, input_ids, attention_mask = batch()
    with torch.no_grad():
        short = model(images, input_ids, attention_mask)
        long = model(images, F.pad(input_ids, (0, 4)), F.pad(attention_mask, (0, 4)))
    assert not torch.allclose(short, long, atol=1e-4)


def test_question_only_model_ignores_the_image_and_image_only_the_question() -> None:
    images, input_ids, attention_mask = batch()
    with torch.no_grad():
        question_only, image_only = build("question only"), build("image only")
        torch.testing.assert_close(question_only(images, input_ids, attention_mask),
                                   question_only(torch.rand_like(images), input_ids, attention_mask))  # fmt: skip
        other_ids = torch.randint(4, 20, input_ids.shape)
        torch.testing.assert_close(image_only(images, input_ids, attention_mask),
                                   image_only(images, other_ids, torch.ones_like(attention_mask)))  # fmt: skip
        fused = build("cross-attention fusion")
        assert not torch.allclose(fused(images, input_ids, attention_mask),
                                  fused(torch.rand_like(images), input_ids, attention_mask))  # fmt: skip


def test_cross_attention_weights_sum_to_one_over_the_patches() -> None:
    model = build("cross-attention fusion")
    images, input_ids, attention_mask = batch()
    with torch.no_grad():
        weights = model.cross_attention_weights(images, input_ids, attention_mask)
    assert weights.shape == (CONFIG.n_fusion_layers, 4, CONFIG.n_heads, 6, CONFIG.n_patches)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(weights.shape[:-1]))
    assert (weights >= 0).all()


def test_early_fusion_sequence_and_mask() -> None:
    model = build("early fusion")
    images, input_ids, attention_mask = batch()
    sequence, keep = model.embed(images, input_ids, attention_mask)
    assert sequence.shape == (4, 1 + 6 + CONFIG.n_patches, CONFIG.d_model)
    assert keep.shape == (4, 1, 1, 1 + 6 + CONFIG.n_patches)
    assert torch.equal(keep[:, 0, 0, 1:7], attention_mask.bool())  # the words' padding is masked …
    assert keep[:, 0, 0, 7:].all() and keep[:, 0, 0, 0].all()  # … the [CLS] and every patch are real
    difference = model.modality_embedding.weight[1] - model.modality_embedding.weight[0]
    patches = model.patch_embedding(images) + model.image_position
    torch.testing.assert_close(sequence[:, 7:] - patches, model.modality_embedding.weight[1].expand_as(patches))
    assert difference.abs().sum() > 0


def test_late_fusion_combinations() -> None:
    torch.manual_seed(0)
    text, image = torch.randn(3, 16), torch.randn(3, 16)
    for combine, width in (("concat", 32), ("product", 16), ("concat_product", 48)):
        fused = LateFusionModel(CONFIG, combine).fuse(text, image)
        assert fused.shape == (3, width)
    torch.testing.assert_close(LateFusionModel(CONFIG, "product").fuse(text, image), text * image)
    with pytest.raises(ValueError, match="combine"):
        LateFusionModel(CONFIG, "sum")


@pytest.mark.parametrize("name", NAMES)
def test_every_model_overfits_one_batch(name: str) -> None:
    model = build(name).train()
    images, input_ids, attention_mask = batch(size=8, seed=1)
    if name == "image only":  # it cannot read the question: give each image its own answer
        labels = torch.arange(8) % CONFIG.n_answers
    elif name == "question only":  # it cannot see the image: give each question its own answer
        labels = torch.arange(8) % CONFIG.n_answers
    else:
        labels = torch.randint(CONFIG.n_answers, (8,), generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(80):
        loss = F.cross_entropy(model(images, input_ids, attention_mask), labels)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first
    batches = [{"images": images, "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}]
    logits, _ = predict(model, batches)  # mmcourse.finetune.predict: the inputs by keyword
    assert torch.equal(logits.argmax(dim=-1), labels)


@pytest.mark.parametrize("name", NAMES)
def test_image_and_question_batches_must_match(name: str) -> None:
    images, input_ids, attention_mask = batch()
    with pytest.raises(ValueError, match="same batch size"):
        build(name)(images[:3], input_ids, attention_mask)


def test_other_bad_inputs_are_named() -> None:
    model = build("cross-attention fusion")
    images, input_ids, attention_mask = batch()
    with pytest.raises(ValueError, match="images must be"):
        model(images[:, :, :16], input_ids, attention_mask)
    with pytest.raises(TypeError, match="images must be a float tensor"):
        model(images.to(torch.uint8), input_ids, attention_mask)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(images, input_ids, attention_mask[:, :3])
    with pytest.raises(ValueError, match="context_length"):
        model(images, torch.ones(4, 13, dtype=torch.long), torch.ones(4, 13, dtype=torch.long))
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        model(images, input_ids.float(), attention_mask)
    with pytest.raises(ValueError, match="d_model"):
        FusionConfig(vocab_size=10, n_answers=3, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="patch_size"):
        FusionConfig(vocab_size=10, n_answers=3, image_size=24, patch_size=7)


# ---------------------------------------------------------------------------------------------------------------
# The captioner

CAPTIONER = CaptionerConfig(vocab_size=12, context_length=8, image_size=24, patch_size=8, d_model=16, n_heads=2,
                            n_encoder_layers=1, n_decoder_layers=1, d_ff=32)  # fmt: skip
BOS, EOS = 1, 2


def test_captioner_shapes_and_causality() -> None:
    torch.manual_seed(0)
    model = ImageCaptioner(CAPTIONER).eval()
    images = torch.rand(3, 3, 24, 24)
    tgt_ids = torch.randint(4, 12, (3, 6))
    with torch.no_grad():
        logits = model(images, tgt_ids)
        assert logits.shape == (3, 6, 12)
        changed = tgt_ids.clone()
        changed[:, 4:] = 5
        torch.testing.assert_close(model(images, changed)[:, :4], logits[:, :4])  # the future is not seen
        memory = model.encode(images)
        assert memory.shape == (3, model.n_memory, 16)
        torch.testing.assert_close(model.decode(tgt_ids, memory), logits)
        cross = model.cross_attention_weights(images, tgt_ids)
    assert cross.shape == (1, 3, 2, 6, model.n_memory)
    torch.testing.assert_close(cross.sum(-1), torch.ones(cross.shape[:-1]))


def test_captioner_learns_captions_and_decodes_them() -> None:
    torch.manual_seed(0)
    model = ImageCaptioner(CAPTIONER)
    images = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    captions = torch.tensor([[BOS, 4, 5, 6, EOS], [BOS, 7, 8, EOS, 0], [BOS, 9, 4, 10, EOS], [BOS, 11, EOS, 0, 0]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(120):
        logits = model(images, captions[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), captions[:, 1:].flatten(), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    greedy = caption_images(model, images, BOS, EOS, max_length=6)
    beam = caption_images(model, images, BOS, EOS, max_length=6, beam_size=3)
    targets = captions[:, 1:]
    assert torch.equal(greedy[:, : targets.size(1)], targets)
    assert torch.equal(beam[:, : targets.size(1)], targets)
    sequences, scores = beam_search(model, images, BOS, EOS, 6, beam_size=3,
                                    src_attention_mask=torch.ones(4, model.n_memory, dtype=torch.long))  # fmt: skip
    assert sequences.shape[:2] == (4, 3) and (scores[:, 0] >= scores[:, 1]).all()


def test_captioner_bad_input() -> None:
    model = ImageCaptioner(CAPTIONER)
    with pytest.raises(ValueError, match="images must be"):
        model(torch.rand(3, 3, 24, 24), torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="tgt_ids"):
        model(torch.rand(2, 3, 24, 24), torch.ones(2, 9, dtype=torch.long))
    with pytest.raises(TypeError, match="tgt_ids must be an int64 or int32 tensor"):
        model(torch.rand(2, 3, 24, 24), torch.ones(2, 4))
    with pytest.raises(ValueError, match="src_attention_mask"):
        model.encode(torch.rand(2, 3, 24, 24), torch.ones(2, 3, dtype=torch.long))
    images = torch.rand(2, 3, 24, 24)
    with pytest.raises(ValueError, match="beam_size"):
        caption_images(model, images, BOS, EOS, 5, beam_size=0)
    for bad in (CAPTIONER.vocab_size, -1):  # checked once, before generation, not at every token
        with pytest.raises(ValueError, match=r"bos_id must be an id in \[0, vocab_size=12\)"):
            caption_images(model, images, bad, EOS, 5)
    with pytest.raises(ValueError, match="eos_id"):
        caption_images(model, images, BOS, CAPTIONER.vocab_size, 5)
    with pytest.raises(TypeError, match="eos_id"):
        caption_images(model, images, BOS, 2.0, 5)
    with pytest.raises(ValueError, match="max_length=9 .* context_length=8"):
        caption_images(model, images, BOS, EOS, 9)
    with pytest.raises(TypeError, match="ImageCaptioner"):
        caption_images(torch.nn.Linear(2, 2), images, BOS, EOS, 5)
    with pytest.raises(ValueError, match="pad_id"):
        CaptionerConfig(vocab_size=5, pad_id=5)
    with pytest.raises(TypeError, match="n_encoder_layers"):
        CaptionerConfig(vocab_size=5, n_encoder_layers=1.0)
    with pytest.raises(ValueError, match="d_model"):
        CaptionerConfig(vocab_size=5, d_model=30, n_heads=4)
