from __future__ import annotations

import pytest
import torch
from torch import nn

from mmcourse.generation import KVCache, generate
from mmcourse.gpt import GPT, GPTConfig, RMSNorm, gpt_parameter_count, next_token_loss

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


# --- config ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error", "field"),
    [
        ({"vocab_size": 0}, ValueError, "vocab_size"),
        ({"context_length": True}, TypeError, "context_length"),
        ({"d_model": -8}, ValueError, "d_model"),
        ({"d_model": 32.0}, TypeError, "d_model"),
        ({"n_heads": 3}, ValueError, "n_heads"),
        ({"n_layers": 0}, ValueError, "n_layers"),
        ({"d_ff": 0}, ValueError, "d_ff"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"dropout": "0.1"}, TypeError, "dropout"),
        ({"bias": 1}, TypeError, "bias"),
        ({"norm": "batchnorm"}, ValueError, "norm='batchnorm' is not one of \\('layernorm', 'rmsnorm'\\)"),
        ({"mlp": "relu"}, ValueError, "mlp='relu' is not one of \\('gelu', 'swiglu'\\)"),
        ({"positions": "sinusoidal"}, ValueError, "positions='sinusoidal' is not one of \\('learned', 'rotary'\\)"),
        ({"n_kv_heads": 3}, ValueError, "n_kv_heads"),
        ({"n_kv_heads": 0}, ValueError, "n_kv_heads"),
        ({"rope_base": 0.0}, ValueError, "rope_base"),
        ({"norm_eps": -1e-5}, ValueError, "norm_eps"),
        ({"tie_embeddings": None}, TypeError, "tie_embeddings"),
        ({"mlp": "swiglu"}, ValueError, "d_ff must be set"),
        ({"positions": "rotary", "d_model": 12, "n_heads": 4}, ValueError, "head_dim"),
    ],
)
def test_config_rejects_bad_fields(overrides: dict, error: type[Exception], field: str) -> None:
    with pytest.raises(error, match=field):
        GPTConfig(**{"vocab_size": VOCAB, **overrides})


def test_config_defaults_and_llama_style() -> None:
    config = GPTConfig(VOCAB)
    assert (config.d_ff, config.n_kv_heads, config.head_dim) == (512, 4, 32)
    llama = GPTConfig.llama_style(VOCAB, d_model=576, n_heads=9, n_kv_heads=3)
    assert (llama.norm, llama.mlp, llama.positions, llama.bias) == ("rmsnorm", "swiglu", "rotary", False)
    assert llama.d_ff == 1536  # 8/3 · 576, SmolLM2's size
    assert GPTConfig.llama_style(VOCAB, d_ff=100).d_ff == 100


def test_gpt_rejects_a_config_of_another_type() -> None:
    with pytest.raises(TypeError, match="config must be a GPTConfig"):
        GPT({"vocab_size": VOCAB})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config must be a GPTConfig"):
        gpt_parameter_count("gpt2")  # type: ignore[arg-type]


# --- parameters and initialisation -------------------------------------------------------------------------------


def count_by_formula(config: GPTConfig) -> int:
    """Where every parameter sits, written out: embeddings, n_layers × (2 norms, attention, MLP), final norm, head."""
    d, d_ff, bias, kv = config.d_model, config.d_ff, int(config.bias), config.n_kv_heads * config.head_dim
    norm = d * (2 if config.norm == "layernorm" and config.bias else 1)  # weight (+ bias)
    attention = 2 * d * d + 2 * d * kv + bias * (2 * d + 2 * kv)  # q and out: d → d; k and v: d → kv
    mlp = 2 * d * d_ff + bias * (d_ff + d) if config.mlp == "gelu" else 3 * d * d_ff + bias * (2 * d_ff + d)
    embeddings = config.vocab_size * d + (config.context_length * d if config.positions == "learned" else 0)
    head = 0 if config.tie_embeddings else config.vocab_size * d
    return embeddings + config.n_layers * (2 * norm + attention + mlp) + norm + head


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
def test_parameter_count(config: GPTConfig) -> None:
    assert gpt_parameter_count(config) == sum(p.numel() for p in GPT(config).parameters()) == count_by_formula(config)


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
    norm = RMSNorm(4, eps=1e-12)
    x = torch.tensor([[1.0, -1.0, 1.0, -1.0], [2.0, 2.0, 2.0, 2.0]])
    torch.testing.assert_close(norm(x), x.sign())


# --- the forward pass ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_changing_a_later_token_never_changes_earlier_logits(style: str) -> None:
    model = random_model(STYLES[style])
    input_ids = random_ids(2, 12)
    changed = input_ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % VOCAB
    with torch.no_grad():
        logits, changed_logits = model(input_ids), model(changed)  # (2, 12, VOCAB)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 12, VOCAB)
    torch.testing.assert_close(changed_logits[:, :7], logits[:, :7], rtol=0, atol=0)
    assert (changed_logits[:, 7:] - logits[:, 7:]).abs().amax(dim=-1).min() > 0


@pytest.mark.parametrize("style", STYLES)
def test_cached_chunks_equal_one_full_pass(style: str) -> None:
    model = random_model(STYLES[style])
    input_ids = random_ids(3, 11)
    cache = model.new_cache()
    with torch.no_grad():
        full = model(input_ids)  # (3, 11, VOCAB)
        chunks = [model(input_ids[:, start:stop], cache=cache) for start, stop in ((0, 5), (5, 6), (6, 11))]
    assert isinstance(cache, KVCache) and cache.length == 11
    k, v = cache.layers[0]
    assert k.shape == v.shape == (3, model.config.n_kv_heads, 11, model.config.head_dim)
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("style", STYLES)
def test_attention_weights_are_causal_and_follow_the_cache(style: str) -> None:
    model = random_model(STYLES[style])
    input_ids = random_ids(2, 9)
    with torch.no_grad():
        attn_weights = model.attention_weights(input_ids)
        cache = model.new_cache()
        model(input_ids[:, :4], cache=cache)
        cached_weights = model.attention_weights(input_ids[:, 4:], cache=cache)
    assert attn_weights.shape == (2, 2, 4, 9, 9)  # (n_layers, batch, n_heads, T, T)
    assert torch.all(attn_weights.triu(diagonal=1) == 0)
    torch.testing.assert_close(attn_weights.sum(-1), torch.ones(2, 2, 4, 9))
    torch.testing.assert_close(cached_weights, attn_weights[..., 4:, :], atol=1e-6, rtol=1e-5)


def test_attention_weights_are_those_of_the_fused_path() -> None:
    """The last layer's weights, applied by hand to its values, give that layer's fused output."""
    model = random_model(GPT2_TINY)
    input_ids = random_ids(2, 9)
    captured = {}
    attention = model.blocks[-1].attention
    hooks = [
        attention.v_proj.register_forward_hook(lambda module, args, output: captured.update(v=output)),
        attention.out_proj.register_forward_hook(lambda module, args, output: captured.update(context=args[0])),
    ]
    with torch.no_grad():
        model(input_ids)  # the fused kernel: its values and its attention output
        for hook in hooks:
            hook.remove()
        weights = model.attention_weights(input_ids)[-1]  # (batch, n_heads, T, T), the explicit run
    v = captured["v"].view(2, 9, 4, 8).transpose(1, 2)  # (batch, n_heads, T, head_dim)
    by_hand = (weights @ v).transpose(1, 2).reshape(2, 9, 32)  # (batch, T, d_model)
    torch.testing.assert_close(by_hand, captured["context"], atol=1e-6, rtol=1e-5)


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
    ("call", "error", "message"),
    [
        (lambda model: model(torch.zeros(2, 3)), TypeError, "input_ids must be an int64 or int32 tensor"),
        (lambda model: model([[1, 2]]), TypeError, "input_ids must be an int64 or int32 tensor"),
        (lambda model: model(torch.zeros(3, dtype=torch.long)), ValueError, r"input_ids must be \(batch, T\)"),
        (lambda model: model(torch.zeros(1, 0, dtype=torch.long)), ValueError, "T >= 1"),
        (lambda model: model.forward_embeddings(torch.zeros(1, 3, 7)), ValueError, "d_model=32"),
        (lambda model: model(torch.zeros(1, 3, dtype=torch.long), cache=KVCache(5)), ValueError, "n_layers=2"),
    ],
)
def test_bad_inputs_name_the_field(call, error: type[Exception], message: str) -> None:  # noqa: ANN001
    with pytest.raises(error, match=message):
        call(random_model(GPT2_TINY))


def test_the_forward_pass_never_reads_tensor_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """No .item(), no bool(tensor), no id range check: each would make the host wait for the GPU, every call.
    (The ids' range is checked once where they enter: ``generate`` checks its prompt.)"""
    models = {style: random_model(config) for style, config in STYLES.items()}
    input_ids = random_ids(2, 6)

    def host_read(*arguments: object) -> None:
        raise AssertionError("a tensor's value was read on the host")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    for model in models.values():
        cache = model.new_cache()
        logits = model(input_ids[:, :4], cache=cache)  # (2, 4, VOCAB)
        model(input_ids[:, 4:], cache=cache)
        next_token_loss(logits, input_ids[:, 1:5]).backward()
        model.forward_embeddings(model.token_embedding(input_ids))


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
    ("arguments", "error", "field"),
    [
        ({"max_new_tokens": -1}, ValueError, "max_new_tokens"),
        ({"max_new_tokens": 2.0}, TypeError, "max_new_tokens"),
        ({"max_new_tokens": 2, "temperature": -1.0}, ValueError, "temperature"),
        ({"max_new_tokens": 2, "top_k": 0}, ValueError, "top_k"),
        ({"max_new_tokens": 2, "top_p": 1.5}, ValueError, "top_p"),
        ({"max_new_tokens": 2, "repetition_penalty": 0.0}, ValueError, "repetition_penalty"),
        ({"max_new_tokens": 2, "repetition_penalty": True}, TypeError, "repetition_penalty"),
        ({"max_new_tokens": 2, "eos_id": VOCAB}, ValueError, "eos_id"),
    ],
)
def test_generate_validates_arguments(arguments: dict, error: type[Exception], field: str) -> None:
    with pytest.raises(error, match=field):
        generate(random_model(GPT2_TINY), random_ids(1, 3), **arguments)


def test_generate_checks_the_model_and_the_prompt() -> None:
    model = random_model(GPT2_TINY)
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, T\)"):
        generate(model, torch.zeros(3, dtype=torch.long), max_new_tokens=1)
    with pytest.raises(TypeError, match="model must be a mmcourse.gpt.GPT"):
        generate(nn.Linear(2, 2), random_ids(1, 3), max_new_tokens=1)
    with pytest.raises(ValueError, match=r"input_ids must hold ids in \[0, vocab_size=40\), got 1 outside .*40…40"):
        generate(model, torch.tensor([[1, VOCAB]]), max_new_tokens=2)  # an out-of-range prompt id
    with pytest.raises(TypeError, match="input_ids must be an int64 or int32 tensor"):
        generate(model, random_ids(1, 3).float(), max_new_tokens=2)


def test_generate_checks_the_prompt_ids_once_not_per_token(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmcourse.generation as generation

    model, prompt = random_model(GPT2_TINY), random_ids(2, 3)
    greedy = generate(model, prompt, max_new_tokens=5, temperature=0.0)
    checked, real_check = [], generation.check_token_ids

    def counting_check(*arguments: object) -> None:
        checked.append(arguments[0])
        real_check(*arguments)

    monkeypatch.setattr(generation, "check_token_ids", counting_check)
    assert torch.equal(generate(model, prompt, max_new_tokens=5, temperature=0.0), greedy)
    assert torch.equal(generate(model, prompt, max_new_tokens=5, temperature=0.0, use_cache=False), greedy)
    assert checked == ["input_ids", "input_ids"]  # once per call, not once per token


def test_generate_with_a_tiny_temperature_is_greedy_and_rejects_what_is_not_one() -> None:
    model, prompt = random_model(GPT2_TINY), random_ids(2, 3)
    greedy = generate(model, prompt, max_new_tokens=6, temperature=0.0)
    assert torch.equal(generate(model, prompt, max_new_tokens=6, temperature=1e-40), greedy)
    for temperature in (float("inf"), float("nan"), -1):
        with pytest.raises(ValueError, match="temperature"):
            generate(model, prompt, max_new_tokens=2, temperature=temperature)
    with pytest.raises(TypeError, match="temperature"):
        generate(model, prompt, max_new_tokens=2, temperature="1")  # type: ignore[arg-type]
