"""ask_hf_vlm on a tiny random Idefics3 (SmolVLM's architecture) with a processor assembled offline: SmolVLM's chat
template, its image special tokens, image splitting into tiles plus a global view (mmcourse.convert.hf_vlm)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mmcourse.convert.hf_vlm import ask_hf_vlm

# SmolVLM-256M-Instruct's chat template, as in its chat_template.json.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IMAGE_TOKENS = ["<image>", "<fake_token_around_image>", "<global-img>"]
TILE_TOKENS = [f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]
TILE, PATCH, SCALE = 32, 8, 2  # 32-pixel tiles, 8-pixel patches: 16 patches, 4 tokens after pixel shuffle
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE**2


def tiny_tokenizer():
    """Byte-level BPE with no merges (one token per byte) plus SmolVLM's special tokens: 298 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: index for index, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        additional_special_tokens=IMAGE_TOKENS + TILE_TOKENS,
    )


@pytest.fixture(scope="module")
def tiny_smolvlm():
    """(model, processor): a random 1-layer Idefics3 and a processor that tiles images into 32-pixel squares."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    tokenizer = tiny_tokenizer()
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 2 * TILE}, max_image_size={"longest_edge": TILE})
    processor = Idefics3Processor(image_processor, tokenizer, image_seq_len=IMAGE_SEQ_LEN, chat_template=CHAT_TEMPLATE)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    config = Idefics3Config(
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=SCALE, **special,
        vision_config={"image_size": TILE, "patch_size": PATCH, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256, **special},
    )  # fmt: skip
    torch.manual_seed(0)
    return Idefics3ForConditionalGeneration(config).eval(), processor


def picture() -> Image.Image:
    """A 64 x 48 picture: the processor cuts it into 2 x 2 tiles plus a global view."""
    return Image.new("RGB", (64, 48), (200, 30, 30))


def recording_generate(model, monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Wrap model.generate so that a test sees its (input_ids, output_ids)."""
    calls = []
    generate = model.generate

    def recorded(**inputs):
        output_ids = generate(**inputs)
        calls.append((inputs["input_ids"], output_ids))
        return output_ids

    monkeypatch.setattr(model, "generate", recorded)
    return calls


@pytest.mark.slow
def test_ask_hf_vlm_answers_with_the_new_greedy_tokens_only(tiny_smolvlm, monkeypatch: pytest.MonkeyPatch) -> None:
    model, processor = tiny_smolvlm
    calls = recording_generate(model, monkeypatch)
    answer = ask_hf_vlm(model, processor, picture(), "Describe the picture in one sentence.", max_new_tokens=5)
    assert isinstance(answer, str)
    assert answer == ask_hf_vlm(model, processor, picture(), "Describe the picture in one sentence.", max_new_tokens=5)
    input_ids, output_ids = calls[0]
    assert torch.equal(output_ids[:, : input_ids.shape[1]], input_ids)  # the prompt, echoed
    new_ids = output_ids[0, input_ids.shape[1] :]
    assert 1 <= len(new_ids) <= 5
    assert answer == processor.decode(new_ids, skip_special_tokens=True).strip()
    prompt = processor.decode(input_ids[0])
    assert prompt.startswith("<|im_start|>User:<fake_token_around_image><row_1_col_1><image>")
    assert prompt.endswith("<global-img>" + "<image>" * IMAGE_SEQ_LEN + "<fake_token_around_image>"
                           "Describe the picture in one sentence.<end_of_utterance>\nAssistant:")  # fmt: skip


@pytest.mark.slow
def test_ask_hf_vlm_loads_through_the_auto_classes(tiny_smolvlm, tmp_path: Path) -> None:
    """The notebook's cell loads with AutoProcessor and AutoModelForImageTextToText: saved and reloaded, the same
    answer."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = tiny_smolvlm
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    question = "What colour is it?"
    expected = ask_hf_vlm(model, processor, picture(), question, max_new_tokens=4)
    assert ask_hf_vlm(reloaded, reloaded_processor, picture(), question, max_new_tokens=4) == expected


@pytest.mark.parametrize(
    ("image", "question", "max_new_tokens", "error", "field"),
    [
        (torch.zeros(3, 32, 32), "What is it?", 4, TypeError, "image"),
        (None, "What is it?", 4, TypeError, "image"),
        ("picture", ["What is it?"], 4, TypeError, "question"),
        ("picture", "What is it?", 2.0, TypeError, "max_new_tokens"),
        ("picture", "What is it?", 0, ValueError, "max_new_tokens"),
    ],
)
def test_ask_hf_vlm_rejects_bad_inputs(image, question, max_new_tokens, error, field) -> None:
    image = picture() if isinstance(image, str) else image
    with pytest.raises(error, match=field):
        ask_hf_vlm(None, None, image, question, max_new_tokens=max_new_tokens)  # checked before the model is used
