"""A vision-language model (视觉语言模型), LLaVA-style (chapter 9): an image tower, a connector, a language model.

Chapter 5's image tower (a ViT or the CNN, frozen) turns an image into P patch features; a small *connector* maps
them to N vectors of the language model's width; they replace the ``<image>`` placeholder of a chat prompt, whose
one token is first expanded into N (``expand_image_placeholder``), and the language model (:class:`mmcourse.gpt.GPT`,
SmolLM2 in the chapter) reads the mixed sequence through ``GPT.forward_embeddings``. Four connectors:

- ``linear``: one linear map per patch (LLaVA, Liu et al. 2023), N = P;
- ``mlp``: linear → GELU → linear (LLaVA-1.5), N = P;
- ``pixel_shuffle``: every s × s block of neighbouring patches concatenated into one token, then a linear map
  (SmolVLM, nanoVLM), N = P / s² — 4x fewer tokens at s = 2;
- ``resampler``: a fixed number of learned queries cross-attend to the patches (Flamingo's perceiver resampler,
  BLIP-2's Q-Former), N = ``n_queries`` whatever P is;
- ``words``: each patch writes one token per *slot*, a softmax-weighted mixture of the embeddings of a few words
  the LLM already reads (``word_ids``, e.g. the colours, then the shapes), N = P × slots. Its word logits can be
  trained on their own, with the words as labels (``word_alignment_loss``), before the LLM is ever run.

Training is visual instruction tuning (视觉指令微调) with the loss on the answer tokens only (chapter 8's
``sft_batch``): stage 1 trains the connector alone, stage 2 the connector and LoRA adapters on the language model
(``prepare_stage``). Batches are right-padded: the causal mask keeps every real token from seeing the padding after
it, so the model needs no attention mask, and the positions 0 … T-1 it gives are ``position_ids`` on every real
token. ``vlm_batch`` checks the placeholders once, on the host; the forward pass checks shapes only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.alignment import masked_next_token_loss, sft_batch
from mmcourse.checks import check_int, check_positive_int, check_token_ids
from mmcourse.finetune import mark_trainable
from mmcourse.generation import evaluating
from mmcourse.gpt import GPT, check_input_ids
from mmcourse.layers import DecoderLayer
from mmcourse.lora import LoRALinear, apply_lora
from mmcourse.prompting import chatml
from mmcourse.vision import ConvNet, VisionTransformer, check_images

IMAGE_TOKEN = "<image>"  # the placeholder in the prompt text; the tokenizer must make it one token
CONNECTORS = ("linear", "mlp", "pixel_shuffle", "resampler", "words")


@dataclass(frozen=True)
class VLMConfig:
    image_token_id: int  # the placeholder's id; may be one past the LLM's vocabulary (a placeholder is never embedded)
    connector: str = "mlp"  # one of CONNECTORS
    pixel_shuffle_factor: int = 2  # "pixel_shuffle": s, every s × s block of patches becomes one token
    n_queries: int = 16  # "resampler": learned queries, one image token each
    resampler_heads: int = 4  # "resampler": attention heads; they must divide the image tower's width
    resampler_layers: int = 1  # "resampler": layers of (query self-attention, cross-attention to the patches, MLP)
    word_ids: tuple[tuple[int, ...], ...] = ()  # "words": per slot, the LLM token ids its tokens mix (>= 2 each)

    def __post_init__(self) -> None:
        check_int("image_token_id", self.image_token_id, minimum=0)
        if not isinstance(self.connector, str):
            raise TypeError(f"connector must be a str, one of {CONNECTORS}, got {type(self.connector).__name__}")
        if self.connector not in CONNECTORS:
            raise ValueError(f"connector={self.connector!r} is not one of {CONNECTORS}")
        for name in ("pixel_shuffle_factor", "n_queries", "resampler_heads", "resampler_layers"):
            check_positive_int(name, getattr(self, name))
        if not isinstance(self.word_ids, tuple) or not all(isinstance(slot, tuple) for slot in self.word_ids):
            raise TypeError(f"word_ids must be a tuple of tuples of token ids, got {self.word_ids!r}")
        for slot, ids in enumerate(self.word_ids):
            if len(ids) < 2 or len(set(ids)) != len(ids):
                raise ValueError(f"word_ids[{slot}] must hold at least two distinct token ids, got {ids}")
            for i in ids:
                check_int(f"word_ids[{slot}]", i, minimum=0)
        if (self.connector == "words") != bool(self.word_ids):
            raise ValueError(f"word_ids must be given for connector='words' and only for it, got connector="
                             f"{self.connector!r} and {len(self.word_ids)} slots")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Patch features and connectors
# ---------------------------------------------------------------------------------------------------------------


def tower_grid(vision_tower: nn.Module) -> tuple[int, int]:
    """(side, width) of an image tower's patch features: a side × side grid of width-wide vectors."""
    if isinstance(vision_tower, VisionTransformer):
        return vision_tower.config.image_size // vision_tower.config.patch_size, vision_tower.config.d_model
    if isinstance(vision_tower, ConvNet):
        return vision_tower.config.image_size // 2 ** len(vision_tower.config.widths), vision_tower.config.widths[-1]
    got = type(vision_tower).__name__
    raise TypeError(
        f"vision_tower must be a mmcourse.vision VisionTransformer or ConvNet (CLIP's image_encoder), got {got}"
    )


def patch_features(vision_tower: nn.Module, images: Tensor) -> Tensor:
    """images (batch, C, H, W) → patch features (batch, P = side², width), row by row over the grid: a ViT's final
    patch states ([CLS] dropped), or the CNN's last feature map (before the head that flattens and projects it)."""
    tower_grid(vision_tower)  # TypeError for another tower
    check_images(images, vision_tower.config.channels, vision_tower.config.image_size)
    if isinstance(vision_tower, VisionTransformer):
        return vision_tower.hidden_states(images)[:, 1:]  # (batch, P, d_model)
    feature_map = vision_tower.features(images)  # (batch, width, side, side)
    return feature_map.flatten(2).transpose(1, 2)  # (batch, side², width)


def _grid_side(name: str, tokens: Tensor, factor: int) -> int:
    """The side of the square grid of ``tokens`` (batch, side², d); ValueError unless ``factor`` divides it."""
    check_positive_int("factor", factor)
    if not isinstance(tokens, Tensor) or tokens.dim() != 3:
        raise ValueError(f"{name} must be (batch, n_tokens, d), got {getattr(tokens, 'shape', type(tokens).__name__)}")
    side = math.isqrt(tokens.size(1))
    if side * side != tokens.size(1) or side % factor:
        raise ValueError(f"{name} must hold a square grid of tokens whose side is divisible by factor={factor}, got "
                         f"{tokens.size(1)} tokens")  # fmt: skip
    return side


def pixel_shuffle(features: Tensor, factor: int = 2) -> Tensor:
    """Space-to-depth: patch features (batch, side², d) → (batch, (side/s)², s²·d), s = ``factor``: each token is an
    s × s block of neighbouring patches, concatenated row by row. SmolVLM and nanoVLM call it pixel shuffle; torch
    calls the same rearrangement ``pixel_unshuffle`` (its channels in another order)."""
    side = _grid_side("features", features, factor)
    batch, _, d = features.shape
    blocks = features.reshape(batch, side // factor, factor, side // factor, factor, d)  # (batch, row, i, col, j, d)
    blocks = blocks.permute(0, 1, 3, 2, 4, 5)  # (batch, row, col, i, j, d): block (row, col), patch (i, j) inside
    return blocks.reshape(batch, (side // factor) ** 2, factor * factor * d)  # (batch, (side/s)², s²·d)


def inverse_pixel_shuffle(tokens: Tensor, factor: int = 2) -> Tensor:
    """Depth-to-space, the inverse of ``pixel_shuffle``: (batch, (side/s)², s²·d) → (batch, side², d)."""
    blocks_side, (batch, _, width) = _grid_side("tokens", tokens, 1), tokens.shape
    if width % (factor * factor):
        raise ValueError(f"tokens' width {width} must be divisible by factor²={factor * factor}")
    d = width // (factor * factor)
    blocks = tokens.reshape(batch, blocks_side, blocks_side, factor, factor, d)  # (batch, row, col, i, j, d)
    blocks = blocks.permute(0, 1, 3, 2, 4, 5)  # (batch, row, i, col, j, d)
    return blocks.reshape(batch, (blocks_side * factor) ** 2, d)  # (batch, side², d)


class PixelShuffleConnector(nn.Module):
    """``pixel_shuffle`` then one linear map: (batch, side², width) → (batch, (side/s)², d_model), s² fewer tokens."""

    def __init__(self, width: int, d_model: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.projection = nn.Linear(factor * factor * width, d_model, bias=False)

    def forward(self, features: Tensor) -> Tensor:
        return self.projection(pixel_shuffle(features, self.factor))  # (batch, (side/s)², d_model)


class Resampler(nn.Module):
    """``n_queries`` learned vectors read the patches: each layer is chapter 2's pre-LN decoder layer without a mask
    (the queries attend to each other, then cross-attend to the patches, then an MLP), as in BLIP-2's Q-Former; a
    LayerNorm and a linear map follow. (batch, P, width) → (batch, n_queries, d_model), for any P."""

    def __init__(self, width: int, d_model: int, n_queries: int, n_heads: int, n_layers: int) -> None:
        super().__init__()
        if width % n_heads:
            raise ValueError(f"resampler_heads={n_heads} must divide the image tower's width {width}")
        self.queries = nn.Parameter(torch.randn(n_queries, width) * 0.02)  # (n_queries, width)
        self.feature_norm = nn.LayerNorm(width)
        self.layers = nn.ModuleList(
            DecoderLayer(width, n_heads, 4 * width, 0.0, "gelu", norm_first=True) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.projection = nn.Linear(width, d_model)

    def forward(self, features: Tensor) -> Tensor:
        patches = self.feature_norm(features)  # (batch, P, width)
        x = self.queries.expand(features.size(0), -1, -1)  # (batch, n_queries, width)
        for layer in self.layers:
            x, _, _ = layer(x, patches)  # (batch, n_queries, width): every query sees every patch
        return self.projection(self.norm(x))  # (batch, n_queries, d_model)


class WordConnector(nn.Module):
    """Each patch → one token per slot, a mixture of that slot's word embeddings: an MLP gives the patch's logits
    over every slot's words; softmax within the slot weights the embeddings (copied from the LLM, frozen buffers:
    the LLM's own table is never touched). (batch, P, width) → (batch, P × slots, d_model), patch by patch."""

    def __init__(self, width: int, embedding: Tensor, word_ids: tuple[tuple[int, ...], ...]) -> None:
        super().__init__()
        if any(not 0 <= i < embedding.size(0) for slot in word_ids for i in slot):
            raise ValueError(f"word_ids must be token ids of the LLM's vocabulary [0, {embedding.size(0)})")
        self.slot_sizes = [len(slot) for slot in word_ids]
        self.net = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, sum(self.slot_sizes)))
        for slot, ids in enumerate(word_ids):  # (n_words, d_model) each
            self.register_buffer(f"words_{slot}", embedding.detach()[list(ids)].clone())

    def word_logits(self, features: Tensor) -> list[Tensor]:
        """Per slot, the logits (batch, P, n_words) over its words."""
        return list(self.net(features).split(self.slot_sizes, dim=-1))

    def forward(self, features: Tensor) -> Tensor:
        tokens = [logits.softmax(dim=-1) @ getattr(self, f"words_{slot}")  # (batch, P, d_model)
                  for slot, logits in enumerate(self.word_logits(features))]  # fmt: skip
        return torch.stack(tokens, dim=2).flatten(1, 2)  # (batch, P · slots, d_model): patch 0's slots first


def make_connector(config: VLMConfig, width: int, side: int, embedding: Tensor) -> tuple[nn.Module, int]:
    """``config.connector`` from patch features (batch, side², width) to (batch, N, d_model), and N; ``embedding``
    is the LLM's token table (vocab_size, d_model), read for its width (and by ``words``, for its rows)."""
    d_model = embedding.size(1)
    if config.connector == "words":
        return WordConnector(width, embedding, config.word_ids), side * side * len(config.word_ids)
    if config.connector == "linear":
        return nn.Linear(width, d_model), side * side
    if config.connector == "mlp":
        return nn.Sequential(nn.Linear(width, d_model), nn.GELU(), nn.Linear(d_model, d_model)), side * side
    if config.connector == "pixel_shuffle":
        factor = config.pixel_shuffle_factor
        if side % factor:
            raise ValueError(f"pixel_shuffle_factor={factor} must divide the image tower's grid side {side}")
        return PixelShuffleConnector(width, d_model, factor), (side // factor) ** 2
    heads, layers = config.resampler_heads, config.resampler_layers
    return Resampler(width, d_model, config.n_queries, heads, layers), config.n_queries


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------


class VisionLanguageModel(nn.Module):
    """A frozen image tower → a connector → a GPT reading the image tokens where the placeholders stand.

    ``model(images, input_ids)`` → logits (batch, T, vocab_size); input_ids (batch, T) hold ``n_image_tokens``
    placeholder ids per row (``vlm_batch`` writes them), one image per row. The image tower never learns (LLaVA
    freezes it in both stages): it runs without gradients and stays in eval mode (a CNN's batch norm too).
    """

    def __init__(self, vision_tower: nn.Module, llm: GPT, config: VLMConfig) -> None:
        super().__init__()
        side, width = tower_grid(vision_tower)
        if not isinstance(llm, GPT):
            raise TypeError(f"llm must be a mmcourse.gpt.GPT, got {type(llm).__name__}")
        if not isinstance(config, VLMConfig):
            raise TypeError(f"config must be a VLMConfig, got {type(config).__name__}")
        self.config = config
        self.vision_tower = vision_tower.requires_grad_(False).eval()
        self.connector, self.n_image_tokens = make_connector(config, width, side, llm.token_embedding.weight)
        self.llm = llm

    def train(self, mode: bool = True) -> VisionLanguageModel:
        """Set the connector and the LLM to ``mode``; the image tower stays in eval mode."""
        super().train(mode)
        self.vision_tower.eval()
        return self

    def encode_images(self, images: Tensor) -> Tensor:
        """images (batch, C, H, W) → image tokens (batch, n_image_tokens, d_model) in the LLM's embedding space."""
        with torch.no_grad():
            features = patch_features(self.vision_tower, images)  # (batch, P, width)
        return self.connector(features)  # (batch, N, d_model)

    def embed(self, images: Tensor, input_ids: Tensor) -> Tensor:
        """The mixed sequence (batch, T, d_model): token embeddings, the image tokens at the placeholders."""
        check_input_ids(input_ids)
        image = self.encode_images(images)  # (batch, N, d_model), the images' shape checked
        if image.size(0) != input_ids.size(0):
            raise ValueError(f"expected one image per row of input_ids: {input_ids.size(0)} rows, got "
                             f"{image.size(0)} images")  # fmt: skip
        is_image = input_ids == self.config.image_token_id  # (batch, T)
        text = self.llm.token_embedding(input_ids.masked_fill(is_image, 0))  # (batch, T, d_model), 0: overwritten
        return text.masked_scatter(is_image[..., None], image.to(text.dtype))  # placeholder k of row b ← image[b, k]

    def forward(self, images: Tensor, input_ids: Tensor) -> Tensor:
        """→ logits (batch, T, vocab_size)."""
        return self.llm.forward_embeddings(self.embed(images, input_ids))

    def attention_weights(self, images: Tensor, input_ids: Tensor) -> Tensor:
        """Every LLM layer's attention weights over the mixed sequence: (n_layers, batch, n_heads, T, T)."""
        hidden_states = self.embed(images, input_ids)  # (batch, T, d_model)
        return self.llm.attention_weights_from_embeddings(hidden_states)  # GPT's explicit attention

    def image_attention(self, images: Tensor, input_ids: Tensor) -> Tensor:
        """The attention every position pays to each image token, in image-token order: (n_layers, batch, n_heads,
        T, n_image_tokens), the columns of ``attention_weights`` at the placeholders."""
        check_image_placeholders(input_ids, self.config.image_token_id, self.n_image_tokens)
        weights = self.attention_weights(images, input_ids)  # (n_layers, batch, n_heads, T, T)
        columns = (input_ids == self.config.image_token_id).nonzero()[:, 1].view(input_ids.size(0), -1)  # (batch, N)
        return weights.gather(-1, columns[None, :, None, None, :].expand(*weights.shape[:4], -1))  # (…, T, N)


def check_image_placeholders(input_ids: Tensor, image_token_id: int, n_image_tokens: int) -> None:
    """ValueError unless every row of input_ids (batch, T) holds exactly ``n_image_tokens`` placeholders. It reads
    the ids (one device sync): call it once where prompts enter, not in a forward pass."""
    check_input_ids(input_ids)
    counts = (input_ids == image_token_id).sum(dim=1)  # (batch,)
    if bool((counts != n_image_tokens).any()):
        raise ValueError(f"every row of input_ids must hold n_image_tokens={n_image_tokens} image placeholders (id "
                         f"{image_token_id}, expanded by expand_image_placeholder), got {counts.tolist()}")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Prompts, batches, training stages, answers
# ---------------------------------------------------------------------------------------------------------------


def vlm_prompt(question: str, system: str | None = None) -> str:
    """The ChatML prompt of a question about an image: the placeholder on the user's first line, then the opening
    of the assistant's turn."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    return chatml([*messages, {"role": "user", "content": f"{IMAGE_TOKEN}\n{question}"}], add_generation_prompt=True)


def _id_list(name: str, ids: Sequence[int] | Tensor) -> list[int]:
    ids = ids.tolist() if isinstance(ids, Tensor) else ids
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise TypeError(f"{name} must be a sequence of token ids (ints), got {type(ids).__name__}")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TypeError(f"{name} must hold token ids (ints), got {[type(i).__name__ for i in ids][:5]}")
    return list(ids)


def expand_image_placeholder(
    prompt_ids: Sequence[int], image_token_id: int, n_image_tokens: int, name: str = "prompt_ids"
) -> list[int]:
    """The prompt with its one placeholder repeated ``n_image_tokens`` times, in place: [a, <image>, b] → [a,
    <image> × N, b]. ValueError (naming ``name``) unless the prompt holds exactly one placeholder."""
    ids = _id_list(name, prompt_ids)
    check_positive_int("n_image_tokens", n_image_tokens)
    if ids.count(image_token_id) != 1:
        raise ValueError(f"{name} must hold exactly one image placeholder (id {image_token_id}), found "
                         f"{ids.count(image_token_id)}")  # fmt: skip
    at = ids.index(image_token_id)
    return ids[:at] + [image_token_id] * n_image_tokens + ids[at + 1 :]


def vlm_batch(
    images: Tensor,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    image_token_id: int,
    n_image_tokens: int,
    pad_id: int = 0,
) -> dict[str, Tensor]:
    """A right-padded training batch, one image per (prompt, answer) pair: {"images" (batch, C, H, W), "input_ids",
    "targets", "attention_mask", "position_ids", each (batch, T)}. Each prompt's placeholder is expanded to
    ``n_image_tokens``; targets are the next tokens on the answer and IGNORE_INDEX elsewhere (prompt, image tokens,
    padding); attention_mask is 1 on real tokens; position_ids count the real tokens 0, 1, … (0 on padding)."""
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError(f"images must be a float tensor (batch, C, H, W), got {getattr(images, 'dtype', images)}")
    if images.dim() != 4 or len(prompts) != len(answers) or images.size(0) != len(prompts):
        raise ValueError(f"expected images (batch, C, H, W), one per prompt, and one answer per prompt, got images "
                         f"{tuple(images.shape)}, {len(prompts)} prompts and {len(answers)} answers")  # fmt: skip
    check_int("pad_id", pad_id, minimum=0)
    if pad_id == image_token_id:
        raise ValueError(f"pad_id={pad_id} must differ from image_token_id: padding would become image tokens")
    pairs = []
    for index, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        prompt_ids = expand_image_placeholder(prompt, image_token_id, n_image_tokens, f"prompts[{index}]")
        answer_ids = _id_list(f"answers[{index}]", answer)
        if image_token_id in answer_ids:
            raise ValueError(f"answers[{index}] holds the image placeholder (id {image_token_id}): only prompts may")
        pairs.append((prompt_ids, answer_ids))
    input_ids, targets = sft_batch(pairs, pad_id)  # (batch, T) each, the answer's targets only
    lengths = torch.tensor([len(prompt) + len(answer) - 1 for prompt, answer in pairs])  # (batch,)
    positions = torch.arange(input_ids.size(1))  # (T,)
    attention_mask = (positions < lengths[:, None]).long()  # (batch, T)
    return {"images": images, "input_ids": input_ids, "targets": targets, "attention_mask": attention_mask,
            "position_ids": positions * attention_mask}  # fmt: skip


def vlm_loss(model: VisionLanguageModel, batch: Mapping[str, Tensor]) -> Tensor:
    """``train``'s loss_fn: the mean next-token cross-entropy on the answer tokens of a ``vlm_batch``."""
    return masked_next_token_loss(model(batch["images"], batch["input_ids"]), batch["targets"])


def _word_connector(model: VisionLanguageModel) -> WordConnector:
    if not isinstance(model, VisionLanguageModel) or not isinstance(model.connector, WordConnector):
        raise TypeError(f"model must be a VisionLanguageModel with the 'words' connector, got {type(model).__name__}")
    return model.connector


def check_word_labels(model: VisionLanguageModel, word_labels: Tensor) -> None:
    """The check that reads the labels, once, where they are made: word_labels (S, P, slots) int64, each an index
    into its slot's ``word_ids``. ``word_alignment_loss`` checks shapes only."""
    sizes = torch.tensor(_word_connector(model).slot_sizes)  # (slots,)
    if not isinstance(word_labels, Tensor) or word_labels.dtype != torch.long:
        got = getattr(word_labels, "dtype", type(word_labels).__name__)
        raise TypeError(f"word_labels must be an int64 tensor of word indices, got {got}")
    if word_labels.dim() != 3 or word_labels.size(-1) != len(sizes):
        raise ValueError(f"word_labels must be (S, P, slots={len(sizes)}), got {tuple(word_labels.shape)}")
    if bool(((word_labels < 0) | (word_labels >= sizes.to(word_labels.device))).any()):
        raise ValueError(f"word_labels must index each slot's words: in [0, n) for slot sizes {sizes.tolist()}")


def word_alignment_loss(model: VisionLanguageModel, images: Tensor, word_labels: Tensor) -> Tensor:
    """Stage 1 for the ``words`` connector without the LLM: the cross-entropy of each patch's word logits against
    word_labels (batch, P, slots), the index of the right word in each slot's ``word_ids`` (``check_word_labels``
    reads them once), summed over slots."""
    connector = _word_connector(model)
    with torch.no_grad():
        features = patch_features(model.vision_tower, images)  # (batch, P, width)
    expected = (*features.shape[:2], len(connector.slot_sizes))
    if not isinstance(word_labels, Tensor) or word_labels.shape != expected:
        raise ValueError(f"word_labels must be (batch, P, slots) = {expected}, got "
                         f"{getattr(word_labels, 'shape', type(word_labels).__name__)}")  # fmt: skip
    logits = connector.word_logits(features)  # per slot (batch, P, n_words)
    return sum(F.cross_entropy(slot.flatten(0, 1), word_labels[..., k].flatten()) for k, slot in enumerate(logits))


def prepare_stage(
    model: VisionLanguageModel,
    stage: int,
    rank: int = 8,
    alpha: float = 16.0,
    target_names: Sequence[str] = ("q_proj", "v_proj"),
) -> tuple[int, int]:
    """Choose what learns. Stage 1 (feature alignment): the connector alone, the LLM frozen. Stage 2 (visual
    instruction tuning): the connector and LoRA adapters (rank, alpha) on the LLM's ``target_names``, added the
    first time. The image tower stays frozen. Returns (trainable, total) parameter counts."""
    if not isinstance(model, VisionLanguageModel):
        raise TypeError(f"model must be a VisionLanguageModel, got {type(model).__name__}")
    check_int("stage", stage)
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 (connector only) or 2 (connector and LoRA), got {stage}")
    if stage == 2 and not any(isinstance(module, LoRALinear) for module in model.llm.modules()):
        apply_lora(model.llm, target_names, rank, alpha)
    return mark_trainable(model, "lora" if stage == 2 else "none", also=("connector",))


def generate_answer(
    model: VisionLanguageModel,
    images: Tensor,
    input_ids: Tensor,
    max_new_tokens: int,
    eos_id: int | None = None,
    use_cache: bool = True,
) -> Tensor:
    """Greedy answer tokens (batch, new ≤ max_new_tokens) to prompts input_ids (batch, T), placeholders expanded,
    one image per row, unpadded (GPT takes no attention mask: one prompt at a time, or prompts of one length).
    ``use_cache``: the prefix (words and image tokens) runs once and fills a KV cache, then each step feeds only the
    new token; without it each step re-runs the whole sequence: the same tokens. With ``eos_id``, a finished row
    repeats it and generation stops once every row has. The prompt is checked once, here."""
    if not isinstance(model, VisionLanguageModel):
        raise TypeError(f"model must be a VisionLanguageModel, got {type(model).__name__}")
    image_token_id, vocab_size = model.config.image_token_id, model.llm.config.vocab_size
    check_image_placeholders(input_ids, image_token_id, model.n_image_tokens)
    check_token_ids("input_ids", input_ids.masked_fill(input_ids == image_token_id, 0), vocab_size)  # the words
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    if eos_id is not None:
        check_int("eos_id", eos_id, minimum=0)
    tokens = input_ids.new_zeros(input_ids.size(0), 0)  # (batch, 0): the answer so far
    finished = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)  # (batch,)
    with evaluating(model):
        prefix = model.embed(images, input_ids)  # (batch, T, d_model), shapes checked here
        cache = model.llm.new_cache() if use_cache else None
        for _ in range(max_new_tokens):
            if tokens.size(1) == 0:
                logits = model.llm.forward_embeddings(prefix, cache)  # (batch, T, vocab_size), fills the cache
            elif use_cache:
                logits = model.llm(tokens[:, -1:], cache=cache)  # (batch, 1, vocab_size): the new token only
            else:
                answer = model.llm.token_embedding(tokens)  # (batch, t, d_model)
                logits = model.llm.forward_embeddings(torch.cat([prefix, answer], dim=1))  # (batch, T + t, vocab)
            next_token = logits[:, -1].argmax(dim=-1)  # (batch,)
            if eos_id is not None:
                next_token = next_token.masked_fill(finished, eos_id)  # finished rows repeat EOS
                finished |= next_token == eos_id
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (batch, t + 1)
            if eos_id is not None and finished.all():
                break
    return tokens
