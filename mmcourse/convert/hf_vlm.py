"""One question about one image to a transformers vision-language model (SmolVLM, Idefics3 and the like), through
its processor's chat template: chapter 9's online cell asks SmolVLM-256M-Instruct what our own VLM was asked."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from PIL import Image

from mmcourse.checks import check_int

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin


def ask_hf_vlm(
    model: PreTrainedModel, processor: ProcessorMixin, image: Image.Image, question: str, max_new_tokens: int = 40
) -> str:
    """The model's greedy answer to ``question`` about ``image``: the new tokens only, special tokens dropped."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)  # "User:<image>…\nAssistant:"
    inputs = processor(text=prompt, images=[image], return_tensors="pt").to(model.device)
    with torch.no_grad():
        output_ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)  # (1, T + new)
    new_ids = output_ids[0, inputs["input_ids"].shape[1] :]  # (new,): the prompt is echoed first
    return processor.decode(new_ids, skip_special_tokens=True).strip()
