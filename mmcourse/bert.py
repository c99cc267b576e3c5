"""BERT: a Transformer encoder pretrained with a masked language model and next sentence prediction (chapter 3).

``BertModel`` is chapter 2's post-LN ``EncoderLayer`` stack (GELU, LayerNorm eps 1e-12) on top of token + segment
+ learned position embeddings, with a tanh *pooler* on the [CLS] position; ``attention_weights`` returns its
attention maps for the same inputs. ``BertForPreTraining`` adds BERT's two heads: the masked-language-model head
(dense → GELU → LayerNorm → a decoder tied to the token embedding, plus a bias) and the next-sentence-prediction
head (a linear layer on the pooled [CLS] vector → 2 classes).
``mask_tokens`` applies the 15% / 80-10-10 masking rule; ``PretrainingCollator`` turns (segment A, segment B,
is_next) pairs into a batch. The models check their inputs' shapes and dtypes, not the ids' values: ids come from
the tokenizer. The bridges to and from ``transformers`` are in :mod:`mmcourse.convert.bert`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.attention import padding_mask
from mmcourse.checks import check_dropout, check_int, check_positive_int, check_positive_number
from mmcourse.layers import EncoderLayer
from mmcourse.train import IGNORE_INDEX


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 8000
    context_length: int = 128  # = max_position_embeddings
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 512
    dropout: float = 0.1
    type_vocab_size: int = 2  # segments A and B
    norm_eps: float = 1e-12
    pad_id: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_heads", "n_layers", "d_ff", "type_vocab_size"):
            check_positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        check_dropout("dropout", self.dropout)
        check_positive_number("norm_eps", self.norm_eps)
        check_int("pad_id", self.pad_id, minimum=0)
        if self.pad_id >= self.vocab_size:
            raise ValueError(f"pad_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_id!r}")


def _init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation: normal(0, 0.02) weights, zero biases, LayerNorm = identity, zero [PAD] embedding."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        nn.init.zeros_(module.weight[module.padding_idx])
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BertEmbeddings(nn.Module):
    """token + segment + learned position embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_id)
        self.position_embedding = nn.Embedding(config.context_length, config.d_model)
        self.segment_embedding = nn.Embedding(config.type_vocab_size, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        """input_ids, token_type_ids (batch, L) → (batch, L, d_model)."""
        positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (L,)
        embeddings = (
            self.token_embedding(input_ids)  # (batch, L, d_model)
            + self.segment_embedding(token_type_ids)  # (batch, L, d_model)
            + self.position_embedding(positions)  # (L, d_model), broadcast over the batch
        )
        return self.dropout(self.norm(embeddings))  # (batch, L, d_model)


@dataclass
class BertOutput:
    """What ``BertModel`` returns: one vector per token and the pooled [CLS] vector."""

    hidden_states: Tensor  # (batch, L, d_model), the last layer
    pooled_output: Tensor  # (batch, d_model), tanh(dense(hidden_states[:, 0]))


@dataclass
class BertPreTrainingOutput(BertOutput):
    """``BertOutput`` plus the two pretraining heads' logits."""

    mlm_logits: Tensor  # (batch, L, vocab_size)
    nsp_logits: Tensor  # (batch, 2): 0 = B follows A, 1 = B is random (BERT's convention)


def _check_inputs(
    config: BertConfig, input_ids: Tensor, token_type_ids: Tensor | None, attention_mask: Tensor | None
) -> None:
    """Dtypes and shapes only: the ids' values are the tokenizer's to get right (reading them would sync a GPU)."""
    for name, ids in (("input_ids", input_ids), ("token_type_ids", token_type_ids)):
        if ids is not None and ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be an int64 or int32 tensor of ids, got {ids.dtype}")
    if input_ids.dim() != 2 or input_ids.size(1) > config.context_length:
        raise ValueError(f"input_ids must be (batch, L) with L <= context_length={config.context_length}, got "
                         f"{tuple(input_ids.shape)}")  # fmt: skip
    for name, tensor in (("token_type_ids", token_type_ids), ("attention_mask", attention_mask)):
        if tensor is not None and tensor.shape != input_ids.shape:
            raise ValueError(f"{name} must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(tensor.shape)}")


class BertModel(nn.Module):
    """Embeddings → n_layers post-LN encoder layers (GELU) → hidden states, and a tanh pooler on [CLS]."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a BertConfig, got {type(config).__name__}")
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(
            EncoderLayer(
                config.d_model,
                config.n_heads,
                config.d_ff,
                config.dropout,
                activation="gelu",
                norm_first=False,
                norm_eps=config.norm_eps,
            )
            for _ in range(config.n_layers)
        )
        self.pooler = nn.Linear(config.d_model, config.d_model)
        self.apply(_init_bert_weights)

    def _encode(
        self, input_ids: Tensor, token_type_ids: Tensor | None, attention_mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, list[Tensor | None]]:
        _check_inputs(self.config, input_ids, token_type_ids, attention_mask)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # (batch, L): everything is segment A
        mask = None if attention_mask is None else padding_mask(attention_mask)  # (batch, 1, 1, L)
        hidden_states = self.embeddings(input_ids, token_type_ids)  # (batch, L, d_model)
        all_weights = []
        for layer in self.layers:
            hidden_states, attn_weights = layer(hidden_states, mask, need_weights)  # (batch, L, d_model)
            all_weights.append(attn_weights)  # (batch, n_heads, L, L), or None
        return hidden_states, all_weights

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> BertOutput:
        """input_ids (batch, L); token_type_ids (batch, L), default all 0; attention_mask (batch, L), 1 = real."""
        hidden_states, _ = self._encode(input_ids, token_type_ids, attention_mask, need_weights=False)
        pooled_output = torch.tanh(self.pooler(hidden_states[:, 0]))  # (batch, d_model), from [CLS]
        return BertOutput(hidden_states, pooled_output)

    def attention_weights(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        """The self-attention weights of every layer for ``forward``'s inputs: (n_layers, batch, n_heads, L, L)."""
        _, all_weights = self._encode(input_ids, token_type_ids, attention_mask, need_weights=True)
        return torch.stack(all_weights)


class MaskedLanguageModelHead(nn.Module):
    """dense → GELU → LayerNorm → decoder (weight tied to the token embedding) + a per-token output bias."""

    def __init__(self, config: BertConfig, token_embedding: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        self.decoder = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.decoder.weight = token_embedding.weight  # tied: one (vocab_size, d_model) matrix reads and writes
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: Tensor) -> Tensor:
        """(batch, L, d_model) → logits (batch, L, vocab_size)."""
        transformed = self.norm(F.gelu(self.dense(hidden_states)))  # (batch, L, d_model)
        return self.decoder(transformed) + self.bias  # (batch, L, vocab_size)


class BertForPreTraining(nn.Module):
    """BertModel with the masked-language-model head on every token and the NSP head on the pooled [CLS]."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.mlm_head = MaskedLanguageModelHead(config, self.bert.embeddings.token_embedding)
        self.nsp_head = nn.Linear(config.d_model, 2)
        self.mlm_head.apply(_init_bert_weights)
        self.nsp_head.apply(_init_bert_weights)

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> BertPreTrainingOutput:
        """Same inputs as ``BertModel``; adds mlm_logits (batch, L, vocab_size) and nsp_logits (batch, 2)."""
        output = self.bert(input_ids, token_type_ids, attention_mask)
        return BertPreTrainingOutput(
            hidden_states=output.hidden_states,
            pooled_output=output.pooled_output,
            mlm_logits=self.mlm_head(output.hidden_states),  # (batch, L, vocab_size)
            nsp_logits=self.nsp_head(output.pooled_output),  # (batch, 2)
        )


def mean_pool(hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
    """Sentence embedding: the mean of the real tokens' vectors (batch, L, d) → (batch, d), as sentence-transformers
    models such as all-MiniLM-L6-v2 are trained to be used."""
    if hidden_states.dim() != 3 or attention_mask.shape != hidden_states.shape[:2]:
        raise ValueError(
            f"hidden_states must be (batch, L, d) and attention_mask (batch, L), got {tuple(hidden_states.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    weights = attention_mask.to(hidden_states.dtype)[..., None]  # (batch, L, 1): 1 on real tokens
    return (hidden_states * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (batch, d)


def mask_tokens(
    input_ids: Tensor,
    special_tokens_mask: Tensor,
    vocab_size: int,
    mask_id: int,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
    attention_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking rule. Choose each non-special, non-pad token with probability ``mlm_probability``; of the
    chosen, 80% become [MASK], 10% a random token, 10% stay. Returns (masked_input_ids, labels), both
    (batch, L); labels hold the original id at chosen positions and -100 elsewhere."""
    if special_tokens_mask.shape != input_ids.shape:
        raise ValueError(
            f"special_tokens_mask must have input_ids' shape {tuple(input_ids.shape)}, "
            f"got {tuple(special_tokens_mask.shape)}"
        )
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
        )
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability!r}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id must be in [0, vocab_size={vocab_size}), got {mask_id!r}")
    device = input_ids.device

    def uniform() -> Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=device)  # (batch, L) in [0, 1)

    maskable = ~special_tokens_mask.bool()  # (batch, L)
    if attention_mask is not None:
        maskable &= attention_mask.bool()  # never a pad
    chosen = (uniform() < mlm_probability) & maskable  # (batch, L) the positions the loss scores
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)  # (batch, L)
    draw = uniform()  # (batch, L) one draw decides mask / random / keep
    to_mask = chosen & (draw < 0.8)  # 80%
    to_random = chosen & (draw >= 0.8) & (draw < 0.9)  # 10%; the last 10% keep their token
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device)  # (batch, L)
    masked_input_ids = input_ids.masked_fill(to_mask, mask_id)  # (batch, L)
    masked_input_ids = torch.where(to_random, random_ids, masked_input_ids)  # (batch, L)
    return masked_input_ids, labels


class PretrainingCollator:
    """Turns (segment A, segment B, is_next) pairs into a BERT pretraining batch with a WordPiece tokenizer.

    The batch: input_ids, token_type_ids, attention_mask (batch, L), mlm_labels (batch, L) (-100 where not
    chosen) and nsp_labels (batch,) with BERT's convention 0 = B is the next segment, 1 = B is random.
    Pairs longer than ``max_length`` tokens are truncated, the longer segment first. ``seed`` makes the masking
    reproducible: the same sequence of calls gives the same batches.
    """

    def __init__(
        self, tokenizer: Any, max_length: int = 128, mlm_probability: float = 0.15, seed: int | None = None
    ) -> None:
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("tokenizer must define mask_token and pad_token (a BERT-style WordPiece tokenizer)")
        check_int("max_length", max_length, minimum=3)  # [CLS] A [SEP] B [SEP]
        self.tokenizer, self.max_length, self.mlm_probability = tokenizer, max_length, mlm_probability
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __call__(self, pairs: Sequence[tuple[str, str, bool]]) -> dict[str, Tensor]:
        """pairs: (segment A, segment B, is_next) → the batch dict."""
        if len(pairs) == 0:
            raise ValueError("pairs must hold at least one (segment A, segment B, is_next)")
        encoded = self.tokenizer(
            [pair[0] for pair in pairs],
            [pair[1] for pair in pairs],
            padding=True,
            truncation="longest_first",
            max_length=self.max_length,
            return_special_tokens_mask=True,
            return_token_type_ids=True,
            return_tensors="pt",
        )
        input_ids, labels = mask_tokens(
            encoded["input_ids"],  # (batch, L)
            encoded["special_tokens_mask"],  # (batch, L), 1 on [CLS], [SEP] and [PAD]
            len(self.tokenizer),
            self.tokenizer.mask_token_id,
            self.mlm_probability,
            self.generator,
            attention_mask=encoded["attention_mask"],
        )
        return {
            "input_ids": input_ids,  # (batch, L)
            "token_type_ids": encoded["token_type_ids"],  # (batch, L)
            "attention_mask": encoded["attention_mask"],  # (batch, L)
            "mlm_labels": labels,  # (batch, L)
            "nsp_labels": torch.tensor([0 if pair[2] else 1 for pair in pairs]),  # (batch,)
        }


def _loss_and_accuracy(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy and top-1 accuracy over the labels that are not -100. logits (N, classes), labels (N,)."""
    scored = labels != IGNORE_INDEX  # (N,)
    loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)  # NaN when no label is scored
    accuracy = ((logits.argmax(dim=-1) == labels) & scored).sum() / scored.sum()
    return loss, accuracy


def _scored_losses(
    mlm_logits: Tensor, mlm_labels: Tensor, nsp_logits: Tensor, nsp_labels: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """MLM + NSP cross-entropy, and each task's loss and accuracy as 0-dim tensors (``train`` reads them after the
    step: no .item() here)."""
    mlm_loss, mlm_accuracy = _loss_and_accuracy(mlm_logits.reshape(-1, mlm_logits.size(-1)), mlm_labels.reshape(-1))
    nsp_loss, nsp_accuracy = _loss_and_accuracy(nsp_logits, nsp_labels)
    metrics = {"mlm_loss": mlm_loss.detach(), "mlm_accuracy": mlm_accuracy,
               "nsp_loss": nsp_loss.detach(), "nsp_accuracy": nsp_accuracy}  # fmt: skip
    return mlm_loss + nsp_loss, metrics


def pretraining_loss(
    outputs: BertPreTrainingOutput, mlm_labels: Tensor, nsp_labels: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """MLM cross-entropy over the chosen positions + NSP cross-entropy (labels -100 are skipped).

    Returns (loss, {"mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"}), the form ``train`` expects; each
    metric is a 0-dim tensor (``float(value)`` reads it).
    """
    mlm_logits, nsp_logits = outputs.mlm_logits, outputs.nsp_logits
    if mlm_labels.shape != mlm_logits.shape[:-1]:
        raise ValueError(f"mlm_labels must be (batch, L)={tuple(mlm_logits.shape[:-1])}, got {tuple(mlm_labels.shape)}")
    if nsp_labels.shape != nsp_logits.shape[:1]:
        raise ValueError(f"nsp_labels must be (batch,)={tuple(nsp_logits.shape[:1])}, got {tuple(nsp_labels.shape)}")
    return _scored_losses(mlm_logits, mlm_labels, nsp_logits, nsp_labels)


def pretraining_step_loss(model: BertForPreTraining, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """``loss_fn`` for :func:`mmcourse.train.train` on a collated batch. The same loss as ``pretraining_loss``,
    but the MLM head runs only on the ~15% chosen positions: the vocabulary-sized decoder is most of the cost."""
    output = model.bert(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    chosen = batch["mlm_labels"] != IGNORE_INDEX  # (batch, L)
    mlm_logits = model.mlm_head(output.hidden_states[chosen])  # (chosen, vocab_size)
    nsp_logits = model.nsp_head(output.pooled_output)  # (batch, 2)
    return _scored_losses(mlm_logits, batch["mlm_labels"][chosen], nsp_logits, batch["nsp_labels"])
