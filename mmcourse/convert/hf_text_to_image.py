"""A few prompts through a pretrained text-to-image pipeline from diffusers: chapter 10's online cell runs sd-turbo on
the book's own captions.

A Stable-Diffusion-style pipeline is four parts, each one we built in the chapter at toy size:

- a CLIP **text encoder** turns the prompt into one vector per token (our caption encoder);
- a **U-Net** predicts the noise in a latent image, reading those token vectors through cross-attention at its
  lower resolutions (our U-Net reads one pooled caption vector through FiLM instead);
- a **VAE** whose latent space the U-Net works in: 8x smaller per side, decoded to pixels once at the end (our
  VQ-VAE's latents, continuous here instead of picked from a codebook);
- a **scheduler** that says which noise levels to visit and how to step between them (our DDIM). sd-turbo is
  distilled to jump from pure noise to an image in one to four steps, without classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from PIL import Image

from mmcourse.checks import check_finite_number, check_int, check_positive_int

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def load_text_to_image_pipeline(
    name_or_path: str,
    device: str | torch.device,
    dtype: torch.dtype | None = None,
    fp16_variant: bool | None = None,
) -> DiffusionPipeline:
    """The pipeline saved at ``name_or_path`` (a hub name or a folder), on ``device``, its progress bar off.

    dtype: None picks float16 on CUDA and float32 elsewhere. fp16_variant: read the ``*.fp16.safetensors`` files
    (sd-turbo ships them: half the download); None reads them exactly when loading in float16. A folder without
    such files then raises diffusers' ValueError, so pass ``fp16_variant=False`` for one.
    """
    if not isinstance(name_or_path, str):
        raise TypeError(f"name_or_path must be a str, got {type(name_or_path).__name__}")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or a torch.device, got {type(device).__name__}")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or None, got {type(dtype).__name__}")
    if fp16_variant is not None and not isinstance(fp16_variant, bool):
        raise TypeError(f"fp16_variant must be a bool or None, got {type(fp16_variant).__name__}")
    if dtype is None:
        dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if fp16_variant is None:
        fp16_variant = dtype == torch.float16
    from diffusers import AutoPipelineForText2Image  # after the checks: importing diffusers takes seconds

    pipeline = AutoPipelineForText2Image.from_pretrained(
        name_or_path, dtype=dtype, variant="fp16" if fp16_variant else None
    )  # dtype= as diffusers 0.42 names it; older releases know only torch_dtype=, deprecated now
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate_with_pipeline(
    pipeline: DiffusionPipeline,
    prompts: Sequence[str],
    steps: int = 1,
    guidance_scale: float = 0.0,
    seed: int = 0,
    size: int | None = None,
) -> list[Image.Image]:
    """One image per prompt, ``size`` x ``size`` pixels (None: the pipeline's own size, 512 for sd-turbo), after
    ``steps`` denoising steps; the same ``seed`` gives the same pixels. guidance_scale 0 (or 1) turns classifier-free
    guidance off, as sd-turbo wants."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of str (one per image), got {type(prompts).__name__}")
    if not prompts:
        raise ValueError(f"prompts must hold at least one prompt, got {prompts!r}")
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise TypeError(f"prompts must hold str only, got a {type(prompt).__name__}")
    check_int("steps", steps, minimum=1)
    check_finite_number("guidance_scale", guidance_scale)
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale!r}")
    check_int("seed", seed, minimum=0)
    if size is not None:
        check_positive_int("size", size)
        if size % 8:
            raise ValueError(f"size must be divisible by 8, as diffusers' pipelines require, got {size}")
    from diffusers import DiffusionPipeline  # after the checks: importing diffusers takes seconds

    if not isinstance(pipeline, DiffusionPipeline):
        raise TypeError(f"pipeline must be a diffusers DiffusionPipeline, got {type(pipeline).__name__}")
    generator = torch.Generator(device=pipeline.device).manual_seed(seed)  # the starting noise, drawn where it is used
    shape = {} if size is None else {"height": size, "width": size}
    output = pipeline(
        prompt=list(prompts),
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="pil",
        **shape,
    )
    return output.images
