"""Chapter 9's vision-language model: placeholders and batches, connectors, training stages, answering, attention."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmcourse.gpt import GPT, GPTConfig
from mmcourse.lora import is_lora_parameter
from mmcourse.train import IGNORE_INDEX, TrainConfig, train
from mmcourse.vision import CNNConfig, ConvNet, VisionTransformer, ViTConfig
from mmcourse.vlm import (
    IMAGE_TOKEN,
    Resampler,
    VisionLanguageModel,
    VLMConfig,
    check_word_labels,
    expand_image_placeholder,
    generate_answer,
    inverse_pixel_shuffle,
    patch_features,
    pixel_shuffle,
    prepare_stage,
    vlm_batch,
    vlm_loss,
    vlm_prompt,
    word_alignment_loss,
)

VOCAB = 40
IMAGE = VOCAB  # the placeholder's id, one past the vocabulary: it is never embedded
VIT = ViTConfig(image_size=16, patch_size=4, channels=3, d_model=16, n_heads=2, n_layers=1, d_ff=32)  # 4 x 4 patches
CNN = CNNConfig(image_size=16, channels=3, widths=(8, 16), out_features=8)  # a 4 x 4 feature map, 16 wide
IMAGE_TOKENS = {"linear": 16, "mlp": 16, "pixel_shuffle": 4, "resampler": 3, "words": 32}  # N for each connector
WORD_IDS = ((11, 12, 13), (20, 21))  # the words connector's two slots: 16 patches x 2 slots = 32 image tokens


def tiny_vlm(connector: str = "mlp", tower: str = "vit", seed: int = 0) -> VisionLanguageModel:
    torch.manual_seed(seed)
    vision_tower = VisionTransformer(VIT) if tower == "vit" else ConvNet(CNN)
    llm = GPT(GPTConfig.llama_style(VOCAB, context_length=64, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2))
    with torch.no_grad():  # at GPT's init (std 0.02) the logits hardly move: noise gives them a trained model's scale
        for parameter in llm.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    word_ids = WORD_IDS if connector == "words" else ()
    config = VLMConfig(image_token_id=IMAGE, connector=connector, n_queries=3, resampler_heads=2, word_ids=word_ids)
    return VisionLanguageModel(vision_tower, llm, config)


def images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def qa_batch(model: VisionLanguageModel, batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Prompts [BOS, question word, <image>, end] of two lengths and a two-token answer that depends on the row."""
    prompts = [[1, 5 + row % 3, IMAGE, 2] if row % 2 else [1, IMAGE, 5 + row % 3, 6, 2] for row in range(batch)]
    answers = [[10 + row, 3] for row in range(batch)]  # answer word, end of turn
    return vlm_batch(images(batch, seed), prompts, answers, IMAGE, model.n_image_tokens)


# ---------------------------------------------------------------------------------------------------------------
# Placeholders, batches and the answer-only loss
# ---------------------------------------------------------------------------------------------------------------


def test_one_placeholder_becomes_n_in_its_place() -> None:
    assert expand_image_placeholder([5, 6, IMAGE, 7], IMAGE, 3) == [5, 6, IMAGE, IMAGE, IMAGE, 7]
    assert expand_image_placeholder(torch.tensor([IMAGE, 7]), IMAGE, 2) == [IMAGE, IMAGE, 7]
    expected = f"<|im_start|>user\n{IMAGE_TOKEN}\nwhat colour?<|im_end|>\n<|im_start|>assistant\n"
    assert vlm_prompt("what colour?") == expected
    assert vlm_prompt("q", system="s").startswith("<|im_start|>system\ns<|im_end|>\n<|im_start|>user\n<image>\nq")


def test_a_batch_expands_pads_masks_and_counts_positions() -> None:
    pictures = images(2)
    batch = vlm_batch(pictures, [[5, IMAGE, 6], [7, 8, IMAGE]], [[9, 10], [11]], IMAGE, n_image_tokens=2, pad_id=0)
    assert batch["images"] is pictures
    I, X = IMAGE, IGNORE_INDEX
    # row 0: 5 <image> <image> 6 | 9 10; row 1: 7 8 <image> <image> | 11, padded by one
    assert batch["input_ids"].tolist() == [[5, I, I, 6, 9], [7, 8, I, I, 0]]
    assert batch["targets"].tolist() == [[X, X, X, 9, 10], [X, X, X, 11, X]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 0]]  # image tokens count like words


def test_the_loss_reads_the_answer_tokens_only() -> None:
    model = tiny_vlm()
    batch = qa_batch(model)
    targets, input_ids = batch["targets"], batch["input_ids"]
    scored = targets != IGNORE_INDEX  # (batch, T)
    assert scored.sum(dim=1).tolist() == [2, 2, 2, 2]  # the answer word and the end of turn, each row
    assert not scored[input_ids == IMAGE].any(), "no image position predicts a token that is scored"
    for row in range(4):
        assert targets[row][scored[row]].tolist() == [10 + row, 3]
        last_prompt = scored[row].nonzero()[0, 0]  # the prompt's last token predicts the answer's first
        assert input_ids[row, last_prompt + 1] == 10 + row
    logits = model(batch["images"], input_ids)  # (batch, T, vocab)
    torch.testing.assert_close(vlm_loss(model, batch), F.cross_entropy(logits[scored], targets[scored]))


def test_right_padding_leaves_the_real_tokens_logits_unchanged() -> None:
    model = tiny_vlm().eval()
    batch = qa_batch(model, batch=2)  # row 1 is shorter, padded at the end
    length = int(batch["attention_mask"][1].sum())
    with torch.no_grad():
        padded = model(batch["images"], batch["input_ids"])[1, :length]
        alone = model(batch["images"][1:], batch["input_ids"][1:, :length])[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Connectors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("connector", list(IMAGE_TOKENS))
def test_every_connector_puts_its_image_tokens_at_the_placeholders_in_order(connector: str) -> None:
    model = tiny_vlm(connector, tower="cnn" if connector == "linear" else "vit")
    assert model.n_image_tokens == IMAGE_TOKENS[connector]
    batch = qa_batch(model, batch=2)
    image_tokens = model.encode_images(batch["images"])  # (batch, N, d_model)
    assert image_tokens.shape == (2, IMAGE_TOKENS[connector], 32)
    embedded = model.embed(batch["images"], batch["input_ids"])  # (batch, T, d_model)
    is_image = batch["input_ids"] == IMAGE
    for row in range(2):
        torch.testing.assert_close(embedded[row][is_image[row]], image_tokens[row])  # token k at placeholder k
        text_ids = batch["input_ids"][row][~is_image[row]]
        torch.testing.assert_close(embedded[row][~is_image[row]], model.llm.token_embedding(text_ids))


def test_pixel_shuffle_is_a_permutation_that_its_inverse_undoes() -> None:
    features = torch.arange(2 * 16 * 3, dtype=torch.float32).view(2, 16, 3)  # (batch, 4 x 4 patches, d = 3)
    tokens = pixel_shuffle(features, 2)  # (batch, 2 x 2 tokens, 4 · 3)
    assert tokens.shape == (2, 4, 12)
    assert torch.equal(tokens.flatten().sort().values, features.flatten()), "every value once: a permutation"
    assert torch.equal(inverse_pixel_shuffle(tokens, 2), features)
    assert torch.equal(tokens[0, 0], features[0, [0, 1, 4, 5]].flatten()), "token 0: the top-left 2 x 2 patches"
    # torch's pixel_unshuffle is the same space-to-depth, its channels ordered (d, i, j) instead of (i, j, d)
    grid = features.transpose(1, 2).reshape(2, 3, 4, 4)  # (batch, d, side, side)
    torch_tokens = F.pixel_unshuffle(grid, 2).view(2, 3, 2, 2, 2, 2)  # (batch, d, i, j, row, col)
    torch.testing.assert_close(tokens.view(2, 2, 2, 2, 2, 3), torch_tokens.permute(0, 4, 5, 2, 3, 1))
    with pytest.raises(ValueError, match="square grid"):
        pixel_shuffle(torch.zeros(1, 12, 3), 2)
    with pytest.raises(ValueError, match="divisible by factor=3"):
        pixel_shuffle(features, 3)


def test_the_resampler_gives_n_queries_tokens_whatever_the_patch_count() -> None:
    torch.manual_seed(0)
    resampler = Resampler(width=16, d_model=32, n_queries=5, n_heads=2, n_layers=2)
    for patches in (4, 16, 49):
        assert resampler(torch.randn(2, patches, 16)).shape == (2, 5, 32)
    features = torch.randn(2, 16, 16)
    shuffled = features[:, torch.randperm(16)]  # cross-attention ignores the patches' order: positions must be in them
    torch.testing.assert_close(resampler(shuffled), resampler(features), atol=1e-5, rtol=1e-5)


def test_the_words_connector_writes_mixtures_of_its_slots_word_embeddings() -> None:
    model = tiny_vlm("words")
    table = model.llm.token_embedding.weight
    features = torch.randn(2, 16, 16)  # (batch, patches, width)
    tokens = model.connector(features).view(2, 16, 2, 32)  # (batch, patch, slot, d_model)
    for slot, ids in enumerate(WORD_IDS):
        weights = model.connector.word_logits(features)[slot].softmax(-1)  # (batch, patch, n_words)
        torch.testing.assert_close(tokens[:, :, slot], weights @ table[list(ids)])
    buffers = dict(model.connector.named_buffers())
    assert set(buffers) == {"words_0", "words_1"} and not any(p is table for p in model.connector.parameters())
    assert buffers["words_0"].data_ptr() != table.data_ptr(), "a copy: the LLM's table is never trained through it"


def test_word_alignment_trains_the_connector_without_the_llm() -> None:
    model = tiny_vlm("words")
    prepare_stage(model, 1)
    pictures = images(4)
    patch = torch.arange(16)
    labels = torch.stack([patch % 3, patch // 8], dim=-1).expand(4, 16, 2).contiguous()  # (batch, P, slots)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(200):
        loss = word_alignment_loss(model, pictures, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::20]
    assert all(p.grad is None for p in model.llm.parameters()), "the LLM never ran"
    with torch.no_grad():
        logits = model.connector.word_logits(patch_features(model.vision_tower, pictures))
    predicted = torch.stack([slot.argmax(-1) for slot in logits], dim=-1)
    assert torch.equal(predicted, labels), "one batch learned by heart"
    with pytest.raises(ValueError, match=r"word_labels must be \(batch, P, slots\) = \(4, 16, 2\)"):
        word_alignment_loss(model, pictures, labels[..., :1])
    check_word_labels(model, labels)
    with pytest.raises(ValueError, match="must index each slot's words"):
        check_word_labels(model, labels.masked_fill(labels == 1, 2))  # slot 1 has two words
    with pytest.raises(TypeError, match="int64 tensor of word indices"):
        check_word_labels(model, labels.float())
    with pytest.raises(ValueError, match=r"\(S, P, slots=2\)"):
        check_word_labels(model, labels[..., :1])
    with pytest.raises(TypeError, match="with the 'words' connector"):
        word_alignment_loss(tiny_vlm("mlp"), pictures, labels)


def test_word_ids_are_checked_where_the_config_is_made() -> None:
    with pytest.raises(ValueError, match="word_ids must be given for connector='words' and only for it"):
        VLMConfig(image_token_id=IMAGE, connector="words")
    with pytest.raises(ValueError, match="word_ids must be given for connector='words' and only for it"):
        VLMConfig(image_token_id=IMAGE, connector="mlp", word_ids=WORD_IDS)
    with pytest.raises(ValueError, match=r"word_ids\[1\] must hold at least two distinct token ids"):
        VLMConfig(image_token_id=IMAGE, connector="words", word_ids=((1, 2), (3, 3)))
    with pytest.raises(TypeError, match="word_ids must be a tuple of tuples"):
        VLMConfig(image_token_id=IMAGE, connector="words", word_ids=[[1, 2]])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"word_ids\[0\] must be an int"):
        VLMConfig(image_token_id=IMAGE, connector="words", word_ids=((1, "red"),))  # type: ignore[arg-type]
    llm = tiny_vlm().llm
    with pytest.raises(ValueError, match=r"token ids of the LLM's vocabulary \[0, 40\)"):
        VisionLanguageModel(VisionTransformer(VIT), llm, VLMConfig(IMAGE, "words", word_ids=((1, VOCAB),)))


# ---------------------------------------------------------------------------------------------------------------
# Training stages
# ---------------------------------------------------------------------------------------------------------------


def test_stage_1_trains_the_connector_alone_through_the_frozen_llm() -> None:
    model = tiny_vlm("mlp", tower="cnn")
    trainable, total = prepare_stage(model, 1)
    named = dict(model.named_parameters())
    assert {name for name, p in named.items() if p.requires_grad} == {n for n in named if n.startswith("connector.")}
    assert trainable == sum(p.numel() for p in model.connector.parameters()) and total > trainable
    running_mean = model.vision_tower.features[1].running_mean.clone()
    model.train()
    assert not model.vision_tower.training and model.llm.training
    vlm_loss(model, qa_batch(model)).backward()
    assert torch.equal(model.vision_tower.features[1].running_mean, running_mean), "the CNN's batch norm stays put"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.connector.parameters())
    assert all(p.grad is None for p in [*model.llm.parameters(), *model.vision_tower.parameters()])


def test_stage_2_trains_the_connector_and_the_llms_lora_only() -> None:
    model = tiny_vlm("pixel_shuffle")
    prepare_stage(model, 1)
    counts = prepare_stage(model, 2, rank=2, alpha=4.0)
    assert prepare_stage(model, 2) == counts, "a second call adds no adapters"
    learning = {name for name, p in model.named_parameters() if p.requires_grad}
    assert learning == {name for name, _ in model.named_parameters() if name.startswith("connector.")
                        or (name.startswith("llm.") and is_lora_parameter(name))}  # fmt: skip
    assert sum(name.endswith("lora_B") for name in learning) == 4  # q_proj and v_proj of two layers
    vlm_loss(model, qa_batch(model)).backward()
    for name, parameter in model.named_parameters():
        if name.endswith("lora_A"):  # B starts at 0, so A's first gradient, Bᵀ (…), is 0 too
            assert parameter.grad is not None and not parameter.grad.any(), name
        elif name in learning:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_the_vlm_overfits_one_batch_in_two_stages_and_then_answers_it() -> None:
    model = tiny_vlm("mlp")
    batch = qa_batch(model)
    config = TrainConfig(steps=30, learning_rate=1e-2, progress=False)
    prepare_stage(model, 1)
    history = train(model, vlm_loss, [batch], config)  # the connector alone
    assert history.losses[-1] < 0.5 * history.losses[0], history.losses[::10]
    prepare_stage(model, 2, rank=4, alpha=8.0)
    history = train(model, vlm_loss, [batch], config, history=history)  # the connector and LoRA
    assert history.losses[-1] < 0.1 * history.losses[0], history.losses[::10]
    for row in range(4):  # the prompt is the input up to the first scored position
        prompt_length = int((batch["targets"][row] != IGNORE_INDEX).nonzero()[0, 0]) + 1
        prompt = batch["input_ids"][row : row + 1, :prompt_length]
        answer = generate_answer(model, batch["images"][row : row + 1], prompt, max_new_tokens=4, eos_id=3)
        assert answer.tolist() == [[10 + row, 3]]


# ---------------------------------------------------------------------------------------------------------------
# Answering and attention
# ---------------------------------------------------------------------------------------------------------------


def test_generation_gives_the_same_tokens_with_and_without_the_cache() -> None:
    model = tiny_vlm("resampler")
    pictures = images(2, seed=1)
    prompt = torch.tensor([[1, 5] + [IMAGE] * 3 + [6, 2], [1, 7] + [IMAGE] * 3 + [8, 2]])  # (2, 7), one length
    cached = generate_answer(model, pictures, prompt, max_new_tokens=6)
    assert cached.shape == (2, 6)
    assert torch.equal(cached, generate_answer(model, pictures, prompt, max_new_tokens=6, use_cache=False))
    with torch.no_grad():
        assert torch.equal(cached[:, 0], model(pictures, prompt)[:, -1].argmax(dim=-1))
    for row in range(2):  # a batch of equal-length prompts answers each as it would alone
        alone = generate_answer(model, pictures[row : row + 1], prompt[row : row + 1], max_new_tokens=6)
        assert torch.equal(alone, cached[row : row + 1])
    eos = int(cached[0, 0])
    stopped = generate_answer(model, pictures[:1], prompt[:1], max_new_tokens=6, eos_id=eos)
    assert stopped.tolist() == [[eos]]
    assert generate_answer(model, pictures, prompt, max_new_tokens=0).shape == (2, 0)


def test_image_attention_is_causal_and_picks_the_image_columns() -> None:
    model = tiny_vlm("pixel_shuffle").eval()
    batch = qa_batch(model, batch=2)
    pictures, input_ids = batch["images"], batch["input_ids"][:1]  # row 0: [1, <image> x 4, 5, 6, 2, answer]
    with torch.no_grad():
        weights = model.attention_weights(pictures[:1], input_ids)  # (n_layers, 1, n_heads, T, T)
        to_image = model.image_attention(pictures[:1], input_ids)  # (n_layers, 1, n_heads, T, N)
    T = input_ids.size(1)
    assert weights.shape == (2, 1, 4, T, T) and to_image.shape == (2, 1, 4, T, 4)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, 1, 4, T))
    torch.testing.assert_close(to_image, weights[..., 1:5])  # the placeholders stand at positions 1 … 4
    assert torch.equal(to_image[..., 0, :], torch.zeros(2, 1, 4, 4)), "BOS comes before the image: it cannot see it"
    assert (to_image[..., 5:, :].sum(dim=-1) > 0).all(), "every token after the image attends to it"


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_bad_input_raises_errors_that_say_what_was_expected() -> None:
    model = tiny_vlm("mlp")
    batch = qa_batch(model, batch=2)
    with pytest.raises(ValueError, match=r"one per prompt, .* got images \(3, 3, 16, 16\), 2 prompts"):
        vlm_batch(images(3), [[IMAGE], [IMAGE]], [[4], [5]], IMAGE, 16)
    with pytest.raises(ValueError, match=r"expected images \(batch, C, H, W\)"):
        vlm_batch(torch.rand(3, 16, 16), [[IMAGE]], [[4]], IMAGE, 16)
    with pytest.raises(ValueError, match=r"answers\[0\] holds the image placeholder"):
        vlm_batch(images(1), [[IMAGE]], [[4, IMAGE]], IMAGE, 16)
    with pytest.raises(ValueError, match=r"prompts\[1\] must hold exactly one image placeholder \(id 40\), found 0"):
        vlm_batch(images(2), [[IMAGE, 4], [4, 5]], [[4], [5]], IMAGE, 16)
    with pytest.raises(ValueError, match="exactly one image placeholder .* found 2"):
        expand_image_placeholder([IMAGE, 4, IMAGE], IMAGE, 16)
    with pytest.raises(ValueError, match=r"images must be \(batch, 3, 16, 16\), got shape \(2, 3, 32, 32\)"):
        model(torch.rand(2, 3, 32, 32), batch["input_ids"])
    with pytest.raises(ValueError, match="one image per row of input_ids: 2 rows, got 3 images"):
        model(images(3), batch["input_ids"])
    with pytest.raises(ValueError, match="n_image_tokens=16 image placeholders"):
        generate_answer(model, images(1), torch.tensor([[1, IMAGE, 2]]), max_new_tokens=2)  # not expanded
    with pytest.raises(ValueError, match="pad_id=40 must differ from image_token_id"):
        vlm_batch(images(1), [[IMAGE]], [[4]], IMAGE, 16, pad_id=IMAGE)
    with pytest.raises(TypeError, match="images must be a float tensor"):
        vlm_batch(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), [[IMAGE]], [[4]], IMAGE, 16)
    with pytest.raises(TypeError, match="images must be a float tensor"):
        model(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), batch["input_ids"])
    with pytest.raises(TypeError, match=r"prompts\[0\] must be a sequence of token ids"):
        vlm_batch(images(1), ["<image> hi"], [[4]], IMAGE, 16)
    with pytest.raises(TypeError, match=r"answers\[0\] must hold token ids"):
        vlm_batch(images(1), [[IMAGE]], [[4.0]], IMAGE, 16)
    with pytest.raises(TypeError, match="input_ids must be an int64 or int32 tensor"):
        model(images(2), batch["input_ids"].float())
    with pytest.raises(ValueError, match="connector='conv' is not one of"):
        VLMConfig(image_token_id=IMAGE, connector="conv")
    with pytest.raises(TypeError, match="image_token_id must be an int"):
        VLMConfig(image_token_id="<image>")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_queries must be a positive int"):
        VLMConfig(image_token_id=IMAGE, n_queries=0)
    llm = model.llm
    with pytest.raises(ValueError, match="pixel_shuffle_factor=3 must divide the image tower's grid side 4"):
        VisionLanguageModel(VisionTransformer(VIT), llm, VLMConfig(IMAGE, "pixel_shuffle", pixel_shuffle_factor=3))
    with pytest.raises(ValueError, match="resampler_heads=3 must divide the image tower's width 16"):
        VisionLanguageModel(VisionTransformer(VIT), llm, VLMConfig(IMAGE, "resampler", resampler_heads=3))
    with pytest.raises(TypeError, match="vision_tower must be a mmcourse.vision VisionTransformer or ConvNet"):
        VisionLanguageModel(nn.Linear(3, 3), llm, VLMConfig(IMAGE))
    with pytest.raises(TypeError, match="llm must be a mmcourse.gpt.GPT"):
        VisionLanguageModel(VisionTransformer(VIT), nn.Linear(3, 3), VLMConfig(IMAGE))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stage must be 1 .* or 2"):
        prepare_stage(model, 3)
