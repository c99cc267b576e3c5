"""Data-parallel training (appendix A1): gradient accumulation equals one big batch; two processes with DDP, DDP by
hand and FSDP2 (gloo on 127.0.0.1) give the gradients and weights of one process; bad input names the argument."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mmcourse.distributed import (
    DistributedConfig,
    RunResult,
    accumulate_gradients,
    average_gradients,
    broadcast_parameters,
    character_ids,
    get_batch,
    gpt_loss,
    gradient_sync,
    launch,
    launch_command,
    load_state,
    local_batch,
    local_elements,
    main,
    micro_batches,
    pick_backend,
    pick_device,
    shakespeare_ids,
    train_steps,
    unwrap,
    wrap_model,
)
from mmcourse.gpt import GPT
from mmcourse.train import batch_indices

# A tiny run: seconds, and still a real GPT on real Shakespeare
TINY = DistributedConfig(
    steps=4, check_steps=3, global_batch_size=8, accumulation_steps=2, context_length=16, d_model=32, n_heads=2,
    n_layers=2,
)  # fmt: skip
GRADIENT_TOLERANCE = {"rtol": 1e-5, "atol": 1e-7}  # float32 sums in another order
WEIGHT_TOLERANCE = {"rtol": 0.0, "atol": 1e-5}  # 1% of one AdamW step of lr=1e-3


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY.gpt_config(vocab_size=20))


def random_ids(length: int = 2_000) -> torch.Tensor:
    return torch.randint(20, (length,), generator=torch.Generator().manual_seed(1))


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def one_process(config: DistributedConfig) -> RunResult:
    """The reference every multi-process run is compared with: one process, the whole global batch, the same seed
    and batches as every rank (what the script's strategy 'none' runs)."""
    ids, characters = shakespeare_ids()
    torch.manual_seed(config.seed)
    return train_steps(GPT(config.gpt_config(len(characters))), ids, config)


# ---------------------------------------------------------------------------------------------------------------
# One process: the arithmetic behind data parallelism


def test_averaged_shard_gradients_equal_the_full_batch_gradient() -> None:
    model = tiny_model()
    batch = get_batch(random_ids(), 0, 8, 16)
    gpt_loss(model, batch).backward()
    full = gradients(model)
    shard_gradients = []
    for rank in range(2):  # what two DDP ranks compute, then average
        model.zero_grad()
        gpt_loss(model, local_batch(batch, rank, 2)).backward()
        shard_gradients.append(gradients(model))
    for name, expected in full.items():
        torch.testing.assert_close((shard_gradients[0][name] + shard_gradients[1][name]) / 2, expected)


@pytest.mark.parametrize("accumulation_steps", [1, 2, 4])
def test_gradient_accumulation_equals_one_big_batch(accumulation_steps: int) -> None:
    model = tiny_model()
    batch = get_batch(random_ids(), 3, 8, 16)
    big_loss = gpt_loss(model, batch)
    big_loss.backward()
    full = gradients(model)
    model.zero_grad()
    loss = accumulate_gradients(model, micro_batches(batch, accumulation_steps))
    torch.testing.assert_close(loss, big_loss.detach())
    for name, expected in full.items():
        torch.testing.assert_close(gradients(model)[name], expected, **GRADIENT_TOLERANCE)


def test_training_with_accumulation_matches_training_on_the_whole_batch() -> None:
    ids = random_ids()
    runs = {}
    for steps in (1, 4):
        config = dataclasses.replace(TINY, accumulation_steps=steps)
        runs[steps] = train_steps(tiny_model(), ids, config)
    assert runs[4].losses == pytest.approx(runs[1].losses, abs=1e-6)
    for name, expected in runs[1].checked_weights.items():
        torch.testing.assert_close(runs[4].checked_weights[name], expected, **WEIGHT_TOLERANCE)
    for name, expected in runs[1].first_gradients.items():
        torch.testing.assert_close(runs[4].first_gradients[name], expected, **GRADIENT_TOLERANCE)


def test_batches_repeat_and_shift_by_one() -> None:
    ids = random_ids()
    input_ids, targets = get_batch(ids, 5, 4, 16, seed=2)
    starts = batch_indices(2 * 1_000_003 + 5, 4, len(ids) - 17)  # the step-seeded sampler, seed folded in
    assert torch.equal(input_ids[:, 0], ids[starts])
    again = get_batch(ids, 5, 4, 16, seed=2)
    assert input_ids.shape == targets.shape == (4, 16)
    assert torch.equal(input_ids, again[0]) and torch.equal(targets, again[1])
    assert torch.equal(input_ids[:, 1:], targets[:, :-1])
    assert not torch.equal(input_ids, get_batch(ids, 6, 4, 16, seed=2)[0])
    shards = [local_batch((input_ids, targets), rank, 2) for rank in range(2)]
    assert torch.equal(torch.cat([shard[0] for shard in shards]), input_ids)
    assert [part[0].shape[0] for part in micro_batches((input_ids, targets), 4)] == [1, 1, 1, 1]


def test_character_ids_use_the_vocabulary_and_drop_the_rest() -> None:
    assert character_ids("abca", ["a", "b", "c"]).tolist() == [0, 1, 2, 0]
    assert character_ids("a€z", ["a", "z"]).tolist() == [0, 1]  # € is not in the vocabulary
    assert character_ids("", ["a"]).dtype == torch.int64


def test_real_shakespeare_vocabulary_and_single_process_learns() -> None:
    result = one_process(dataclasses.replace(TINY, steps=6, check_steps=6, learning_rate=3e-3))
    assert result.losses[0] == pytest.approx(torch.log(torch.tensor(84.0)).item(), abs=0.1)  # ln |V| at the start
    assert result.losses[-1] < result.losses[0]
    assert result.first_gradients.keys() == result.checked_weights.keys()


def test_backend_follows_the_device() -> None:
    assert pick_backend("cpu") == "gloo"
    assert pick_backend(torch.device("cuda", 1)) == "nccl"
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device("auto", 1, 2) == torch.device("cpu")
        with pytest.raises(ValueError, match="device='cuda' needs one GPU per process"):
            pick_device("cuda")


def test_gradient_sync_leaves_a_plain_module_alone() -> None:
    model = tiny_model()
    with gradient_sync(model, enabled=False):
        gpt_loss(model, get_batch(random_ids(), 0, 2, 16)).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert unwrap(model) is model


def test_local_elements_counts_parameters_and_adam_state() -> None:
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters())
    parameters = sum(p.numel() for p in model.parameters())
    assert local_elements(model, optimizer) == (parameters, 0)
    gpt_loss(model, get_batch(random_ids(), 0, 2, 16)).backward()
    optimizer.step()
    assert local_elements(model, optimizer) == (parameters, 2 * parameters)  # Adam's two moments


# ---------------------------------------------------------------------------------------------------------------
# Two processes (gloo on 127.0.0.1), launched by torchrun in a subprocess


@pytest.mark.slow
@pytest.mark.enable_socket  # the processes rendezvous and all-reduce over localhost ...
@pytest.mark.allow_hosts(["127.0.0.1"])  # ... and nowhere else
def test_two_processes_match_one_process(tmp_path: Path) -> None:
    strategies = ["ddp", "allreduce", "fsdp"]
    summaries = launch(TINY, strategies, 2, tmp_path, threads_per_process=1, timeout=300, progress=False)
    reference = one_process(TINY)
    for strategy in strategies:
        summary, state = summaries[strategy], load_state(tmp_path, strategy)
        assert (summary["world_size"], summary["backend"], summary["micro_batch_size"]) == (2, "gloo", 2)
        assert summary["losses"] == pytest.approx(reference.losses, abs=1e-5)
        assert state["first_gradients"].keys() == reference.first_gradients.keys()
        for name, expected in reference.first_gradients.items():
            torch.testing.assert_close(state["first_gradients"][name], expected, **GRADIENT_TOLERANCE)
        for name, expected in reference.checked_weights.items():
            torch.testing.assert_close(state["checked_weights"][name], expected, **WEIGHT_TOLERANCE)
    parameters = summaries["ddp"]["parameters"]
    assert summaries["ddp"]["parameter_elements_per_rank"] == parameters
    assert summaries["ddp"]["optimizer_elements_per_rank"] == 2 * parameters
    fsdp_share = summaries["fsdp"]["parameter_elements_per_rank"] / parameters
    assert 0.45 < fsdp_share < 0.55, f"FSDP should store about half the weights on each of 2 ranks: {fsdp_share}"
    assert json.loads((tmp_path / "fsdp.json").read_text())["strategy"] == "fsdp"


@pytest.mark.slow
def test_the_script_runs_one_process_and_equals_the_library(tmp_path: Path) -> None:
    summary = launch(TINY, ["none"], 1, tmp_path, threads_per_process=1, progress=False)["none"]
    reference = one_process(TINY)
    assert summary["world_size"] == 1 and summary["backend"] is None
    assert summary["losses"] == pytest.approx(reference.losses, abs=1e-6)
    for name, weight in load_state(tmp_path, "none")["checked_weights"].items():
        assert torch.equal(weight, reference.checked_weights[name]), name  # the same process, the same numbers


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_failing_run_reports_the_scripts_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="device='cuda' needs one GPU per process"):
        launch(TINY, ["none"], 1, tmp_path, device="cuda", progress=False)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a ValueError naming the argument


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("steps", 0, "steps must be a positive int"),
        ("check_steps", 30, "check_steps=30 must be <= steps=20"),
        ("global_batch_size", 10, "global_batch_size=10 must be divisible by accumulation_steps=4"),
        ("d_model", 30, "d_model=30 must be divisible by n_heads=4"),
        ("learning_rate", 0.0, "learning_rate must be > 0"),
        ("learning_rate", "1e-3", "learning_rate must be a number"),
        ("weight_decay", -1.0, "weight_decay must be >= 0"),
        ("grad_clip", 0.0, "grad_clip must be > 0 or None"),
        ("seed", -1, "seed must be an int >= 0"),
        ("n_layers", True, "n_layers must be a positive int"),
    ],
)
def test_config_names_the_bad_field(field: str, value: object, message: str) -> None:
    settings = {"accumulation_steps": 4} if field == "global_batch_size" else {}
    with pytest.raises(TypeError if isinstance(value, (bool, str)) else ValueError, match=message):
        DistributedConfig(**{**settings, field: value})


def test_config_split_over_ranks() -> None:
    assert DistributedConfig(global_batch_size=16, accumulation_steps=2).micro_batch_size(4) == 2
    with pytest.raises(ValueError, match=r"divisible by world_size=3 × accumulation_steps=2"):
        DistributedConfig(global_batch_size=16, accumulation_steps=2).micro_batch_size(3)
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        TINY.micro_batch_size(0)


def test_batch_functions_name_the_bad_argument() -> None:
    ids, batch = random_ids(), get_batch(random_ids(), 0, 4, 16)
    for call, message in [
        (lambda: get_batch(ids.float(), 0, 4, 16), "ids must be a 1-D int64 tensor"),
        (lambda: get_batch(ids, -1, 4, 16), "step must be an int >= 0"),
        (lambda: get_batch(ids, 0, 0, 16), "batch_size must be a positive int"),
        (lambda: get_batch(ids[:10], 0, 4, 16), "fewer than context_length"),
        (lambda: get_batch(ids, 0, 4, 16, seed=-2), "seed must be an int >= 0"),
        (lambda: local_batch(batch, 2, 2), r"rank must be an int in \[0, world_size=2\)"),
        (lambda: local_batch(batch, 0, 3), "does not split evenly over world_size=3"),
        (lambda: local_batch(batch[0], 0, 2), "batch must be a pair"),
        (lambda: micro_batches(batch, 3), "accumulation_steps=3 equal parts"),
        (lambda: micro_batches((batch[0], batch[1][:, :5]), 2), "same shape"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()


def test_gradient_functions_name_the_bad_argument() -> None:
    model, batch = tiny_model(), get_batch(random_ids(), 0, 4, 16)
    for call, message in [
        (lambda: accumulate_gradients(model, []), "batches must be a non-empty list"),
        (lambda: accumulate_gradients(model, [batch, local_batch(batch, 0, 2)]), "same number of sequences"),
        (lambda: average_gradients(model), "needs a process group"),
        (lambda: broadcast_parameters(model), "needs a process group"),
        (lambda: wrap_model(model, "zero", torch.device("cpu")), "strategy='zero' is not one of"),
        (lambda: wrap_model(model, "ddp", torch.device("cpu")), "strategy='ddp' needs a process group"),
        (lambda: pick_backend("mps"), "runs on 'cpu' \\(gloo\\) or 'cuda' \\(NCCL\\)"),
        (lambda: pick_backend("nonsense"), "device must be a torch.device or a name"),
        (lambda: pick_device("tpu"), "device='tpu' is not one of"),
        (lambda: pick_device("cpu", 2, 2), r"local_rank must be an int in \[0, local_world_size=2\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()
    for call, message in [
        (lambda: wrap_model(torch.nn.Linear(2, 2), "none", torch.device("cpu")), "model must be a mmcourse.gpt.GPT"),
        (lambda: wrap_model(model, "none", "cpu"), "device a torch.device"),
        (lambda: pick_device("cpu", 1.0, 2), "local_rank must be an int"),
    ]:
        with pytest.raises(TypeError, match=message):
            call()


def test_training_and_launching_name_the_bad_argument(tmp_path: Path) -> None:
    model, ids = tiny_model(), random_ids()
    for call, message in [
        (lambda: train_steps(model, ids, TINY, world_size=2), "strategy='none' does not fit world_size=2"),
        (lambda: train_steps(model, ids, TINY, rank=1), r"rank must be an int in \[0, world_size=1\)"),
        (lambda: train_steps(model, ids, TINY, world_size=3, strategy="ddp"), "divisible by world_size=3"),
        (lambda: launch_command(TINY, "ddp", 2, tmp_path), "strategies must be a non-empty list"),
        (lambda: launch_command(TINY, ["ddp", "ddp"], 2, tmp_path), "must not repeat"),
        (lambda: launch_command(TINY, ["none"], 2, tmp_path), "'none' runs alone in one process"),
        (lambda: launch_command(TINY, ["ddp"], 0, tmp_path), "processes must be a positive int"),
        (lambda: launch_command(TINY, ["ddp"], 2, tmp_path, device="gpu"), "device='gpu' is not one of"),
        (lambda: launch_command(TINY, ["ddp"], 3, tmp_path), "divisible by world_size=3"),
        (lambda: launch(TINY, ["ddp"], 2, tmp_path, threads_per_process=0), "threads_per_process must be"),
        (lambda: launch(TINY, ["ddp"], 2, tmp_path, timeout=0), "timeout must be a positive number"),
        (lambda: load_state(tmp_path, "ddp"), "holds no ddp.pt"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()
    for call, message in [
        (lambda: train_steps(model, ids, {"steps": 3}), "config must be a DistributedConfig"),
        (lambda: train_steps(model, ids, TINY, on_step=1), "on_step must be callable"),
        (lambda: launch_command({"steps": 3}, ["ddp"], 2, tmp_path), "config must be a DistributedConfig"),
    ]:
        with pytest.raises(TypeError, match=message):
            call()


def test_launch_command_uses_torchrun_only_for_several_processes(tmp_path: Path) -> None:
    single = launch_command(TINY, ["none"], 1, tmp_path)
    assert single[1:3] == ["-m", "mmcourse.distributed"] and "--steps=4" in single
    several = launch_command(TINY, ["ddp", "fsdp"], 2, tmp_path)
    assert several[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in several
    assert "--rdzv_endpoint=127.0.0.1:0" in several
    assert several.index("--strategy=ddp") > several.index("mmcourse.distributed")


def test_the_script_reports_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path), "--steps", "0"]) == 2
    assert "steps must be a positive int" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--strategy", "ddp"]) == 2  # without torchrun
    assert "need several processes: launch with torchrun" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--strategy", "zero"])
