"""Interactive explorers for Jupyter (ipywidgets). The book shows a static figure beside each one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def model_attentions(model: Any, tokenizer: Any, text: str) -> tuple[torch.Tensor, list[str]]:
    """Run a Hugging Face encoder on ``text``; return its attention weights (layers, heads, L, L) and tokens.

    The model must be loaded with ``attn_implementation="eager"`` (fused kernels return no weights).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=64)
    with torch.no_grad():
        output = model(**encoded, output_attentions=True)
    if not output.attentions or output.attentions[0] is None:
        raise ValueError("the model returned no attention weights: load it with attn_implementation='eager'")
    attn_weights = torch.stack(output.attentions)[:, 0]  # (layers, heads, L, L)
    return attn_weights, tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])


def attention_explorer(model: Any, tokenizer: Any, text: str = "The cat sat on the mat because it was tired."):
    """A text box and layer/head sliders over a Hugging Face encoder's attention maps."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from mmcourse.book.viz import attention_heatmap

    n_layers = model.config.num_hidden_layers
    n_heads = model.config.num_attention_heads
    text_box = widgets.Text(value=text, description="sentence", layout=widgets.Layout(width="60%"))
    layer = widgets.IntSlider(value=0, min=0, max=n_layers - 1, description="layer")
    head = widgets.IntSlider(value=0, min=0, max=n_heads - 1, description="head")
    output = widgets.Output()

    def redraw(*_: object) -> None:
        with output:
            output.clear_output(wait=True)
            try:
                attn_weights, tokens = model_attentions(model, tokenizer, text_box.value)
            except ValueError as error:
                print(error)
                return
            figure, ax = plt.subplots(figsize=(5, 4.5))
            attention_heatmap(attn_weights[layer.value, head.value], tokens, tokens, ax=ax,
                              title=f"layer {layer.value}, head {head.value}")  # fmt: skip
            plt.show()

    for control in (text_box, layer, head):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([text_box, widgets.HBox([layer, head]), output])


def sampling_explorer(
    model: Any,
    encode: Any,
    decode: Any,
    prompt: str = "ROMEO:",
    max_new_tokens: int = 200,
):
    """Temperature, top-k and top-p sliders over a language model's samples from ``prompt`` (seeded, so one
    setting always gives the same text). ``encode``: str → list of ids; ``decode``: list of ids → str."""
    import ipywidgets as widgets

    from mmcourse.generation import generate

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    prompt_box = widgets.Text(value=prompt, description="prompt")
    temperature = widgets.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.05, description="temperature")
    top_k = widgets.IntSlider(value=0, min=0, max=100, description="top_k (0: off)")
    top_p = widgets.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top_p")
    seed = widgets.IntSlider(value=0, min=0, max=20, description="seed")
    output = widgets.Output()
    device = next(model.parameters()).device

    def redraw(*_: object) -> None:
        with output:
            output.clear_output(wait=True)
            ids = encode(prompt_box.value)
            if not ids:
                print("type a prompt")
                return
            input_ids = torch.tensor([ids], device=device)  # (1, T)
            generator = torch.Generator(device=device).manual_seed(seed.value)
            sample = generate(model, input_ids, max_new_tokens, temperature=temperature.value,
                              top_k=top_k.value or None, top_p=top_p.value, generator=generator)  # fmt: skip
            print(decode(sample[0].tolist()))

    for control in (prompt_box, temperature, top_k, top_p, seed):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([prompt_box, widgets.HBox([temperature, top_k]), widgets.HBox([top_p, seed]), output])


def zero_shot_explorer(
    model: Any,
    tokenize: Any,
    images: torch.Tensor,
    prompts: Sequence[str],
    titles: Sequence[str] | None = None,
):
    """Pick an image, edit the class prompts (one per line): the bars show a CLIP model's zero-shot probabilities.

    ``model`` has ``encode_image``, ``encode_text`` and ``logit_scale`` (``mmcourse.clip.CLIP``); ``tokenize``:
    list of str → (input_ids, attention_mask); images: (N, 3, H, W).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from mmcourse.book.viz import zero_shot_figure
    from mmcourse.clip import zero_shot_classify

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, 3, H, W) tensor, got {getattr(images, 'shape', images)!r}")
    if not prompts:
        raise ValueError("prompts is empty: give at least one class prompt")
    index = widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image")
    prompt_box = widgets.Textarea(value="\n".join(prompts), description="prompts", rows=min(len(prompts), 10))
    output = widgets.Output()
    device = next(model.parameters()).device

    def redraw(*_: object) -> None:
        with output:
            output.clear_output(wait=True)
            current = [line.strip() for line in prompt_box.value.splitlines() if line.strip()]
            if not current:
                print("type at least one prompt, one per line")
                return
            image = images[index.value : index.value + 1]  # (1, 3, H, W)
            with torch.no_grad():
                image_embeds = model.encode_image(image.to(device))  # (1, D)
                input_ids, attention_mask = tokenize(current)
                text_embeds = model.encode_text(input_ids.to(device), attention_mask.to(device))  # (C, D)
                probabilities, _ = zero_shot_classify(image_embeds, text_embeds, model.logit_scale())
            title = None if titles is None else [titles[index.value]]
            zero_shot_figure(image.cpu(), current, probabilities.cpu(), title)
            plt.show()

    for control in (index, prompt_box):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([index, prompt_box, output])
