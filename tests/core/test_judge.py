import itertools
import math

import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from mmcourse.judge import (
    AttributeJudge,
    JudgeConfig,
    attribute_accuracy,
    frechet_distance,
    gaussian_frechet_distance,
    judge_loss,
    mean_pairwise_distance,
    psd_sqrt,
)

TINY = JudgeConfig(image_size=32, widths=(8, 16), hidden=32)


def images(batch: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (batch, 3, H, W)


def random_labels(batch: int, config: JudgeConfig = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randint(classes, (batch,), generator=generator) for name, classes in config.heads}


def random_covariance(dim: int, seed: int) -> torch.Tensor:
    """A random symmetric positive definite (dim, dim) float64 matrix."""
    factor = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return factor @ factor.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# The classifier
# ---------------------------------------------------------------------------------------------------------------


def test_features_logits_and_predictions_have_the_right_shapes() -> None:
    torch.manual_seed(0)
    model = AttributeJudge(TINY)
    x = images(batch=5)
    assert model.features(x).shape == (5, TINY.hidden)
    logits = model(x)
    assert list(logits) == ["colour", "shape", "size", "position"]
    assert {name: tuple(value.shape) for name, value in logits.items()} == {
        name: (5, classes) for name, classes in TINY.heads
    }
    predictions = model.predict(x)
    for name, classes in TINY.heads:
        assert predictions[name].dtype == torch.int64 and predictions[name].device.type == "cpu"
        assert predictions[name].shape == (5,)
        assert ((predictions[name] >= 0) & (predictions[name] < classes)).all()


def test_the_features_keep_the_position_of_the_object() -> None:
    # the same bright square in two places: a globally averaged map would give (nearly) the same features
    torch.manual_seed(0)
    model = AttributeJudge(TINY).eval()
    x = torch.zeros(2, 3, 32, 32)
    x[0, :, 4:12, 4:12] = 1.0
    x[1, :, 20:28, 20:28] = 1.0
    with torch.no_grad():
        features = model.features(x)  # (2, hidden)
    assert (features[0] - features[1]).abs().max() > 1e-3


def test_predict_is_the_argmax_in_chunks_and_restores_the_mode() -> None:
    torch.manual_seed(0)
    model = AttributeJudge(TINY).train()
    x = images(batch=7)
    predictions = model.predict(x, batch_size=3)  # chunks of 3, 3 and 1
    assert model.training
    with torch.no_grad():
        logits = model.eval()(x)
    for name in logits:
        torch.testing.assert_close(predictions[name], logits[name].argmax(dim=1))
    model.predict(x)
    assert not model.training  # eval stays eval
    assert all(len(value) == 0 for value in model.predict(images(batch=0)).values())


def test_wrong_images_are_refused() -> None:
    model = AttributeJudge(TINY)
    with pytest.raises(ValueError, match=r"images must be \(batch, 3, 32, 32\), got shape \(2, 3, 16, 16\)"):
        model(images(batch=2, size=16))
    with pytest.raises(ValueError, match=r"images must be \(batch, 3, 32, 32\)"):
        model.features(images(batch=2, size=16))
    with pytest.raises(ValueError, match=r"images must be \(batch, 3, 32, 32\)"):
        model.predict(images(batch=2, size=16))
    with pytest.raises(TypeError, match="images must be a float tensor"):
        model.predict((images() * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(images(), batch_size=0)


# ---------------------------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------------------------


def test_judge_loss_is_the_sum_of_the_heads_cross_entropies() -> None:
    torch.manual_seed(0)
    model = AttributeJudge(TINY)
    x, labels = images(batch=6), random_labels(6)
    labels["shape"][:2] = -1  # two digits: no shape
    labels["digit"] = torch.full((6,), 3)  # an extra key, ignored
    logits = model(x)
    expected = sum(F.cross_entropy(logits[name], labels[name], ignore_index=-1) for name in logits)
    torch.testing.assert_close(judge_loss(model, x, labels), expected)
    # -1 rows get no loss: the shape term is the mean over the four applicable rows
    torch.testing.assert_close(
        F.cross_entropy(logits["shape"], labels["shape"], ignore_index=-1),
        F.cross_entropy(logits["shape"][2:], labels["shape"][2:]),
    )


def test_a_head_with_no_applicable_label_adds_zero_not_nan() -> None:
    torch.manual_seed(0)
    model = AttributeJudge(TINY)
    x, labels = images(batch=4), random_labels(4)
    labels["shape"] = torch.full((4,), -1)  # all digits
    assert math.isnan(F.cross_entropy(model(x)["shape"], labels["shape"], ignore_index=-1).item())  # the trap
    loss = judge_loss(model, x, labels)
    logits = model(x)
    others = sum(F.cross_entropy(logits[name], labels[name]) for name in ("colour", "size", "position"))
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, others)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_judge_loss_refuses_incomplete_or_misshapen_labels() -> None:
    model = AttributeJudge(TINY)
    x, labels = images(batch=4), random_labels(4)
    with pytest.raises(ValueError, match="labels has no 'size'"):
        judge_loss(model, x, {name: value for name, value in labels.items() if name != "size"})
    with pytest.raises(ValueError, match=r"labels\['colour'\] must be \(batch=4,\)"):
        judge_loss(model, x, {**labels, "colour": labels["colour"][:3]})
    with pytest.raises(TypeError, match=r"labels\['colour'\] must be an int64 tensor"):
        judge_loss(model, x, {**labels, "colour": labels["colour"].float()})
    with pytest.raises(TypeError, match="model must be an AttributeJudge"):
        judge_loss(torch.nn.Linear(2, 2), x, labels)


@pytest.mark.slow
def test_the_judge_overfits_one_batch_of_real_scenes() -> None:
    from mmcourse.data.scenes import SceneConfig, generate_scenes, render_scenes, scene_labels

    scene_config = SceneConfig(image_size=32, digits=False, sizes=("medium", "large"))
    scenes = generate_scenes(32, scene_config)
    x, labels = render_scenes(scenes, scene_config), scene_labels(scenes, scene_config)  # (32, 3, 32, 32), (32,)s
    torch.manual_seed(0)
    model = AttributeJudge(TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = judge_loss(model, x, labels).item()
    assert before == pytest.approx(math.log(6 * 3 * 2 * 5), rel=0.2)  # about chance on every head
    for _ in range(50):
        loss = judge_loss(model, x, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = judge_loss(model, x, labels).item()
    assert after < 0.02 * before, (before, after)
    assert attribute_accuracy(model.predict(x), labels, ("colour", "shape")).all()


# ---------------------------------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------------------------------


def test_attribute_accuracy_needs_every_named_attribute_right() -> None:
    labels = {"colour": torch.tensor([0, 1, 2, 3]), "shape": torch.tensor([0, 1, 2, 0])}
    predictions = {"colour": torch.tensor([0, 1, 0, 3]), "shape": torch.tensor([0, 2, 2, 0])}
    assert attribute_accuracy(predictions, labels, ("colour", "shape")).tolist() == [True, False, False, True]
    assert attribute_accuracy(predictions, labels, ["colour"]).tolist() == [True, True, False, True]
    assert attribute_accuracy(predictions, labels, ("shape",)).tolist() == [True, False, True, True]


def test_attribute_accuracy_refuses_inapplicable_labels_and_bad_input() -> None:
    labels = {"colour": torch.tensor([0, 1]), "shape": torch.tensor([0, -1])}
    predictions = {"colour": torch.tensor([0, 1]), "shape": torch.tensor([0, 0])}
    with pytest.raises(ValueError, match=r"labels\['shape'\] holds -1"):
        attribute_accuracy(predictions, labels, ("colour", "shape"))
    assert attribute_accuracy(predictions, labels, ("colour",)).tolist() == [True, True]
    with pytest.raises(ValueError, match="predictions has no 'size'"):
        attribute_accuracy(predictions, {**labels, "size": torch.tensor([0, 1])}, ("size",))
    with pytest.raises(ValueError, match=r"predictions\['colour'\] must be \(batch=2,\)"):
        attribute_accuracy({"colour": torch.tensor([0])}, labels, ("colour",))
    with pytest.raises(ValueError, match="names must be a non-empty sequence"):
        attribute_accuracy(predictions, labels, "colour")


# ---------------------------------------------------------------------------------------------------------------
# Square root and Fréchet distance
# ---------------------------------------------------------------------------------------------------------------


def test_psd_sqrt_squares_back_and_agrees_with_scipy() -> None:
    matrix = random_covariance(6, seed=0)
    root = psd_sqrt(matrix)
    torch.testing.assert_close(root @ root, matrix, rtol=0, atol=1e-10)
    torch.testing.assert_close(root, root.T)
    expected = torch.from_numpy(scipy.linalg.sqrtm(matrix.numpy()).real)
    torch.testing.assert_close(root, expected, rtol=0, atol=1e-6)
    assert psd_sqrt(matrix.float()).dtype == torch.float32


def test_psd_sqrt_of_a_singular_matrix_clamps_tiny_negative_eigenvalues() -> None:
    vector = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    matrix = vector @ vector.T  # rank 1: two eigenvalues 0, eigh may return them a rounding error below
    root = psd_sqrt(matrix)
    assert not root.isnan().any()
    torch.testing.assert_close(root, matrix / vector.norm())  # √(v vᵀ) = v vᵀ / ||v||


def test_psd_sqrt_refuses_non_square_or_non_symmetric_matrices() -> None:
    with pytest.raises(ValueError, match=r"matrix must be a square matrix \(d, d\), got shape \(2, 3\)"):
        psd_sqrt(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="matrix must be symmetric"):
        psd_sqrt(torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(TypeError, match="matrix must be a float tensor"):
        psd_sqrt(torch.eye(2, dtype=torch.int64))


def test_gaussian_frechet_distance_agrees_with_the_formula_through_scipy() -> None:
    generator = torch.Generator().manual_seed(0)
    mean_a, mean_b = torch.randn(5, generator=generator, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    cov_a, cov_b = random_covariance(5, seed=1), random_covariance(5, seed=2)
    root = scipy.linalg.sqrtm((cov_a @ cov_b).numpy()).real  # the general, non-symmetric square root
    expected = (mean_a - mean_b).pow(2).sum().item() + (cov_a + cov_b).trace().item() - 2 * root.trace()
    assert gaussian_frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-9)
    assert gaussian_frechet_distance(mean_a, cov_a, mean_a, cov_a) == pytest.approx(0.0, abs=1e-10)
    assert gaussian_frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(
        gaussian_frechet_distance(mean_b, cov_b, mean_a, cov_a), rel=1e-9
    )  # symmetric in its two Gaussians


def test_gaussian_frechet_distance_in_one_dimension_is_the_closed_form() -> None:
    # d = 1: Σ = σ², so (Σ_a Σ_b)^{1/2} = σ_a σ_b and d² = (μ_a - μ_b)² + σ_a² + σ_b² - 2 σ_a σ_b
    #                                                    = (μ_a - μ_b)² + (σ_a - σ_b)²
    mu_a, sigma_a, mu_b, sigma_b = 0.5, 2.0, -1.0, 0.75
    distance = gaussian_frechet_distance(
        torch.tensor([mu_a]), torch.tensor([[sigma_a**2]]), torch.tensor([mu_b]), torch.tensor([[sigma_b**2]])
    )
    assert distance == pytest.approx((mu_a - mu_b) ** 2 + (sigma_a - sigma_b) ** 2, rel=1e-6)


def test_gaussian_frechet_distance_refuses_mismatched_shapes() -> None:
    cov = torch.eye(3)
    with pytest.raises(ValueError, match=r"mean_b must be \(d=3,\)"):
        gaussian_frechet_distance(torch.zeros(3), cov, torch.zeros(2), cov)
    with pytest.raises(ValueError, match="cov_b must be"):
        gaussian_frechet_distance(torch.zeros(3), cov, torch.zeros(3), torch.eye(2))
    with pytest.raises(ValueError, match="cov_a must be symmetric"):
        gaussian_frechet_distance(torch.zeros(2), torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.zeros(2), cov[:2, :2])


def test_frechet_distance_of_samples() -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 4, generator=generator) * torch.tensor([1.0, 2.0, 0.5, 1.0])  # (300, 4)
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    # a shift changes only the mean: the distance is the squared length of the shift
    assert frechet_distance(features, features + 1.0) == pytest.approx(4 * 1.0**2, rel=1e-6)
    assert frechet_distance(features, features + 2.0) == pytest.approx(4 * 2.0**2, rel=1e-6)
    other = torch.randn(300, 4, generator=generator)  # another sample of a different Gaussian
    assert frechet_distance(features, other) > frechet_distance(features, features[:150])


def test_frechet_distance_refuses_bad_samples() -> None:
    with pytest.raises(ValueError, match=r"features_b must be \(N, d\) with N >= 2 rows, got shape \(1, 4\)"):
        frechet_distance(torch.randn(5, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="same width d"):
        frechet_distance(torch.randn(5, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"features_a must be \(N, d\)"):
        frechet_distance(torch.randn(5), torch.randn(5, 1))
    with pytest.raises(TypeError, match="features_a must be a float tensor"):
        frechet_distance(torch.ones(5, 4, dtype=torch.int64), torch.randn(5, 4))


def test_mean_pairwise_distance_is_the_mean_over_pairs() -> None:
    features = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    pairs = itertools.combinations(range(6), 2)
    brute_force = sum((features[i] - features[j]).norm().item() for i, j in pairs) / 15
    assert mean_pairwise_distance(features) == pytest.approx(brute_force, rel=1e-6)
    assert mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="N >= 2"):
        mean_pairwise_distance(torch.randn(1, 3))


# ---------------------------------------------------------------------------------------------------------------
# Bad config
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("widths", (8, 16, 32, 64, 128, 256), ValueError),  # 2**6 does not divide 32
        ("widths", (), ValueError),
        ("image_size", 30, ValueError),  # not divisible by 2**2
        ("hidden", 0, ValueError),
        ("channels", 1.5, TypeError),
        ("heads", (("colour", 1),), ValueError),  # one class: nothing to tell apart
        ("heads", ((3, 4),), TypeError),
        ("heads", (("colour", 2.0),), TypeError),
        ("heads", (("colour", 2), ("colour", 3)), ValueError),
        ("heads", (), ValueError),
        ("heads", (("a.b", 2),), ValueError),
        ("heads", (("type", 2),), ValueError),  # nn.Module.type: no name for a submodule
    ],
)
def test_config_errors_name_the_field(field: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=field):
        JudgeConfig(**{**TINY.__dict__, field: value})


def test_the_model_needs_a_judge_config() -> None:
    with pytest.raises(TypeError, match="config must be a JudgeConfig"):
        AttributeJudge({"image_size": 32})
