"""Parity of our Vision Transformer with transformers' ViTModel, through ``to_hf_vit``."""

import pytest
import torch

from mmcourse.convert.vision import to_hf_vit
from mmcourse.vision import VisionTransformer, ViTConfig

TINY = ViTConfig(image_size=16, patch_size=4, d_model=32, n_heads=2, n_layers=2, d_ff=64)


def test_vit_equals_transformers_vit_model() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(TINY).eval()
    hf_model = to_hf_vit(model).eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # (batch, 3, H, W)
    with torch.no_grad():
        states = model.hidden_states(x)  # (2, 1 + P, 32)
        torch.testing.assert_close(states, hf_model(pixel_values=x).last_hidden_state)
        torch.testing.assert_close(model(x), states[:, 0])  # cls pooling = the [CLS] row
    assert not hf_model.training and hf_model.config.num_hidden_layers == TINY.n_layers


def test_to_hf_vit_copies_the_weights_and_keeps_the_mode() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(TINY).train()
    hf_model = to_hf_vit(model)
    assert hf_model.training, "the copy is in the model's mode"
    with torch.no_grad():
        model.cls_token.add_(1.0)
    assert not torch.equal(hf_model.embeddings.cls_token, model.cls_token), "a copy, not shared tensors"
    with pytest.raises(TypeError, match="VisionTransformer"):
        to_hf_vit(torch.nn.Linear(2, 2))
