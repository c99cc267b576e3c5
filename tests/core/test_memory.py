import pytest
import torch
from torch import nn

from mmcourse.gpt import GPT, GPTConfig, next_token_loss
from mmcourse.memory import T4_MEMORY_BYTES, gpt_activation_bytes, saved_tensor_bytes, training_memory


def step_inputs(config: GPTConfig, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(config.vocab_size, (batch, length + 1), generator=generator)  # (batch, L + 1)
    return tokens[:, :-1].clone(), tokens[:, 1:].clone()  # own storages, as a data loader gives them


@pytest.mark.parametrize(
    ("sizes", "batch", "length"),
    [
        (dict(vocab_size=50, context_length=16, d_model=32, n_heads=4, n_layers=1), 2, 16),
        (dict(vocab_size=65, context_length=64, d_model=64, n_heads=4, n_layers=2), 3, 40),
        (dict(vocab_size=100, context_length=32, d_model=48, n_heads=2, n_layers=3, d_ff=80), 1, 32),
    ],
)
def test_formula_equals_what_autograd_saves(sizes: dict, batch: int, length: int) -> None:
    config = GPTConfig(**sizes)
    torch.manual_seed(0)
    model = GPT(config).train()
    input_ids, targets = step_inputs(config, batch, length)

    fused = saved_tensor_bytes(model, lambda: next_token_loss(model(input_ids), targets))
    assert fused == gpt_activation_bytes(config, batch, length)
    # attention_weights runs the same forward pass with the explicit attention: the difference is what it keeps more
    explicit_extra = saved_tensor_bytes(model, lambda: model.attention_weights(input_ids)) - saved_tensor_bytes(
        model, lambda: model(input_ids)
    )
    by_formula = gpt_activation_bytes(config, batch, length, "explicit") - gpt_activation_bytes(config, batch, length)
    assert explicit_extra == by_formula


def test_activations_grow_linearly_with_batch_and_the_explicit_attention_quadratically_with_length() -> None:
    config = GPTConfig(vocab_size=65, context_length=512, d_model=64, n_heads=4, n_layers=2)
    fused = [gpt_activation_bytes(config, batch, 128) for batch in (1, 2, 4)]
    assert fused[2] - fused[1] == 2 * (fused[1] - fused[0])  # the same increment per sequence
    extra = [gpt_activation_bytes(config, 1, n, "explicit") - gpt_activation_bytes(config, 1, n) for n in (128, 256)]
    assert 3.5 < extra[1] / extra[0] < 4.1  # the (L, L) weights: four times as many at twice the length


def test_training_memory_counts_weights_once_and_adamw_twice() -> None:
    config = GPTConfig(vocab_size=65, context_length=16, d_model=32, n_heads=2, n_layers=1)
    model = GPT(config)  # the LM head shares the embedding matrix: counted once
    parameters = sum(p.numel() for p in model.parameters())
    memory = training_memory(model, activations=1000)
    assert memory.weights == memory.gradients == 4 * parameters
    assert memory.optimizer_state == 8 * parameters
    assert memory.total == 16 * parameters + 1000
    model.token_embedding.weight.requires_grad_(False)
    frozen = training_memory(model, activations=0, optimizer="sgd")
    assert frozen.weights == 4 * parameters and frozen.gradients < memory.gradients and frozen.optimizer_state == 0


def test_saved_tensor_bytes_leaves_out_the_weights() -> None:
    layer = nn.Linear(100, 100)
    inputs = torch.randn(3, 100)
    # the linear layer saves its input (and its weight, which is not counted); the sum saves nothing
    assert saved_tensor_bytes(layer, lambda: layer(inputs).sum()) == inputs.untyped_storage().nbytes() == 1200


def test_the_appendix_gpu_model_fits_a_t4_by_the_formula() -> None:
    config = GPTConfig(vocab_size=65, context_length=256, d_model=384, n_heads=6, n_layers=6)
    memory = training_memory(GPT(config), gpt_activation_bytes(config, 64, 256))
    assert memory.total < T4_MEMORY_BYTES / 2


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda c: gpt_activation_bytes("gpt", 1, 8), TypeError, "config must be a GPTConfig"),
        (lambda c: gpt_activation_bytes(c, 0, 8), ValueError, "batch must be a positive int"),
        (lambda c: gpt_activation_bytes(c, 1, 17), ValueError, "length=17 is more than context_length=16"),
        (lambda c: gpt_activation_bytes(c, 1, 8, "flash"), ValueError, "attention='flash' is not one of"),
        (lambda c: gpt_activation_bytes(GPTConfig(vocab_size=9, dropout=0.1), 1, 8), ValueError, "'dropout': 0.1"),
        (lambda c: gpt_activation_bytes(GPTConfig.llama_style(9, d_model=64), 1, 8), ValueError, "'norm': 'rmsnorm'"),
        (lambda c: training_memory(GPT(c), -1), ValueError, "activations must be an int >= 0"),
        (lambda c: training_memory(GPT(c), 1.5), TypeError, "activations must be an int"),
        (lambda c: training_memory(GPT(c), 0, "adam"), ValueError, "optimizer='adam' is not one of"),
        (lambda c: saved_tensor_bytes(GPT(c), None), TypeError, "forward must be a function of no arguments"),
    ],
)
def test_bad_input_is_named(call, error: type[Exception], message: str) -> None:  # noqa: ANN001
    config = GPTConfig(vocab_size=9, context_length=16, d_model=16, n_heads=2, n_layers=1)
    with pytest.raises(error, match=message):
        call(config)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_peak_of_a_training_step_is_at_least_the_estimate() -> None:
    config = GPTConfig(vocab_size=65, context_length=256, d_model=384, n_heads=6, n_layers=6)
    torch.manual_seed(0)
    model = GPT(config).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters())
    input_ids, targets = (t.cuda() for t in step_inputs(config, 16, 256))
    for _ in range(2):  # the second step has AdamW's state allocated
        torch.cuda.reset_peak_memory_stats()
        loss = next_token_loss(model(input_ids), targets)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
    peak = torch.cuda.max_memory_allocated()
    estimate = training_memory(model, gpt_activation_bytes(config, 16, 256)).total
    assert 0.9 * estimate < peak < 2 * estimate, (peak, estimate)
