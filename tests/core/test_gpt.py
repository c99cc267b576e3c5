from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mmcourse.convert.gpt import from_hf_gpt2, from_hf_llama, to_hf_gpt2
from mmcourse.generation import generate
from mmcourse.gpt import GPT, GPTConfig, KVCache, RMSNorm, gpt_parameter_count, next_token_loss

VOCAB = 40
GPT2_TINY = GPTConfig(VOCAB, context_length=24, d_model=32, n_heads=4, n_layers=2)
LLAMA_TINY = GPTConfig.llama_style(VOCAB, context_length=24, d_model=32, n_heads=4, n_layers=2)
LLAMA_GQA = GPTConfig.llama_style(VOCAB, context_length=24, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2)
STYLES = {"gpt2": GPT2_TINY, "llama": LLAMA_TINY, "llama-gqa": LLAMA_GQA}


def random_model(config: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config).eval()


def random_ids(batch: int, length: int, seed: int = 0, vocab_size: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def perturb(model: nn.Module, seed: int = 0) -> None:
    """Add noise to every parameter, so norms, biases and the tied head all matter in a parity test."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


# --- config ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"context_length": True}, "context_length"),
        ({"d_model": -8}, "d_model"),
        ({"n_heads": 3}, "n_heads"),
        ({"n_layers": 0}, "n_layers"),
        ({"d_ff": 0}, "d_ff"),
        ({"dropout": 1.0}, "dropout"),
        ({"bias": 1}, "bias"),
        ({"norm": "batchnorm"}, "norm='batchnorm' is not one of \\('layernorm', 'rmsnorm'\\)"),
        ({"mlp": "relu"}, "mlp='relu' is not one of \\('gelu', 'swiglu'\\)"),
        ({"positions": "sinusoidal"}, "positions='sinusoidal' is not one of \\('learned', 'rotary'\\)"),
        ({"n_kv_heads": 3}, "n_kv_heads"),
        ({"n_kv_heads": 0}, "n_kv_heads"),
        ({"rope_base": 0.0}, "rope_base"),
        ({"norm_eps": -1e-5}, "norm_eps"),
        ({"tie_embeddings": None}, "tie_embeddings"),
        ({"mlp": "swiglu"}, "d_ff must be set"),
        ({"positions": "rotary", "d_model": 12, "n_heads": 4}, "head_dim"),
    ],
)
def test_config_rejects_bad_fields(overrides: dict, field: str) -> None:
    settings = {"vocab_size": VOCAB, **overrides}
    with pytest.raises(TypeError if overrides.get("context_length") is True else ValueError, match=field):
        GPTConfig(**settings)


def test_config_defaults_and_styles() -> None:
    config = GPTConfig(VOCAB)
    assert (config.d_ff, config.n_kv_heads, config.head_dim) == (512, 4, 32)
    assert GPTConfig.gpt2_style(VOCAB) == config
    llama = GPTConfig.llama_style(VOCAB, d_model=576, n_heads=9, n_kv_heads=3)
    assert (llama.norm, llama.mlp, llama.positions, llama.bias) == ("rmsnorm", "swiglu", "rotary", False)
    assert llama.d_ff == 1536  # 8/3 · 576, SmolLM2's size
    assert GPTConfig.llama_style(VOCAB, d_ff=100).d_ff == 100


def test_gpt_rejects_a_config_of_another_type() -> None:
    with pytest.raises(ValueError, match="config"):
        GPT({"vocab_size": VOCAB})  # type: ignore[arg-type]


# --- parameters and initialisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        GPT2_TINY,
        LLAMA_TINY,
        LLAMA_GQA,
        GPTConfig(VOCAB, d_model=32, n_heads=4, n_layers=3, tie_embeddings=False, bias=False),
        GPTConfig(VOCAB, d_model=32, n_heads=2, n_layers=1, positions="rotary", norm="rmsnorm", d_ff=50),
        GPTConfig.llama_style(VOCAB, d_model=32, n_heads=4, n_kv_heads=1, bias=True, tie_embeddings=False),
    ],
)
def test_parameter_count_formula(config: GPTConfig) -> None:
    model = GPT(config)
    assert gpt_parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_parameter_count_of_gpt2_small() -> None:
    config = GPTConfig(50257, context_length=1024, d_model=768, n_heads=12, n_layers=12)
    assert gpt_parameter_count(config) == 124_439_808  # GPT-2 small, counted once with its tied head


def test_gpt2_initialisation() -> None:
    config = GPTConfig(2000, d_model=256, n_heads=4, n_layers=8)
    model = random_model(config)
    block = model.blocks[0]
    assert model.lm_head.weight is model.token_embedding.weight
    assert abs(block.attention.q_proj.weight.std().item() - 0.02) < 0.002
    assert abs(block.mlp.linear2.weight.std().item() - 0.02 / 4) < 0.0005  # 0.02 / √(2 · 8)
    assert abs(block.attention.out_proj.weight.std().item() - 0.02 / 4) < 0.0005
    assert block.attention.q_proj.bias.abs().max() == 0 and torch.all(block.norm1.weight == 1)


def test_rms_norm() -> None:
    norm = RMSNorm(4, eps=0.0 + 1e-12)
    x = torch.tensor([[1.0, -1.0, 1.0, -1.0], [2.0, 2.0, 2.0, 2.0]])
    torch.testing.assert_close(norm(x), x.sign())
    with pytest.raises(ValueError, match="eps"):
        RMSNorm(4, eps=0.0)


# --- the forward pass ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_changing_a_later_token_never_changes_earlier_logits(style: str) -> None:
    model = random_model(STYLES[style])
    input_ids = random_ids(2, 12)
    changed = input_ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % VOCAB
    with torch.no_grad():
        logits, changed_logits = model(input_ids), model(changed)  # (2, 12, VOCAB)
    assert logits.shape == (2, 12, VOCAB)
    torch.testing.assert_close(changed_logits[:, :7], logits[:, :7], rtol=0, atol=0)
    assert (changed_logits[:, 7:] - logits[:, 7:]).abs().amax(dim=-1).min() > 0


@pytest.mark.parametrize("style", STYLES)
def test_cached_chunks_equal_one_full_pass(style: str) -> None:
    model = random_model(STYLES[style])
    input_ids = random_ids(3, 11)
    cache = KVCache(model.config.n_layers)
    with torch.no_grad():
        full = model(input_ids)  # (3, 11, VOCAB)
        chunks = [model(input_ids[:, start:stop], cache=cache) for start, stop in ((0, 5), (5, 6), (6, 11))]
    assert cache.length == 11
    k, v = cache.layers[0]
    assert k.shape == v.shape == (3, model.config.n_kv_heads, 11, model.config.head_dim)
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("style", STYLES)
def test_attention_weights_are_causal_and_match_the_fused_path(style: str) -> None:
    model = random_model(STYLES[style])
    input_ids = random_ids(2, 9)
    with torch.no_grad():
        logits, attn_weights = model(input_ids, need_weights=True)
        cache = model.new_cache()
        model(input_ids[:, :4], cache=cache)
        _, cached_weights = model(input_ids[:, 4:], cache=cache, need_weights=True)
    assert attn_weights.shape == (2, 2, 4, 9, 9)  # (n_layers, batch, n_heads, T, T)
    assert torch.all(attn_weights.triu(diagonal=1) == 0)
    torch.testing.assert_close(attn_weights.sum(-1), torch.ones(2, 2, 4, 9))
    torch.testing.assert_close(logits, model(input_ids), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached_weights, attn_weights[..., 4:, :], atol=1e-6, rtol=1e-5)


def test_learned_positions_reject_a_sequence_longer_than_the_context() -> None:
    model = random_model(GPT2_TINY)
    with pytest.raises(ValueError, match="context_length=24"):
        model(random_ids(1, 25))
    cache = model.new_cache()
    model(random_ids(1, 20), cache=cache)
    with pytest.raises(ValueError, match="cached 20"):
        model(random_ids(1, 5), cache=cache)
    assert random_model(LLAMA_TINY)(random_ids(1, 30)).shape == (1, 30, VOCAB)  # rotary: no table to run out of


@pytest.mark.parametrize(
    ("input_ids", "message"),
    [
        (torch.zeros(2, 3), "integer tensor"),
        (torch.zeros(3, dtype=torch.long), "integer tensor"),
        (torch.zeros(1, 0, dtype=torch.long), "at least one token"),
        (torch.full((1, 3), VOCAB), "vocab_size=40"),
        (torch.tensor([[3, -1, 2]]), r"input_ids must hold ids in \[0, vocab_size=40\), got 1 outside .*-1…-1"),
    ],
)
def test_bad_input_ids(input_ids: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        random_model(GPT2_TINY)(input_ids)


def test_next_token_loss_checks_shapes() -> None:
    logits = torch.zeros(2, 3, VOCAB)
    torch.testing.assert_close(next_token_loss(logits, torch.zeros(2, 3, dtype=torch.long)), torch.tensor(3.6888794))
    with pytest.raises(ValueError, match="targets"):
        next_token_loss(logits, torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_overfits_one_batch(style: str) -> None:
    model = random_model(STYLES[style]).train()
    input_ids = random_ids(4, 17, seed=1)
    inputs, targets = input_ids[:, :-1], input_ids[:, 1:]  # (4, 16) each
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = next_token_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 3.0 and losses[-1] < 0.1, (losses[0], losses[-1])  # log(40) ≈ 3.7 → memorised


# --- generation with the KV cache --------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_cached_generation_equals_uncached_greedy(style: str) -> None:
    model = random_model(STYLES[style])
    prompt = random_ids(2, 5)
    cached = generate(model, prompt, max_new_tokens=12, temperature=0.0)
    uncached = generate(model, prompt, max_new_tokens=12, temperature=0.0, use_cache=False)
    assert cached.shape == (2, 17)
    assert torch.equal(cached, uncached) and torch.equal(cached[:, :5], prompt)


@pytest.mark.parametrize("style", STYLES)
def test_cached_generation_equals_uncached_sampling(style: str) -> None:
    model = random_model(STYLES[style])
    prompt = random_ids(3, 4)
    settings = {"max_new_tokens": 15, "temperature": 1.5, "top_k": 20, "top_p": 0.95, "repetition_penalty": 1.3}
    cached = generate(model, prompt, generator=torch.Generator().manual_seed(5), **settings)
    uncached = generate(model, prompt, use_cache=False, generator=torch.Generator().manual_seed(5), **settings)
    again = generate(model, prompt, generator=torch.Generator().manual_seed(5), **settings)
    other = generate(model, prompt, generator=torch.Generator().manual_seed(6), **settings)
    assert torch.equal(cached, uncached) and torch.equal(cached, again)
    assert not torch.equal(cached, other)


def test_generation_slides_the_window_past_learned_positions() -> None:
    model = random_model(GPT2_TINY)  # context_length 24
    prompt = random_ids(1, 20)
    cached = generate(model, prompt, max_new_tokens=10, temperature=0.0)
    uncached = generate(model, prompt, max_new_tokens=10, temperature=0.0, use_cache=False)
    assert cached.shape == (1, 30) and torch.equal(cached, uncached)
    with torch.no_grad():
        last = model(cached[:, -25:-1])[:, -1].argmax(-1)  # the window of the last 24 tokens
    assert last.item() == cached[0, -1].item()


def test_generation_stops_at_eos() -> None:
    model = random_model(GPT2_TINY)
    prompt = random_ids(2, 3)
    greedy = generate(model, prompt, max_new_tokens=6, temperature=0.0)
    eos_id = int(greedy[0, 3])  # the first token row 0 generates
    stopped = generate(model, prompt, max_new_tokens=6, temperature=0.0, eos_id=eos_id)
    assert stopped[0, 3] == eos_id and torch.all(stopped[0, 3:] == eos_id)
    if eos_id not in greedy[1, 3:].tolist():
        assert stopped.shape[1] == 9 and torch.equal(stopped[1], greedy[1])


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": 2, "temperature": -1.0}, "temperature"),
        ({"max_new_tokens": 2, "top_k": 0}, "top_k"),
        ({"max_new_tokens": 2, "top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 2, "repetition_penalty": 0.0}, "repetition_penalty"),
        ({"max_new_tokens": 2, "eos_id": VOCAB}, "eos_id"),
    ],
)
def test_generate_validates_arguments(arguments: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        generate(random_model(GPT2_TINY), random_ids(1, 3), **arguments)
    with pytest.raises(ValueError, match="input_ids"):
        generate(random_model(GPT2_TINY), torch.zeros(3, dtype=torch.long), max_new_tokens=1)
    with pytest.raises(ValueError, match="model"):
        generate(nn.Linear(2, 2), random_ids(1, 3), max_new_tokens=1)


def test_generate_checks_the_prompt_ids_once_not_per_token(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmcourse.generation as generation

    model, prompt = random_model(GPT2_TINY), random_ids(2, 3)
    greedy = generate(model, prompt, max_new_tokens=5, temperature=0.0)
    checked, real_check = [], generation.check_token_ids

    def counting_check(*arguments: object) -> None:
        checked.append(arguments[0])
        real_check(*arguments)

    monkeypatch.setattr(generation, "check_token_ids", counting_check)
    monkeypatch.setattr(GPT, "_check_input_ids", lambda *arguments: pytest.fail("the model re-checked the ids"))
    assert torch.equal(generate(model, prompt, max_new_tokens=5, temperature=0.0), greedy)
    assert torch.equal(generate(model, prompt, max_new_tokens=5, temperature=0.0, use_cache=False), greedy)
    assert checked == ["input_ids", "input_ids"]  # once per call
    with pytest.raises(ValueError, match=r"input_ids must hold ids in \[0, vocab_size=40\)"):
        generate(model, torch.tensor([[1, VOCAB]]), max_new_tokens=2)
    with pytest.raises(TypeError, match="input_ids must be an int64 or int32 tensor"):
        generate(model, prompt.float(), max_new_tokens=2)


def test_generate_with_a_tiny_temperature_is_greedy_and_rejects_what_is_not_one() -> None:
    model, prompt = random_model(GPT2_TINY), random_ids(2, 3)
    greedy = generate(model, prompt, max_new_tokens=6, temperature=0.0)
    assert torch.equal(generate(model, prompt, max_new_tokens=6, temperature=1e-40), greedy)
    for temperature in (float("inf"), float("nan"), -1):
        with pytest.raises(ValueError, match="temperature"):
            generate(model, prompt, max_new_tokens=2, temperature=temperature)
    with pytest.raises(TypeError, match="temperature"):
        generate(model, prompt, max_new_tokens=2, temperature="1")  # type: ignore[arg-type]


# --- parity with Hugging Face transformers ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_to_hf_gpt2_gives_the_same_logits(tie_embeddings: bool) -> None:
    model = random_model(GPTConfig(VOCAB, context_length=24, d_model=32, n_heads=4, n_layers=2,
                                   tie_embeddings=tie_embeddings))  # fmt: skip
    perturb(model)
    hf_model = to_hf_gpt2(model).eval()
    input_ids = random_ids(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(input_ids).logits, model(input_ids), atol=1e-5, rtol=1e-5)


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
def test_gpt2_conversion_rejects_other_styles() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    with pytest.raises(ValueError, match="norm='layernorm'"):
        to_hf_gpt2(random_model(LLAMA_TINY))
    with pytest.raises(ValueError, match="n_kv_heads=4"):
        to_hf_gpt2(random_model(GPTConfig(VOCAB, d_model=32, n_heads=4, n_kv_heads=2)))
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        from_hf_gpt2(LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                                                  num_hidden_layers=1, num_attention_heads=2)))  # fmt: skip


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
@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_from_hf_llama_gives_the_same_logits(tie_word_embeddings: bool) -> None:
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
