"""The attention explorer and the pattern scores, on a tiny BERT saved to a temporary folder (no hub)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmcourse.attention import attention_pattern_scores
from mmcourse.data.models import minilm_dir


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    folder: Path = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(folder)
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(minilm_dir())


def test_model_attentions_returns_every_layer_and_head(tiny_bert) -> None:
    from mmcourse.book.widgets import model_attentions

    model, tokenizer = tiny_bert
    attn_weights, tokens = model_attentions(model, tokenizer, "a red square")
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert attn_weights.shape == (2, 2, len(tokens), len(tokens))
    torch.testing.assert_close(attn_weights.sum(-1), torch.ones(2, 2, len(tokens)))
    with pytest.raises(ValueError, match="non-empty"):
        model_attentions(model, tokenizer, "  ")


def test_explorer_redraws_when_a_control_changes(tiny_bert, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmcourse.book.widgets import attention_explorer

    shown: list[str] = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gca().get_title()))
    model, tokenizer = tiny_bert
    explorer = attention_explorer(model, tokenizer, "a red square")
    text_box, sliders, _ = explorer.children
    layer, head = sliders.children
    assert (layer.max, head.max) == (1, 1)
    head.value = 1
    layer.value = 1
    text_box.value = "two blue circles"
    assert shown == ["layer 0, head 0", "layer 0, head 1", "layer 1, head 1", "layer 1, head 1"]
    plt.close("all")


def test_pattern_scores_find_the_pattern_each_head_follows() -> None:
    length = 6
    previous = torch.eye(length).roll(-1, dims=1)  # query i looks at key i-1 (row 0 wraps to the last key)
    previous[0] = torch.eye(length)[0]
    to_first = torch.zeros(length, length)
    to_first[:, 0] = 1
    weights = torch.stack([torch.eye(length), previous, to_first])[None]  # (1 layer, 3 heads, L, L)
    scores = attention_pattern_scores(weights)
    assert scores["same token"][0].argmax().item() == 0
    assert scores["previous token"][0].argmax().item() == 1
    assert scores["first token"][0].argmax().item() == 2
    assert scores["previous token"][0, 1].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="layers, heads, L, L"):
        attention_pattern_scores(torch.ones(3, 4, 4))


def test_sampling_explorer_regenerates_when_a_slider_moves(capsys: pytest.CaptureFixture[str]) -> None:
    from mmcourse.book.widgets import sampling_explorer
    from mmcourse.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=27, context_length=32, d_model=16, n_heads=2, n_layers=1)).eval()
    letters = "abcdefghijklmnopqrstuvwxyz "

    def encode(text: str) -> list[int]:
        return [letters.index(c) for c in text if c in letters]

    def decode(ids: list[int]) -> str:
        return "".join(letters[i] for i in ids)

    def shown() -> str:  # the text printed last (outside a kernel, clear_output prints terminal codes)
        return capsys.readouterr().out.strip().split("\r")[-1]

    explorer = sampling_explorer(model, encode, decode, prompt="to be", max_new_tokens=10)
    first = shown()
    assert first.startswith("to be") and len(first) == 15
    temperature = explorer.children[1].children[0]
    temperature.value = 0.0  # greedy: the same text twice
    greedy = shown()
    temperature.value = 0.05
    temperature.value = 0.0
    assert shown() == greedy and greedy.startswith("to be")
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampling_explorer(model, encode, decode, max_new_tokens=0)


def test_zero_shot_explorer_redraws_for_the_chosen_image_and_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmcourse.book import viz
    from mmcourse.book.widgets import zero_shot_explorer
    from mmcourse.clip import CLIP, CLIPConfig, TextEncoder, TextEncoderConfig
    from mmcourse.vision import VisionTransformer, ViTConfig

    torch.manual_seed(0)
    vision = VisionTransformer(ViTConfig(image_size=16, patch_size=8, d_model=16, n_heads=2, n_layers=1, d_ff=32))
    text = TextEncoder(TextEncoderConfig(vocab_size=30, context_length=8, d_model=16, n_heads=2, n_layers=1, d_ff=32))
    model = CLIP(vision, text, CLIPConfig(embed_dim=8)).eval()

    def tokenize(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = torch.tensor([[2, 5 + len(prompt) % 20, 3] for prompt in prompts])  # (C, 3)
        return input_ids, torch.ones_like(input_ids)

    drawn = []

    def record(images, prompts, probabilities, titles=None):
        drawn.append((images, list(prompts), probabilities, titles))

    monkeypatch.setattr(viz, "zero_shot_figure", record)
    images = torch.rand(3, 3, 16, 16)
    explorer = zero_shot_explorer(model, tokenize, images, ["a red circle", "a blue square"], titles=["a", "b", "c"])
    image_slider, prompt_box = explorer.children[0], explorer.children[1]
    assert drawn[-1][1] == ["a red circle", "a blue square"] and drawn[-1][3] == ["a"]
    torch.testing.assert_close(drawn[-1][2].sum(-1), torch.ones(1))
    image_slider.value = 2
    assert torch.equal(drawn[-1][0], images[2:3]) and drawn[-1][3] == ["c"]
    prompt_box.value = "a green triangle\n\na cat\na dog"
    assert drawn[-1][1] == ["a green triangle", "a cat", "a dog"] and drawn[-1][2].shape == (1, 3)
    with pytest.raises(ValueError, match="prompts"):
        zero_shot_explorer(model, tokenize, images, [])
