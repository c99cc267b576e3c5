import math

import pytest
import torch
import torch.nn.functional as F

from mmcourse.clip import (
    CLIP,
    CLIPConfig,
    LockedTextTower,
    LogitScale,
    TextEncoder,
    TextEncoderConfig,
    check_normalised,
    check_text_ids,
    clip_logits,
    clip_loss,
    contrastive_loss,
    end_of_text_pool,
    hf_clip_embeddings,
    in_batch_accuracy,
    prompt_ensemble,
    recall_at_k,
    zero_shot_classify,
)
from mmcourse.vision import VisionTransformer, ViTConfig


@pytest.fixture(scope="module", autouse=True)
def optimiser_ready() -> None:
    """Build one optimiser up front: torch's first one takes about a second (a lazy import), so no test pays it."""
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def unit_rows(rows: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, width, generator=generator), dim=-1)  # (rows, width)


def reference_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: float) -> float:
    """The loss written out with loops: -log softmax of each matching pair, both ways, averaged."""
    size = len(image_embeds)
    similarity = [[scale * float(image_embeds[i] @ text_embeds[j]) for j in range(size)] for i in range(size)]
    image_terms = [math.log(sum(math.exp(value) for value in similarity[i])) - similarity[i][i] for i in range(size)]
    text_terms = [
        math.log(sum(math.exp(similarity[i][j]) for i in range(size))) - similarity[j][j] for j in range(size)
    ]
    return (sum(image_terms) + sum(text_terms)) / (2 * size)


# ---------------------------------------------------------------------------------------------------------------
# The temperature
# ---------------------------------------------------------------------------------------------------------------


def test_logit_scale_starts_at_one_over_0_07() -> None:
    logit_scale = LogitScale()
    assert logit_scale.log_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert [name for name, _ in logit_scale.named_parameters()] == ["log_scale"]


def test_clamp_holds_after_an_optimiser_step_pushes_past_100() -> None:
    logit_scale = LogitScale()
    optimiser = torch.optim.SGD(logit_scale.parameters(), lr=10.0)
    for _ in range(3):
        optimiser.zero_grad()
        (-logit_scale()).backward()  # a loss that wants an ever larger scale
        optimiser.step()
    assert logit_scale.log_scale.item() > math.log(100), "the step went past the cap"
    assert logit_scale().item() == pytest.approx(100.0)
    assert logit_scale.log_scale.item() == pytest.approx(math.log(100)), "clamped in place"


def test_logit_scale_gets_a_gradient_below_the_cap() -> None:
    logit_scale = LogitScale()
    clip_loss(unit_rows(4, 8, 0), unit_rows(4, 8, 1), logit_scale()).backward()
    assert logit_scale.log_scale.grad is not None and logit_scale.log_scale.grad.abs() > 0


@pytest.mark.parametrize(
    ("arguments", "field"), [({"init_temperature": 0.0}, "init_temperature"), ({"max_scale": 5.0}, "max_scale")]
)
def test_logit_scale_errors_name_the_argument(arguments: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LogitScale(**arguments)


# ---------------------------------------------------------------------------------------------------------------
# Logits and loss
# ---------------------------------------------------------------------------------------------------------------


def test_logits_are_scaled_cosines_and_transposes() -> None:
    image_embeds, text_embeds = unit_rows(3, 8, 0), unit_rows(5, 8, 1)  # (3, 8), (5, 8)
    logits_per_image, logits_per_text = clip_logits(image_embeds, text_embeds, 2.0)
    assert logits_per_image.shape == (3, 5) and logits_per_text.shape == (5, 3)
    torch.testing.assert_close(
        logits_per_image, 2.0 * F.cosine_similarity(image_embeds[:, None], text_embeds[None], dim=-1)
    )
    torch.testing.assert_close(logits_per_text, logits_per_image.T)


@pytest.mark.parametrize("batch", [2, 8, 32])
def test_uniform_logits_give_log_batch(batch: int) -> None:
    same = F.normalize(torch.ones(batch, 16), dim=-1)  # (batch, 16): every image and text the same
    torch.testing.assert_close(clip_loss(same, same, 1 / 0.07), torch.tensor(math.log(batch)))


def test_aligned_separated_embeddings_drive_the_loss_to_zero() -> None:
    embeds = torch.eye(8)  # (8, 8): pair i alike, every other pair orthogonal
    assert clip_loss(embeds, embeds, 100.0).item() < 1e-6
    assert clip_loss(embeds, embeds, 1.0).item() > clip_loss(embeds, embeds, 10.0).item(), "larger scale, sharper"


def test_swapping_images_and_texts_gives_the_same_loss() -> None:
    image_embeds, text_embeds = unit_rows(6, 12, 0), unit_rows(6, 12, 1)
    torch.testing.assert_close(clip_loss(image_embeds, text_embeds, 14.0), clip_loss(text_embeds, image_embeds, 14.0))


def test_loss_equals_the_formula_written_out() -> None:
    image_embeds, text_embeds = unit_rows(5, 7, 2), unit_rows(5, 7, 3)
    assert clip_loss(image_embeds, text_embeds, 3.0).item() == pytest.approx(
        reference_loss(image_embeds, text_embeds, 3.0)
    )


def test_gradients_flow_to_both_towers_and_the_temperature() -> None:
    image_tower, text_tower = torch.nn.Linear(10, 6), torch.nn.Linear(12, 6)
    logit_scale = LogitScale()
    images, texts = torch.randn(4, 10), torch.randn(4, 12)
    image_embeds = F.normalize(image_tower(images), dim=-1)  # (4, 6)
    text_embeds = F.normalize(text_tower(texts), dim=-1)  # (4, 6)
    clip_loss(image_embeds, text_embeds, logit_scale()).backward()
    for parameter in [*image_tower.parameters(), *text_tower.parameters(), logit_scale.log_scale]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_training_embeddings_with_the_loss_aligns_pairs() -> None:
    torch.manual_seed(0)
    image_parameters = torch.nn.Parameter(torch.randn(16, 8))
    text_parameters = torch.nn.Parameter(torch.randn(16, 8))
    logit_scale = LogitScale()
    optimiser = torch.optim.Adam([image_parameters, text_parameters, *logit_scale.parameters()], lr=0.05)
    losses = []
    for _ in range(100):
        loss = clip_loss(F.normalize(image_parameters, dim=-1), F.normalize(text_parameters, dim=-1), logit_scale())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    similarity = F.normalize(text_parameters, dim=-1) @ F.normalize(image_parameters, dim=-1).T  # (16, 16)
    assert recall_at_k(similarity.detach(), torch.eye(16, dtype=torch.bool), ks=(1,)) == {1: 1.0}


def tiny_hf_clip():
    """A transformers CLIPModel small enough to build in a test, random weights."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": 40,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 12,
            "bos_token_id": 0,
            "pad_token_id": 1,
            "eos_token_id": 39,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    return CLIPModel(config).eval()


@pytest.mark.slow
def test_loss_matches_transformers_clip_model() -> None:
    model = tiny_hf_clip()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))  # away from the default, so a missing exp() or scale would show
    input_ids = torch.randint(2, 39, (6, 10))  # (batch, sequence)
    input_ids[:, -1] = 39  # the text tower pools at the end-of-text token
    pixel_values = torch.randn(6, 3, 16, 16)  # (batch, channels, H, W)
    with torch.no_grad():
        outputs = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
    ours = clip_loss(outputs.image_embeds, outputs.text_embeds, model.logit_scale.exp())
    torch.testing.assert_close(ours, outputs.loss)
    logits_per_image, logits_per_text = clip_logits(outputs.image_embeds, outputs.text_embeds, model.logit_scale.exp())
    torch.testing.assert_close(logits_per_image, outputs.logits_per_image)
    torch.testing.assert_close(logits_per_text, outputs.logits_per_text)
    assert outputs.loss.item() > 0.1, "a random model: far from zero, so the comparison means something"


def test_mismatched_batch_sizes_are_an_error() -> None:
    with pytest.raises(ValueError, match="batch sizes differ.*4.*5"):
        clip_loss(unit_rows(4, 8), unit_rows(5, 8), 10.0)


@pytest.mark.parametrize("which", ["image_embeds", "text_embeds"])
def test_zero_shot_names_embeddings_that_are_not_normalised(which: str) -> None:
    """The check reads the data, so it runs where embeddings come in (zero-shot), not in the training loss."""
    embeds = {"image_embeds": unit_rows(4, 8, 0), "text_embeds": unit_rows(3, 8, 1)}
    embeds[which] = embeds[which] * 3
    with pytest.raises(ValueError, match=f"{which} must be L2-normalised"):
        zero_shot_classify(embeds["image_embeds"], embeds["text_embeds"])
    nan = unit_rows(4, 8)
    nan[2, 0] = float("nan")
    with pytest.raises(ValueError, match="row 2"):
        check_normalised(nan, "image_embeds")


def test_the_loss_checks_shapes_only_and_equals_contrastive_loss_of_the_logits() -> None:
    image_embeds, text_embeds = 3 * unit_rows(5, 8, 0), unit_rows(5, 8, 1)  # not unit: no data check on this path
    logits_per_image, _ = clip_logits(image_embeds, text_embeds, 7.0)
    torch.testing.assert_close(clip_loss(image_embeds, text_embeds, 7.0), contrastive_loss(logits_per_image))


def test_other_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match=r"image_embeds must be a 2-D tensor"):
        clip_loss(unit_rows(1, 8)[0], unit_rows(1, 8), 1.0)
    with pytest.raises(ValueError, match="width 8 != text_embeds width 6"):
        clip_loss(unit_rows(4, 8), unit_rows(4, 6), 1.0)
    with pytest.raises(ValueError, match="logit_scale must be > 0"):
        clip_loss(unit_rows(4, 8), unit_rows(4, 8), -1.0)
    with pytest.raises(ValueError, match="logit_scale must be a scalar"):
        clip_loss(unit_rows(4, 8), unit_rows(4, 8), torch.ones(2))
    with pytest.raises(ValueError, match="image_embeds must be .* at least one row"):
        clip_loss(torch.zeros(0, 8), torch.zeros(0, 8), 1.0)
    with pytest.raises(TypeError, match="text_embeds must be a tensor"):
        clip_logits(unit_rows(4, 8), [[1.0] * 8], 1.0)


def test_bfloat16_embeddings_pass_the_norm_check() -> None:
    embeds = unit_rows(64, 256).bfloat16()
    assert clip_loss(embeds, embeds, 10.0).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------------------
# Zero-shot classification and prompt ensembles
# ---------------------------------------------------------------------------------------------------------------


def test_zero_shot_picks_the_nearest_class_prompt() -> None:
    class_text_embeds = torch.eye(3, 4)  # (3 classes, 4): class c along axis c
    image_embeds = F.normalize(torch.tensor([[0.1, 0.9, 0.0, 0.2], [0.0, 0.1, 1.0, 0.0], [1.0, 0.0, 0.0, 0.5]]), dim=-1)
    probabilities, predictions = zero_shot_classify(image_embeds, class_text_embeds)
    assert predictions.tolist() == [1, 2, 0]
    assert probabilities.shape == (3, 3)
    torch.testing.assert_close(probabilities.sum(dim=-1), torch.ones(3))
    expected = (100.0 * image_embeds @ class_text_embeds.T).softmax(dim=-1)  # CLIP's zero-shot scale is 100
    torch.testing.assert_close(probabilities, expected)
    soft, _ = zero_shot_classify(image_embeds, class_text_embeds, logit_scale=1.0)
    assert soft.max() < probabilities.max(), "a smaller scale, flatter probabilities"


def test_zero_shot_rejects_unnormalised_prompts() -> None:
    with pytest.raises(ValueError, match="text_embeds must be L2-normalised"):
        zero_shot_classify(unit_rows(2, 4), 2 * torch.eye(3, 4))


def test_prompt_ensemble_averages_normalised_embeddings() -> None:
    first = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # (2 classes, 3): template one, unnormalised
    second = torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, 2.0]])  # template two
    ensemble = prompt_ensemble(torch.stack([first, second]))  # (2, 3)
    torch.testing.assert_close(
        ensemble, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) / torch.tensor([[2**0.5], [1.0]])
    )
    text_embeds = torch.randn(5, 18, 16)  # (templates, classes, D)
    torch.testing.assert_close(prompt_ensemble(text_embeds).norm(dim=-1), torch.ones(18))
    torch.testing.assert_close(prompt_ensemble(text_embeds[:1]), F.normalize(text_embeds[0], dim=-1))
    with pytest.raises(ValueError, match=r"\(templates, classes, D\)"):
        prompt_ensemble(torch.randn(18, 16))


# ---------------------------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------------------------


def test_recall_at_k_on_a_hand_made_ranking() -> None:
    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3, 0.0, 0.4],  # ranking 0, 5, 3, 2, 1, 4: item 0 relevant, first -> hit at 1
            [0.9, 0.8, 0.7, 0.1, 0.0, 0.2],  # ranking 0, 1, 2, 5, 3, 4: item 2 relevant, third -> hit at 3
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # ranking 5, 4, 3, 2, 1, 0: items 0 and 1 relevant -> hit at 5
        ]
    )
    relevant = torch.zeros(3, 6, dtype=torch.bool)
    relevant[0, 0] = relevant[1, 2] = relevant[2, 0] = relevant[2, 1] = True
    assert recall_at_k(similarity, relevant, ks=(1, 2, 3, 5, 6)) == pytest.approx(
        {1: 1 / 3, 2: 1 / 3, 3: 2 / 3, 5: 1.0, 6: 1.0}
    )


def test_recall_counts_any_relevant_item_when_captions_repeat() -> None:
    similarity = torch.tensor([[0.2, 0.9, 0.5], [0.2, 0.9, 0.5]])  # two identical captions, same ranking
    relevant = torch.tensor([[True, True, False], [True, False, False]])  # items 0 and 1 share the first's attributes
    assert recall_at_k(similarity, relevant, ks=(1, 3)) == {1: 0.5, 3: 1.0}


def test_recall_at_k_bad_input() -> None:
    similarity, relevant = torch.randn(3, 4), torch.eye(3, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="relevant must have the shape"):
        recall_at_k(similarity, relevant[:2])
    with pytest.raises(TypeError, match="bool"):
        recall_at_k(similarity, relevant.float(), ks=(1,))
    with pytest.raises(ValueError, match=r"similarity must be \(queries, items\)"):
        recall_at_k(similarity[0], relevant[0])
    with pytest.raises(ValueError, match=r"queries \[1\] have none"):
        recall_at_k(similarity, torch.tensor([[True, False, False, False], [False] * 4, [False, False, True, False]]))
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(similarity, relevant)  # k = 5 and 10 exceed the 4 items
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(similarity, relevant, ks=(0,))


# ---------------------------------------------------------------------------------------------------------------
# The text tower and the two-tower model
# ---------------------------------------------------------------------------------------------------------------

TEXT = TextEncoderConfig(vocab_size=20, context_length=8, d_model=32, n_heads=2, n_layers=2, d_ff=64)


def token_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded sequences: lengths 5 and 3."""
    input_ids = torch.tensor([[2, 7, 8, 9, 3, 0], [2, 11, 3, 0, 0, 0]])  # (2, 6)
    return input_ids, (input_ids != 0).long()


def tiny_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    image_encoder = VisionTransformer(ViTConfig(image_size=16, patch_size=4, d_model=32, n_heads=2, n_layers=1,
                                                d_ff=64))  # fmt: skip
    return CLIP(image_encoder, TextEncoder(TEXT), CLIPConfig(embed_dim=16))


def test_end_of_text_pool_takes_the_last_real_token() -> None:
    hidden_states = torch.arange(2 * 6 * 1, dtype=torch.float).view(2, 6, 1)  # (2, 6, 1): value = position
    _, attention_mask = token_batch()
    torch.testing.assert_close(end_of_text_pool(hidden_states, attention_mask), torch.tensor([[4.0], [8.0]]))
    with pytest.raises(ValueError, match="attention_mask"):
        end_of_text_pool(hidden_states, attention_mask[:, :4])


def test_check_text_ids_refuses_what_the_text_tower_cannot_read() -> None:
    """Checked once where texts enter (these used to be checked in every forward, a device sync per step)."""
    input_ids, attention_mask = token_batch()
    check_text_ids(input_ids, attention_mask, TEXT.vocab_size)
    with pytest.raises(ValueError, match="right-padded"):
        check_text_ids(input_ids, attention_mask.flip(-1), TEXT.vocab_size)
    with pytest.raises(ValueError, match="no real token"):
        check_text_ids(input_ids, attention_mask * torch.tensor([[1], [0]]), TEXT.vocab_size)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        check_text_ids(input_ids, attention_mask[:, :3], TEXT.vocab_size)


@pytest.mark.parametrize("pooling", ["end", "mean"])
def test_text_encoder_ignores_padding(pooling: str) -> None:
    """More padding must not change a text's vector: padding is masked in attention and in the pooling."""
    torch.manual_seed(0)
    encoder = TextEncoder(TextEncoderConfig(**{**TEXT.__dict__, "pooling": pooling})).eval()
    input_ids, attention_mask = token_batch()
    with torch.no_grad():
        short = encoder(input_ids[:, :5], attention_mask[:, :5])
        padded = encoder(torch.cat([input_ids, torch.zeros(2, 2, dtype=torch.long)], 1),
                         torch.cat([attention_mask, torch.zeros(2, 2, dtype=torch.long)], 1))  # fmt: skip
    assert short.shape == (2, 32)
    torch.testing.assert_close(short, padded)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [({"pooling": "cls"}, "pooling"), ({"n_heads": 5}, "n_heads"), ({"vocab_size": 0}, "vocab_size"),
     ({"dropout": -0.1}, "dropout")],
)  # fmt: skip
def test_text_encoder_config_errors_name_the_field(arguments: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TextEncoderConfig(**{**TEXT.__dict__, **arguments})


def test_text_encoder_bad_input() -> None:
    encoder = TextEncoder(TEXT)
    input_ids, attention_mask = token_batch()
    with pytest.raises(ValueError, match="attention_mask"):
        encoder(input_ids, attention_mask[:, :4])
    with pytest.raises(ValueError, match="context_length=8"):
        encoder(torch.ones(1, 9, dtype=torch.long), torch.ones(1, 9, dtype=torch.long))


def test_check_text_ids_names_ids_outside_the_vocabulary() -> None:
    """Such ids reach nn.Embedding and raise torch's bare 'IndexError: index out of range in self'."""
    encoder = TextEncoder(TEXT)
    input_ids, attention_mask = token_batch()
    for bad in (TEXT.vocab_size, -1):
        with pytest.raises(ValueError, match=rf"input_ids must hold ids in \[0, vocab_size=20\).*{bad}…{bad}"):
            check_text_ids(input_ids.masked_fill(attention_mask == 0, bad), attention_mask, TEXT.vocab_size)
    with pytest.raises(TypeError, match="input_ids must be an int64 or int32 tensor"):
        encoder(input_ids.float(), attention_mask)
    with pytest.raises(TypeError, match="input_ids must be an int64 or int32 tensor"):
        check_text_ids(input_ids.float(), attention_mask, TEXT.vocab_size)


def test_clip_model_embeds_on_the_unit_sphere_and_its_loss_is_clip_loss() -> None:
    model = tiny_clip().eval()
    images = torch.rand(2, 3, 16, 16)
    input_ids, attention_mask = token_batch()
    with torch.no_grad():
        output = model(images, input_ids, attention_mask)
        image_embeds, text_embeds = model.encode_image(images), model.encode_text(input_ids, attention_mask)
    assert image_embeds.shape == text_embeds.shape == (2, 16)
    torch.testing.assert_close(image_embeds.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(output.image_embeds, image_embeds)
    torch.testing.assert_close(output.text_embeds, text_embeds)
    torch.testing.assert_close(output.loss, clip_loss(image_embeds, text_embeds, model.logit_scale()))
    torch.testing.assert_close(output.logits_per_image, 1 / 0.07 * image_embeds @ text_embeds.T)
    torch.testing.assert_close(output.logits_per_text, output.logits_per_image.T)
    with pytest.raises(ValueError, match="same batch size"):
        model(images[:1], input_ids, attention_mask)


def test_clip_model_gradient_reaches_both_towers_and_the_temperature() -> None:
    model = tiny_clip()
    input_ids, attention_mask = token_batch()
    model(torch.rand(2, 3, 16, 16), input_ids, attention_mask).loss.backward()
    for name in ("image_encoder.patch_embedding.projection.weight", "text_encoder.token_embedding.weight",
                 "image_projection.weight", "text_projection.weight", "logit_scale.log_scale"):  # fmt: skip
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_clip_model_learns_to_pair_one_batch() -> None:
    """Eight images, eight distinct captions: a few dozen steps take the loss from ln 8 towards 0."""
    model = tiny_clip()
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    input_ids = torch.stack([torch.tensor([2, 5 + index, 12 + index % 4, 3]) for index in range(8)])  # (8, 4)
    attention_mask = torch.ones_like(input_ids)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(50):
        output = model(images, input_ids, attention_mask)
        optimiser.zero_grad()
        output.loss.backward()
        optimiser.step()
        losses.append(output.loss.item())
    assert losses[-1] < 0.05 * losses[0], f"{losses[0]:.3f} → {losses[-1]:.3f}"
    assert in_batch_accuracy(output.logits_per_image) == 1.0


def test_clip_model_rejects_towers_without_a_width() -> None:
    with pytest.raises(TypeError, match="image_encoder .*out_features"):
        CLIP(torch.nn.Identity(), TextEncoder(TEXT))
    with pytest.raises(TypeError, match="TextEncoderConfig"):
        TextEncoder(CLIPConfig())
    with pytest.raises(ValueError, match="embed_dim"):
        CLIPConfig(embed_dim=0)


def test_in_batch_accuracy_counts_the_diagonal() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 5.0]])
    assert in_batch_accuracy(logits) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="square"):
        in_batch_accuracy(logits[:2])


def test_project_text_features_is_encode_text_after_the_tower() -> None:
    model = tiny_clip().eval()
    input_ids, attention_mask = token_batch()
    with torch.no_grad():
        features = model.text_encoder(input_ids, attention_mask)  # (2, 32)
        torch.testing.assert_close(model.project_text_features(features), model.encode_text(input_ids, attention_mask))
    with pytest.raises(ValueError, match=r"features must be \(batch, 32\)"):
        model.project_text_features(features[:, :8])


def test_locked_text_tower_is_frozen_and_mean_pools() -> None:
    from mmcourse.bert import BertConfig, BertModel, mean_pool

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=20, context_length=8, d_model=32, n_heads=2, n_layers=1, d_ff=64))
    tower = LockedTextTower(bert, out_features=32)
    image_encoder = VisionTransformer(ViTConfig(image_size=16, patch_size=8, d_model=16, n_heads=2, n_layers=1,
                                                d_ff=32))  # fmt: skip
    model = CLIP(image_encoder, tower, CLIPConfig(embed_dim=8)).train()
    assert not tower.training and not bert.training, "dropout in a locked tower would change its outputs"
    input_ids, attention_mask = token_batch()
    expected = mean_pool(bert(input_ids, attention_mask=attention_mask).hidden_states, attention_mask)
    torch.testing.assert_close(tower(input_ids, attention_mask), expected)
    model(torch.rand(2, 3, 16, 16), input_ids, attention_mask).loss.backward()
    assert all(parameter.grad is None for parameter in bert.parameters())
    assert model.text_projection.weight.grad is not None  # the head on the locked tower still learns
    assert model.image_encoder.patch_embedding.projection.weight.grad is not None
    with pytest.raises(ValueError, match="out_features=16"):
        LockedTextTower(bert, out_features=16)(input_ids, attention_mask)


@pytest.mark.slow
def test_hf_clip_embeddings_reproduce_the_model_saved_and_loaded(tmp_path) -> None:
    """The Colab cell's path: save_pretrained / from_pretrained offline, embeddings → our zero-shot = its softmax."""
    from transformers import CLIPModel

    tiny_hf_clip().save_pretrained(tmp_path)
    model = CLIPModel.from_pretrained(tmp_path).eval()
    input_ids = torch.randint(2, 39, (3, 6))  # (classes, sequence)
    input_ids[:, -1] = 39
    attention_mask = torch.ones_like(input_ids)
    pixel_values = torch.randn(4, 3, 16, 16)
    image_embeds, text_embeds = hf_clip_embeddings(model, pixel_values, input_ids, attention_mask)
    probabilities, predictions = zero_shot_classify(image_embeds, text_embeds, model.logit_scale.exp())
    with torch.no_grad():
        outputs = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    torch.testing.assert_close(probabilities, outputs.logits_per_image.softmax(dim=-1))
    assert torch.equal(predictions, outputs.logits_per_image.argmax(dim=-1))
    with pytest.raises(TypeError, match="CLIPModel"):
        hf_clip_embeddings(torch.nn.Linear(2, 2), pixel_values, input_ids, attention_mask)
