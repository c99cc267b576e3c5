"""Golden parity with transformers' GPT-2 and Llama (minGPT style): the same weights in our GPT and in
transformers' model give the same logits and the same greedy tokens (mmcourse.convert.gpt)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mmcourse.convert.gpt import from_hf_gpt2, from_hf_llama, to_hf_gpt2
from mmcourse.generation import generate
from mmcourse.gpt import GPT, GPTConfig, gpt_parameter_count

VOCAB = 40


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def perturb(model: nn.Module, seed: int = 0) -> None:
    """Add noise to every parameter, so norms, biases and the tied head all matter in a parity test."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


def tiny_gpt(**overrides: object) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(VOCAB, **{"context_length": 24, "d_model": 32, "n_heads": 4, "n_layers": 2, **overrides}))


def tiny_llama(tie_word_embeddings: bool, seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 500.0}, rms_norm_eps=1e-6,
                         tie_word_embeddings=tie_word_embeddings, bos_token_id=0, eos_token_id=1,
                         pad_token_id=None)  # fmt: skip
    hf_model = LlamaForCausalLM(config).eval()
    perturb(hf_model, seed)
    return hf_model


@pytest.mark.slow
@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_to_hf_gpt2_gives_the_same_logits_and_tokens(tie_embeddings: bool) -> None:
    model = tiny_gpt(tie_embeddings=tie_embeddings).eval()
    perturb(model)
    hf_model = to_hf_gpt2(model).eval()
    input_ids = random_ids(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(input_ids).logits, model(input_ids), atol=1e-5, rtol=1e-5)
        greedy = generate(model, input_ids[:, :4], max_new_tokens=8, temperature=0.0)
        hf_greedy = hf_model.generate(input_ids[:, :4], attention_mask=torch.ones(2, 4, dtype=torch.long),
                                      max_new_tokens=8, min_new_tokens=8, do_sample=False)  # fmt: skip
    assert torch.equal(greedy, hf_greedy)


@pytest.mark.slow
@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_from_hf_gpt2_gives_the_same_logits(tmp_path: Path, tie_embeddings: bool) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                        tie_word_embeddings=tie_embeddings, bos_token_id=0, eos_token_id=0)  # fmt: skip
    source = GPT2LMHeadModel(config)
    perturb(source)
    source.save_pretrained(tmp_path)
    hf_model = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    model = from_hf_gpt2(hf_model)
    assert model.config.d_ff == 48 and model.config.context_length == 16
    assert model.config.tie_embeddings is tie_embeddings
    input_ids = random_ids(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids), hf_model(input_ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_gpt2_conversion_rejects_other_styles_and_types() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    with pytest.raises(ValueError, match="norm='layernorm'"):
        to_hf_gpt2(GPT(GPTConfig.llama_style(VOCAB, d_model=32, n_heads=4, n_layers=1)))
    with pytest.raises(ValueError, match="n_kv_heads=4"):
        to_hf_gpt2(tiny_gpt(n_kv_heads=2))
    with pytest.raises(TypeError, match="model must be a mmcourse.gpt.GPT"):
        to_hf_gpt2(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        from_hf_gpt2(LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                                                  num_hidden_layers=1, num_attention_heads=2)))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_from_hf_llama_gives_the_same_logits_and_tokens(tie_word_embeddings: bool) -> None:
    hf_model = tiny_llama(tie_word_embeddings)
    model = from_hf_llama(hf_model)
    config = model.config
    assert (config.n_kv_heads, config.rope_base, config.norm_eps, config.d_ff) == (2, 500.0, 1e-6, 56)
    assert (model.lm_head.weight is model.token_embedding.weight) is tie_word_embeddings
    input_ids = random_ids(2, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids), hf_model(input_ids).logits, atol=1e-5, rtol=1e-5)
        greedy = generate(model, input_ids[:, :4], max_new_tokens=8, temperature=0.0)
        hf_model.generation_config.eos_token_id = None  # no early stop: compare all 8 tokens
        hf_greedy = hf_model.generate(input_ids[:, :4], attention_mask=torch.ones(2, 4, dtype=torch.long),
                                      max_new_tokens=8, do_sample=False)  # fmt: skip
    assert torch.equal(greedy, hf_greedy)


@pytest.mark.slow
def test_from_hf_llama_names_a_mismatched_tensor() -> None:
    hf_model = tiny_llama(True)
    hf_model.model.layers[1].self_attn.k_proj.weight = nn.Parameter(torch.zeros(8, 32))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight: shape \(8, 32\)"):
        from_hf_llama(hf_model)
    hf_model = tiny_llama(True)
    hf_model.config.hidden_act = "gelu"
    with pytest.raises(ValueError, match="hidden_act"):
        from_hf_llama(hf_model)
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        from_hf_llama(nn.Linear(2, 2))  # type: ignore[arg-type]


@pytest.mark.slow
def test_smollm2_from_gguf_gives_the_same_logits() -> None:
    """The real SmolLM2-135M-Instruct (dequantized from its GGUF file) in our GPT class: same logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmcourse.data import DataMissingError
    from mmcourse.data.models import smollm2_gguf

    try:
        path = smollm2_gguf()
    except DataMissingError as error:
        pytest.skip(str(error))
    hf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = from_hf_llama(hf_model)
    assert gpt_parameter_count(model.config) == sum(p.numel() for p in hf_model.parameters()) == 134_515_008
    input_ids = tokenizer("The capital of France is", return_tensors="pt").input_ids  # (1, T)
    with torch.no_grad():
        logits, hf_logits = model(input_ids), hf_model(input_ids).logits  # (1, T, 49152)
    torch.testing.assert_close(logits, hf_logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(logits[0, -1].topk(5).indices, hf_logits[0, -1].topk(5).indices)
