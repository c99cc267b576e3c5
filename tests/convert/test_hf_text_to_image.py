"""generate_with_pipeline on a tiny random Stable Diffusion pipeline built offline (a CLIP text encoder, a U-Net, a VAE,
a DDIM scheduler, a CLIP tokenizer from a vocabulary we write), saved and reloaded through
load_text_to_image_pipeline as chapter 10's online cell loads sd-turbo (mmcourse.convert.hf_text_to_image)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import urllib3  # noqa: F401 - imported before sockets are blocked: its import opens one to probe for IPv6
from PIL import Image

from mmcourse.convert.hf_text_to_image import generate_with_pipeline, load_text_to_image_pipeline

CAPTIONS = ["a large red circle on the left", "a small blue square"]
LATENT_SIZE, VAE_FACTOR = 8, 2  # two VAE stages halve each side once: 16-pixel images by default
CONTEXT_LENGTH = 77  # CLIP's: the pipeline pads every prompt to the tokenizer's model_max_length


def write_tiny_clip_vocabulary(folder: Path) -> None:
    """vocab.json and merges.txt for CLIP's byte-level BPE with no merges: every byte alone and with the end-of-word
    mark "</w>", plus the two special tokens: 514 tokens."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(char + "</w>" for char in alphabet)]
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def tiny_stable_diffusion(vocabulary: Path):
    """A random StableDiffusionPipeline with 8- and 16-channel stages, a 1-layer 16-d text encoder, sd-turbo's
    scheduler settings on DDIM."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(vocabulary, model_max_length=CONTEXT_LENGTH)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=CONTEXT_LENGTH,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    )  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        sample_size=LATENT_SIZE * VAE_FACTOR, in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
    )  # fmt: skip
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing")  # fmt: skip
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder a tiny pipeline is saved in, full-precision files only (as save_pretrained writes them)."""
    vocabulary = tmp_path_factory.mktemp("vocabulary")
    write_tiny_clip_vocabulary(vocabulary)
    folder = tmp_path_factory.mktemp("tiny_stable_diffusion")
    tiny_stable_diffusion(vocabulary).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline(saved_pipeline: Path):
    return load_text_to_image_pipeline(str(saved_pipeline), "cpu")


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])  # (images, height, width, 3) uint8


@pytest.mark.slow
def test_load_text_to_image_pipeline_reloads_through_the_auto_class(pipeline) -> None:
    """AutoPipelineForText2Image picks StableDiffusionPipeline from model_index.json; float32 on a CPU."""
    from diffusers import StableDiffusionPipeline

    assert isinstance(pipeline, StableDiffusionPipeline)
    assert pipeline.device.type == "cpu"
    assert pipeline.unet.dtype == pipeline.vae.dtype == pipeline.text_encoder.dtype == torch.float32


@pytest.mark.slow
def test_generate_with_pipeline_gives_one_image_per_prompt(pipeline) -> None:
    images = generate_with_pipeline(pipeline, CAPTIONS)
    assert len(images) == len(CAPTIONS)
    for image in images:
        assert isinstance(image, Image.Image)
        assert image.mode == "RGB"
        assert image.size == (LATENT_SIZE * VAE_FACTOR,) * 2  # the pipeline's own size when size is None
    resized = generate_with_pipeline(pipeline, CAPTIONS[:1], steps=2, size=24)
    assert [image.size for image in resized] == [(24, 24)]


@pytest.mark.slow
def test_generate_with_pipeline_repeats_with_the_same_seed(pipeline) -> None:
    first = pixels(generate_with_pipeline(pipeline, CAPTIONS, steps=2, seed=7))
    again = pixels(generate_with_pipeline(pipeline, CAPTIONS, steps=2, seed=7))
    other = pixels(generate_with_pipeline(pipeline, CAPTIONS, steps=2, seed=8))
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()


@pytest.mark.slow
def test_generate_with_pipeline_listens_to_the_prompt(pipeline) -> None:
    """Two batches with one seed start from the same noise: the second images share their prompt and are equal, the
    first ones differ in the prompt alone, and in their pixels."""
    mixed = pixels(generate_with_pipeline(pipeline, [CAPTIONS[0], CAPTIONS[1]], seed=3))
    same = pixels(generate_with_pipeline(pipeline, [CAPTIONS[1], CAPTIONS[1]], seed=3))
    np.testing.assert_array_equal(mixed[1], same[1])
    assert (mixed[0] != same[0]).any()


@pytest.mark.slow
def test_load_text_to_image_pipeline_reads_fp16_files_only_when_asked(saved_pipeline: Path, tmp_path: Path) -> None:
    """diffusers raises for variant="fp16" on a folder without *.fp16.* files; with them, it reads those."""
    with pytest.raises(ValueError, match="variant"):
        load_text_to_image_pipeline(str(saved_pipeline), "cpu", fp16_variant=True)
    load_text_to_image_pipeline(str(saved_pipeline), "cpu").save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    reloaded = load_text_to_image_pipeline(str(tmp_path), "cpu", fp16_variant=True)
    assert reloaded.unet.dtype == torch.float32  # the files' names say fp16; dtype says what they load as


@pytest.mark.parametrize(
    ("changes", "error", "field"),
    [
        ({"prompts": "a large red circle on the left"}, TypeError, "prompts"),
        ({"prompts": []}, ValueError, "prompts"),
        ({"prompts": ["a circle", 3]}, TypeError, "prompts"),
        ({"steps": 0}, ValueError, "steps"),
        ({"steps": 1.0}, TypeError, "steps"),
        ({"guidance_scale": -1.0}, ValueError, "guidance_scale"),
        ({"guidance_scale": "0"}, TypeError, "guidance_scale"),
        ({"seed": -1}, ValueError, "seed"),
        ({"size": 20}, ValueError, "size"),
        ({"size": 16.0}, TypeError, "size"),
    ],
)
def test_generate_with_pipeline_rejects_bad_inputs(changes, error, field) -> None:
    arguments = {"prompts": CAPTIONS, "steps": 1, "guidance_scale": 0.0, "seed": 0, "size": None} | changes
    with pytest.raises(error, match=field):
        generate_with_pipeline(None, **arguments)  # checked before the pipeline is looked at


@pytest.mark.slow
def test_generate_with_pipeline_rejects_what_is_no_pipeline(pipeline) -> None:
    with pytest.raises(TypeError, match="pipeline"):
        generate_with_pipeline(pipeline.unet, CAPTIONS)  # a part of a pipeline is not one


@pytest.mark.parametrize(
    ("arguments", "field"),
    [(({"path": "sd-turbo"}, "cpu"), "name_or_path"), (("sd-turbo", 0), "device"),
     (("sd-turbo", "cpu", "float16"), "dtype"), (("sd-turbo", "cpu", None, "fp16"), "fp16_variant")],
)  # fmt: skip
def test_load_text_to_image_pipeline_rejects_bad_arguments(arguments, field) -> None:
    with pytest.raises(TypeError, match=field):
        load_text_to_image_pipeline(*arguments)  # checked before anything is read
