import math

import pytest
import torch
from torch import nn

from mmcourse.train import History, TrainConfig, adamw, lr_multiplier, train, uses_bf16


def classification_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(16, 8, generator=generator)  # (batch, features)
    labels = torch.randint(0, 4, (16,), generator=generator)  # (batch,)
    return inputs, labels


def cross_entropy(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    inputs, labels = batch
    logits = model(inputs)  # (batch, classes)
    accuracy = (logits.argmax(-1) == labels).float().mean().item()
    return nn.functional.cross_entropy(logits, labels), {"accuracy": accuracy}


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    batch = classification_batch()
    history = train(model, cross_entropy, [batch], TrainConfig(steps=150, learning_rate=1e-2, progress=False))
    assert history.losses[0] > 1.0
    assert history.losses[-1] < 0.05
    assert history.metrics["accuracy"][-1] == 1.0
    assert history.examples == 150 * 16 and history.seconds > 0
    assert not model.training, "train() leaves the model in eval mode"


def test_loss_falls_with_cosine_schedule_and_evaluations() -> None:
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    batches = [classification_batch(seed) for seed in range(4)]
    evaluated = []

    def evaluate(m: nn.Module) -> dict[str, float]:
        evaluated.append(m.training)
        return {"loss": cross_entropy(m, batches[0])[0].item()}

    config = TrainConfig(steps=40, learning_rate=3e-2, schedule="cosine", warmup_steps=5, eval_every=10, progress=False)
    history = train(model, cross_entropy, batches, config, evaluate=evaluate)
    steps, values = history.evaluation_series("loss")
    assert steps == [10, 20, 30, 40] and values[-1] < values[0]
    assert evaluated == [False] * 4, "evaluation runs in eval mode"
    assert history.learning_rates[0] == pytest.approx(3e-2 / 5)
    assert max(history.learning_rates) == pytest.approx(3e-2)


def test_batches_may_be_a_function_of_the_step() -> None:
    seen = []

    def get_batch(step: int):
        seen.append(step)
        return classification_batch(step)

    train(nn.Linear(8, 4), cross_entropy, get_batch, TrainConfig(steps=3, progress=False))
    assert seen == [0, 1, 2]


def test_schedule_shape() -> None:
    config = TrainConfig(steps=100, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(0, config) == pytest.approx(0.1)
    assert lr_multiplier(9, config) == pytest.approx(1.0)
    assert lr_multiplier(55, config) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(100, config) == pytest.approx(0.1)
    assert lr_multiplier(50, TrainConfig(steps=100)) == 1.0


def test_weight_decay_only_on_matrices() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    groups = adamw(model, TrainConfig(weight_decay=0.1)).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", 0),
        ("learning_rate", 0.0),
        ("learning_rate", float("nan")),
        ("learning_rate", float("inf")),
        ("weight_decay", -1.0),
        ("weight_decay", float("nan")),
        ("betas", (0.9,)),
        ("betas", (0.9, 1.0)),
        ("betas", (float("nan"), 0.99)),
        ("grad_clip", 0.0),
        ("grad_clip", float("inf")),
        ("schedule", "linear"),
        ("warmup_steps", 500),
        ("warmup_steps", -1),
        ("min_lr_ratio", 2.0),
        ("min_lr_ratio", float("nan")),
        ("eval_every", -1),
    ],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", 2.5),
        ("steps", "10"),
        ("steps", True),
        ("warmup_steps", 1.0),
        ("eval_every", None),
        ("learning_rate", "1e-3"),
        ("learning_rate", True),
        ("weight_decay", None),
        ("betas", 0.9),
        ("betas", (0.9, "0.99")),
        ("grad_clip", "1"),
        ("schedule", None),
        ("min_lr_ratio", "0.1"),
        ("compile", "yes"),
        ("autocast_bf16", 1),
        ("progress", None),
    ],
)
def test_config_rejects_bad_types_with_type_error(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=field):
        TrainConfig(**{field: value})


def test_config_accepts_ints_for_floats_and_a_list_of_betas() -> None:
    config = TrainConfig(learning_rate=1, weight_decay=0, betas=[0.9, 0.98], grad_clip=None, min_lr_ratio=0)
    assert config.betas == (0.9, 0.98) and config.learning_rate == 1


def test_bad_loss_and_inputs_fail_clearly() -> None:
    model = nn.Linear(8, 4)
    config = TrainConfig(steps=2, progress=False)
    with pytest.raises(ValueError, match="scalar tensor"):
        train(model, lambda m, b: m(b[0]), [classification_batch()], config)
    with pytest.raises(FloatingPointError, match="loss became nan at step 0"):
        train(model, lambda m, b: m(b[0]).sum() * float("nan"), [classification_batch()], config)
    with pytest.raises(ValueError, match="batches yielded nothing"):
        train(model, cross_entropy, [], config)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        train("model", cross_entropy, [classification_batch()], config)  # type: ignore[arg-type]
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters with requires_grad=True"):
        train(frozen, cross_entropy, [classification_batch()], config)


def test_a_custom_gradient_step_and_on_step() -> None:
    """``gradients`` replaces the forward and backward (here: two half batches, each loss halved, as gradient
    accumulation does); the rest of the loop is the same, so the run equals the default one up to rounding."""
    batch = classification_batch()
    seen: list[tuple[int, float]] = []

    def halves(model: nn.Module, loss_fn, batch):  # noqa: ANN001
        total = 0.0
        for part in zip(batch[0].chunk(2), batch[1].chunk(2), strict=True):
            loss, _ = loss_fn(model, part)
            (loss / 2).backward()
            total = total + loss.detach() / 2
        return total

    runs = {}
    for name, gradients in (("default", None), ("halves", halves)):
        torch.manual_seed(0)
        model = nn.Linear(8, 4)
        options = {"gradients": gradients, "on_step": lambda step, loss: seen.append((step, loss))} if gradients else {}
        runs[name] = train(model, cross_entropy, [batch], TrainConfig(steps=5, progress=False), **options).losses
    assert runs["halves"] == pytest.approx(runs["default"], rel=1e-5)
    assert seen == list(enumerate(runs["halves"])), "on_step(step, loss) after every step"


def test_history_continues() -> None:
    model = nn.Linear(8, 4)
    history = History()
    for _ in range(2):
        train(model, cross_entropy, [classification_batch()], TrainConfig(steps=5, progress=False), history=history)
    assert len(history.losses) == 10


def test_lr_lambda_replaces_the_schedule() -> None:
    model = nn.Linear(8, 4)
    config = TrainConfig(steps=4, learning_rate=0.5, schedule="cosine", progress=False)
    history = train(model, cross_entropy, [classification_batch()], config, lr_lambda=lambda step: 1 / (step + 1))
    assert history.learning_rates == pytest.approx([0.5, 0.25, 0.5 / 3, 0.125])


def test_compiled_training_matches_eager_and_updates_the_model() -> None:
    """config.compile runs the forward through torch.compile: the same losses as eager training (up to float
    rounding), the original module's weights are the ones trained, and evaluate gets the original module."""
    batch = classification_batch()
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
        before = model[0].weight.detach().clone()
        seen: list[nn.Module] = []

        def evaluate(module: nn.Module, seen: list[nn.Module] = seen) -> dict[str, float]:
            seen.append(module)
            return {"loss": 0.0}

        config = TrainConfig(steps=5, learning_rate=1e-2, compile=compiled, progress=False)
        history = train(model, cross_entropy, [batch], config, evaluate=evaluate)
        assert seen == [model], "evaluate receives the module itself, not the compiled wrapper"
        assert not torch.equal(model[0].weight, before), "the original module's weights are trained"
        runs[compiled] = history.losses
    assert runs[True] == pytest.approx(runs[False], rel=1e-4)
    assert runs[True][-1] < runs[True][0]


def test_bf16_autocast_only_on_gpus_that_compute_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    config = TrainConfig(autocast_bf16=True)
    hardware = {"bf16": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: hardware["bf16"])
    assert uses_bf16(config, torch.device("cuda"))  # an A100 / H100
    assert not uses_bf16(TrainConfig(autocast_bf16=False), torch.device("cuda"))
    assert not uses_bf16(config, torch.device("cpu"))
    hardware["bf16"] = False  # a T4: bf16 only emulated
    assert not uses_bf16(config, torch.device("cuda:0"))


def test_batch_indices_repeat_by_step_and_draw_like_randint() -> None:
    from mmcourse.train import batch_indices

    generator = torch.Generator().manual_seed(7)
    first, second = torch.randint(10, (4,), generator=generator), torch.randint(3, (4,), generator=generator)
    index, which = batch_indices(7, 4, 10, 3)  # (2, 4): one row per high, drawn in order
    assert torch.equal(index, first) and torch.equal(which, second)
    assert torch.equal(batch_indices(7, 4, 10), first)  # one high: (batch_size,)
    torch.manual_seed(0)
    assert torch.equal(batch_indices(3, 5, 100), batch_indices(3, 5, 100))  # the global seed plays no part
    assert not torch.equal(batch_indices(3, 5, 100), batch_indices(4, 5, 100))
    with pytest.raises(ValueError, match="at least one high"):
        batch_indices(0, 4)
    with pytest.raises(TypeError, match="step"):
        batch_indices(1.0, 4, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="high"):
        batch_indices(0, 4, 0)
