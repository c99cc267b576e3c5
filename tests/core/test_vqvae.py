import math

import pytest
import torch

from mmcourse.train import TrainConfig, train
from mmcourse.vqvae import (
    LAPLACE_EPSILON,
    VQVAE,
    VectorQuantiser,
    VQVAEConfig,
    code_usage,
    nearest_codes,
    perplexity,
    straight_through,
    vq_losses,
    vqvae_loss,
)

TINY = VQVAEConfig(image_size=16, widths=(16, 32), codebook_size=16, code_dim=8)
CODEBOOK = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # (K=3, D=2)


def quantiser_with(codebook: torch.Tensor, **fields: object) -> VectorQuantiser:
    """A quantiser whose codebook (K, D) is the one given."""
    config = VQVAEConfig(codebook_size=len(codebook), code_dim=codebook.size(1), **fields)
    quantiser = VectorQuantiser(config)
    with torch.no_grad():
        quantiser.codebook.copy_(codebook)
        quantiser.embed_sum.copy_(codebook)  # the EMA sums agree with the codes (cluster_size starts at 1)
    return quantiser


def as_latents(vectors: torch.Tensor) -> torch.Tensor:
    """(N, D) → (1, D, 1, N): one image whose code grid is a single row."""
    return vectors.T[None, :, None, :]


def images(batch: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (batch, 3, H, W)


# ---------------------------------------------------------------------------------------------------------------
# Nearest code, straight-through, losses
# ---------------------------------------------------------------------------------------------------------------


def test_nearest_codes_on_hand_made_vectors() -> None:
    vectors = torch.tensor([[0.1, 0.1], [0.9, -0.2], [0.2, 1.5], [0.5, 0.0], [3.0, 3.0]])
    # (0.5, 0) is 0.5 from codes 0 and 1: the lowest index wins; (3, 3) is closest to (0, 2) (distance² 10 < 13)
    assert nearest_codes(vectors, CODEBOOK).tolist() == [0, 1, 2, 0, 2]


def test_nearest_codes_agree_with_cdist() -> None:
    generator = torch.Generator().manual_seed(0)
    vectors, codebook = torch.randn(200, 8, generator=generator), torch.randn(32, 8, generator=generator)
    torch.testing.assert_close(nearest_codes(vectors, codebook), torch.cdist(vectors, codebook).argmin(dim=1))


def test_the_quantiser_replaces_each_vector_by_its_nearest_code() -> None:
    quantiser = quantiser_with(CODEBOOK).eval()
    vectors = torch.tensor([[0.1, 0.1], [0.2, 1.5], [0.9, -0.2]])
    output = quantiser(as_latents(vectors))
    assert output.indices.tolist() == [[[0, 2, 1]]]
    torch.testing.assert_close(output.quantised, as_latents(CODEBOOK[[0, 2, 1]]))


def test_the_straight_through_gradient_is_the_identity_on_the_encoder_output() -> None:
    quantiser = quantiser_with(CODEBOOK).eval()
    latents = as_latents(torch.tensor([[0.1, 0.1], [0.2, 1.5], [0.9, -0.2]])).requires_grad_()
    weights = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    (quantiser(latents).quantised * weights).sum().backward()
    torch.testing.assert_close(latents.grad, weights)
    inputs = torch.randn(5, 2, requires_grad=True)
    output = straight_through(inputs, torch.zeros(5, 2))
    assert output.abs().sum() == 0  # forward: the quantised values
    output.sum().backward()
    torch.testing.assert_close(inputs.grad, torch.ones(5, 2))


def test_losses_by_hand() -> None:
    quantiser = quantiser_with(CODEBOOK, beta=0.25).eval()
    vectors = torch.tensor([[0.1, 0.1], [0.2, 1.5], [0.9, -0.2]])
    # squared distances to the nearest codes (0, 0), (0, 2), (1, 0): 0.01 + 0.01, 0.04 + 0.25, 0.01 + 0.04
    expected = (0.02 + 0.29 + 0.05) / 6  # a mean over the 3 vectors x 2 dimensions
    output = quantiser(as_latents(vectors))
    assert output.codebook_loss.item() == pytest.approx(expected)
    assert output.commitment_loss.item() == pytest.approx(expected)
    assert output.loss.item() == pytest.approx(expected * 1.25)


def test_the_codebook_loss_moves_only_the_codes_and_the_commitment_loss_only_the_encoder() -> None:
    inputs = torch.tensor([[0.1, 0.1], [0.9, -0.2]], requires_grad=True)
    codebook = CODEBOOK.clone().requires_grad_()
    codebook_loss, commitment_loss = vq_losses(inputs, codebook[[0, 1]])
    codebook_loss.backward()
    assert inputs.grad is None
    # d/de of mean (e - z)² over 4 elements: (e - z) / 2 on the codes used, 0 on code 2
    torch.testing.assert_close(codebook.grad, torch.tensor([[-0.05, -0.05], [0.05, 0.1], [0.0, 0.0]]))
    codebook.grad = None
    commitment_loss.backward()
    assert codebook.grad is None
    torch.testing.assert_close(inputs.grad, torch.tensor([[0.05, 0.05], [-0.05, -0.1]]))


# ---------------------------------------------------------------------------------------------------------------
# Codebook usage
# ---------------------------------------------------------------------------------------------------------------


def test_perplexity_of_uniform_usage_is_the_codebook_size_and_of_one_code_is_one() -> None:
    assert perplexity(torch.full((8,), 1 / 8)).item() == pytest.approx(8.0)
    assert perplexity(torch.tensor([0.0, 1.0, 0.0, 0.0])).item() == pytest.approx(1.0)
    assert perplexity(torch.tensor([0.5, 0.5, 0.0, 0.0])).item() == pytest.approx(2.0)


def test_code_usage_counts_indices_of_any_shape() -> None:
    indices = torch.tensor([[[0, 0], [3, 1]]])  # (1, 2, 2)
    torch.testing.assert_close(code_usage(indices, 5), torch.tensor([0.5, 0.25, 0.0, 0.25, 0.0]))
    assert perplexity(code_usage(torch.arange(6), 6)).item() == pytest.approx(6.0)


# ---------------------------------------------------------------------------------------------------------------
# EMA codebook and dead-code restarts
# ---------------------------------------------------------------------------------------------------------------


def test_ema_codes_move_towards_the_mean_of_their_vectors() -> None:
    quantiser = quantiser_with(CODEBOOK, ema=True, ema_decay=0.9).train()
    assert not quantiser.codebook.requires_grad
    vectors = torch.tensor([[0.2, 0.0], [0.4, 0.2], [1.2, 0.1]])  # two go to code 0, one to code 1
    output = quantiser(as_latents(vectors))
    assert output.loss.item() == pytest.approx(0.25 * output.commitment_loss.item())  # no codebook term
    counts = torch.tensor([0.9 + 0.1 * 2, 0.9 + 0.1 * 1, 0.9])  # N ← γ N + (1 - γ) n, from N = 1
    sums = 0.9 * CODEBOOK + 0.1 * torch.stack([vectors[0] + vectors[1], vectors[2], torch.zeros(2)])
    torch.testing.assert_close(quantiser.cluster_size, counts)
    total = counts.sum()
    smoothed = (counts + LAPLACE_EPSILON) / (total + 3 * LAPLACE_EPSILON) * total
    torch.testing.assert_close(quantiser.codebook, sums / smoothed[:, None])
    assert quantiser.codebook[0, 0] > 0 and quantiser.codebook[1, 0] > 1  # towards (0.3, 0.1) and (1.2, 0.1)


def test_eval_mode_changes_nothing() -> None:
    quantiser = quantiser_with(CODEBOOK, ema=True, dead_code_threshold=2.0).eval()
    quantiser(as_latents(torch.tensor([[0.2, 0.0], [5.0, 5.0]])))
    torch.testing.assert_close(quantiser.codebook, CODEBOOK)
    torch.testing.assert_close(quantiser.cluster_size, torch.ones(3))


def test_a_dead_code_restarts_at_an_encoder_output() -> None:
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0]])
    quantiser = quantiser_with(codebook, ema_decay=0.9, dead_code_threshold=0.5).train()
    vectors = torch.tensor([[0.1, 0.0], [0.9, 0.1], [0.2, 0.1], [1.1, 0.0]])
    for _ in range(10):  # code 2 is never chosen: its count decays from 1 to 0.9^7 < 0.5
        quantiser(as_latents(vectors))
    restarted = quantiser.codebook[2]
    assert (vectors - restarted).abs().sum(dim=1).min() < 1e-6  # the code is now one of the batch's vectors
    torch.testing.assert_close(quantiser.codebook[:2], codebook[:2])  # the live codes are untouched


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------


def test_encode_and_decode_are_the_forward_pass_in_two_halves() -> None:
    torch.manual_seed(0)
    model = VQVAE(TINY).eval()
    x = images()
    with torch.no_grad():
        output = model(x)
        indices = model.encode(x)
        decoded = model.decode(indices)
    assert indices.shape == (4, TINY.latent_size, TINY.latent_size) == (4, 4, 4)
    assert output.reconstruction.shape == x.shape
    torch.testing.assert_close(indices, output.indices)
    torch.testing.assert_close(decoded, output.reconstruction)
    expected = output.reconstruction_loss + output.codebook_loss + TINY.beta * output.commitment_loss
    torch.testing.assert_close(output.loss, expected)


@pytest.mark.slow
@pytest.mark.parametrize("ema", [False, True])
def test_overfitting_one_batch_lowers_the_reconstruction_error(ema: bool) -> None:
    from mmcourse.data.scenes import SceneConfig, generate_scenes, render_scenes

    scene_config = SceneConfig(image_size=24, digits=False, noise_std=0.0)
    batch = render_scenes(generate_scenes(8, scene_config), scene_config)  # (8, 3, 24, 24)
    config = VQVAEConfig(image_size=24, widths=(16, 32), codebook_size=32, code_dim=8, ema=ema, dead_code_threshold=1.0)
    torch.manual_seed(0)
    model = VQVAE(config)
    with torch.no_grad():
        before = model.eval()(batch).reconstruction_loss.item()
    history = train(model, vqvae_loss, [batch], TrainConfig(steps=100, learning_rate=3e-3, progress=False))
    with torch.no_grad():
        after = model(batch).reconstruction_loss.item()
    assert after < 0.2 * before, (before, after)
    assert history.metrics["perplexity"][-1] > 5  # restarts keep many codes in use (without them: about 4)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("image_size", 18, ValueError),  # not divisible by 2**2
        ("widths", (), ValueError),
        ("codebook_size", 0, ValueError),
        ("code_dim", 1.5, TypeError),
        ("beta", -0.1, ValueError),
        ("ema_decay", 1.0, ValueError),
        ("dead_code_threshold", -1, ValueError),
        ("ema", 1, TypeError),
        ("beta", math.nan, ValueError),
    ],
)
def test_config_errors_name_the_field(field: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=field):
        VQVAEConfig(**{**TINY.__dict__, field: value})


def test_input_errors_say_what_was_expected() -> None:
    model = VQVAE(TINY)
    with pytest.raises(ValueError, match=r"images must be \(batch, 3, 16, 16\), got shape \(4, 3, 8, 8\)"):
        model(images(size=8))
    with pytest.raises(TypeError, match="images must be a float tensor"):
        model.encode((images() * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"indices must hold ids in \[0, codebook_size=16\)"):
        model.decode(torch.full((1, 4, 4), 16))
    with pytest.raises(ValueError, match=r"indices must be \(batch, h, w\)"):
        model.decode(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"latents must be \(batch, code_dim=8, h, w\)"):
        model.quantiser(torch.zeros(1, 4, 2, 2))
    with pytest.raises(TypeError, match="config must be a VQVAEConfig"):
        VQVAE({"image_size": 16})
