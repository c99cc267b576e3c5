"""Chapter 9's VLM on a converted Llama checkpoint: our GPT reads a right-padded image-and-text batch as
transformers' LlamaForCausalLM reads the same ``inputs_embeds`` with ``attention_mask`` and ``position_ids``, and
answers with the same greedy tokens (mmcourse.convert.gpt, mmcourse.vlm)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmcourse.convert.gpt import from_hf_llama
from mmcourse.vision import VisionTransformer, ViTConfig
from mmcourse.vlm import VisionLanguageModel, VLMConfig, generate_answer, vlm_batch

VOCAB, IMAGE = 40, 40  # the placeholder's id lies one past the vocabulary: it is never embedded


@pytest.mark.slow
def test_a_converted_llama_reads_a_padded_image_batch_as_transformers_does(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 500.0}, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, pad_token_id=None)  # fmt: skip
    source = LlamaForCausalLM(config)
    with torch.no_grad():  # noise on every weight, so that norms and the tied head all matter
        for parameter in source.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    source.save_pretrained(tmp_path)
    hf_model = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    vit = VisionTransformer(ViTConfig(image_size=16, patch_size=4, d_model=16, n_heads=2, n_layers=1, d_ff=32))
    model = VisionLanguageModel(vit, from_hf_llama(hf_model), VLMConfig(IMAGE, connector="pixel_shuffle")).eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    batch = vlm_batch(images, [[2, IMAGE, 5, 6, 7], [2, 8, IMAGE]], [[9, 10, 3], [11, 3]], IMAGE, model.n_image_tokens)
    real = batch["attention_mask"].bool()  # (batch, T): row 1 is padded at the end
    with torch.no_grad():
        embeds = model.embed(batch["images"], batch["input_ids"])  # (batch, T, d_model)
        theirs = hf_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                          position_ids=batch["position_ids"]).logits  # fmt: skip
        torch.testing.assert_close(model(batch["images"], batch["input_ids"])[real], theirs[real], atol=1e-5, rtol=1e-5)
        prompt = batch["input_ids"][:1, :8]  # row 0's prompt: BOS, 4 image tokens, 3 words
        answer = generate_answer(model, images[:1], prompt, max_new_tokens=6)
        hf_model.generation_config.eos_token_id = None  # no early stop: compare all 6 tokens
        prompt_embeds = model.embed(images[:1], prompt)  # (1, 8, d_model)
        hf_answer = hf_model.generate(inputs_embeds=prompt_embeds, attention_mask=torch.ones_like(prompt),
                                      max_new_tokens=6, do_sample=False)  # fmt: skip
    assert torch.equal(answer, hf_answer)
