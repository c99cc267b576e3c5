import pytest
import torch
import torch.nn.functional as F

from mmcourse.vision import CNNConfig, ConvNet, PatchEmbedding, VisionTransformer, ViTConfig, patchify

TINY = ViTConfig(image_size=16, patch_size=4, d_model=32, n_heads=2, n_layers=2, d_ff=64)


def images(batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (batch, 3, H, W)


def test_patchify_cuts_row_major_channel_first_patches() -> None:
    x = images(size=8)
    patches = patchify(x, 4)  # (2, 4, 48)
    assert patches.shape == (2, 4, 3 * 4 * 4)
    torch.testing.assert_close(patches[1, 0], x[1, :, :4, :4].flatten())  # top left
    torch.testing.assert_close(patches[1, 1], x[1, :, :4, 4:].flatten())  # top right: row-major
    torch.testing.assert_close(patches[0, 2], x[0, :, 4:, :4].flatten())  # bottom left


def test_patch_embedding_is_a_linear_map_of_each_flattened_patch() -> None:
    torch.manual_seed(0)
    embedding = PatchEmbedding(TINY)
    x = images()
    weight = embedding.projection.weight.flatten(1)  # (d_model, C·p·p), flattened as patchify flattens
    expected = patchify(x, 4) @ weight.T + embedding.projection.bias  # (batch, n_patches, d_model)
    torch.testing.assert_close(embedding(x), expected)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_vit_pools_its_hidden_states(pooling: str) -> None:
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(**{**TINY.__dict__, "pooling": pooling})).eval()
    x = images()
    with torch.no_grad():
        states = model.hidden_states(x)  # (2, 1 + P, 32)
        pooled = model(x)
    assert states.shape == (2, 1 + TINY.n_patches, 32) and pooled.shape == (2, 32)
    torch.testing.assert_close(pooled, states[:, 0] if pooling == "cls" else states[:, 1:].mean(dim=1))


def test_vit_attention_weights_are_stacked_rows_that_sum_to_one() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(TINY).eval()
    with torch.no_grad():
        weights = model.attention_weights(images())
    assert weights.shape == (TINY.n_layers, 2, TINY.n_heads, 1 + TINY.n_patches, 1 + TINY.n_patches)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert (weights >= 0).all()


def test_vit_sees_where_things_are() -> None:
    """Position embeddings make the output depend on where a patch is, not only on which patches there are."""
    torch.manual_seed(0)
    model = VisionTransformer(TINY).eval()
    x = torch.zeros(1, 3, 16, 16)
    left, right = x.clone(), x.clone()
    left[..., :4, :4], right[..., :4, 12:] = 1.0, 1.0
    with torch.no_grad():
        assert not torch.allclose(model(left), model(right), atol=1e-4)


@pytest.mark.parametrize(
    ("field", "value"),
    [("patch_size", 5), ("n_heads", 3), ("pooling", "max"), ("dropout", 1.0), ("d_model", 0), ("n_layers", True)],
)
def test_vit_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(TypeError if isinstance(value, bool) else ValueError, match=field):
        ViTConfig(**{**TINY.__dict__, field: value})


def test_image_shape_errors_say_what_was_expected() -> None:
    model = VisionTransformer(TINY)
    with pytest.raises(ValueError, match=r"images must be \(batch, 3, 16, 16\), got shape \(2, 3, 8, 8\)"):
        model(images(size=8))
    with pytest.raises(TypeError, match="images must be a float tensor"):
        model((images() * 255).to(torch.uint8))
    with pytest.raises(TypeError, match="images"):
        model(images().numpy())
    with pytest.raises(ValueError, match="patch_size"):
        patchify(images(size=10), 4)
    with pytest.raises(TypeError, match="ViTConfig"):
        VisionTransformer({"image_size": 16})
    with pytest.raises(TypeError, match="CNNConfig"):
        ConvNet(TINY)


def test_convnet_shapes_and_position_sensitivity() -> None:
    torch.manual_seed(0)
    model = ConvNet(CNNConfig(image_size=16, widths=(8, 16), out_features=24)).eval()
    assert model(images()).shape == (2, 24)
    x = torch.zeros(1, 3, 16, 16)
    left, right = x.clone(), x.clone()
    left[..., 6:10, 0:4], right[..., 6:10, 12:16] = 1.0, 1.0
    with torch.no_grad():  # the flattened feature map keeps where an object is; a global average pool would not
        assert not torch.allclose(model(left), model(right), atol=1e-4)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [({"image_size": 18}, "image_size"), ({"widths": ()}, "widths"), ({"widths": (8, 0)}, "widths"),
     ({"out_features": -1}, "out_features")],
)  # fmt: skip
def test_cnn_config_errors_name_the_field(arguments: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CNNConfig(**{"image_size": 16, "widths": (8, 16), **arguments})


@pytest.mark.parametrize("tower", ["vit", "cnn"])
def test_each_tower_overfits_one_batch_of_labels(tower: str) -> None:
    """Learning, not only running: a linear head on the tower fits 16 random images' labels."""
    torch.manual_seed(0)
    if tower == "vit":
        encoder = VisionTransformer(TINY)
    else:
        encoder = ConvNet(CNNConfig(image_size=16, widths=(8, 16), out_features=32))
    model = torch.nn.Sequential(encoder, torch.nn.Linear(encoder.out_features, 4))
    x, labels = images(16), torch.arange(16) % 4
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(x), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], f"{losses[0]:.3f} → {losses[-1]:.3f}"
