"""Tokenizers: turning text into token ids and back, and padding a batch of id sequences.

``CharVocabulary`` is the simplest tokenizer: one token per character plus a few special tokens. ``pad_batch``
turns id lists of different lengths into one tensor and its Hugging Face style ``attention_mask``.
``train_wordpiece`` (BERT) and ``train_byte_level_bpe`` (GPT-2) learn subword vocabularies and return a
``transformers`` tokenizer that pads, truncates and builds sentence pairs. The byte-level BPE is learned by the
``tokenizers`` library; the WordPiece vocabulary by ``mmcourse.bpe``, which learns the same merges as the library's
``WordPieceTrainer`` but breaks ties between merges of equal count in a fixed order (the library breaks them in
hash-map order, so its vocabulary changes from one run to the next: huggingface/tokenizers#1794).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mmcourse.checks import check_int, check_positive_int

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad id lists to the longest. Returns (input_ids (batch, T) int64, attention_mask (batch, T), 1 = real)."""
    check_int("pad_id", pad_id, minimum=0)
    if len(sequences) == 0:
        raise ValueError("sequences must hold at least one id list")
    longest = max(len(sequence) for sequence in sequences)
    if longest == 0:
        raise ValueError("sequences are all empty: nothing to pad")
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)  # (batch, T)
    attention_mask = torch.zeros(len(sequences), longest, dtype=torch.long)  # (batch, T)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.as_tensor(list(sequence), dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    if bool((input_ids < 0).any()):  # once, where the ids enter: the models read them unchecked
        raise ValueError("sequences must hold token ids >= 0, found a negative id")
    return input_ids, attention_mask


class CharVocabulary:
    """One id per character; ids 0–3 are the special tokens ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"tokens must start with the special tokens {SPECIAL_TOKENS}, got {tuple(tokens[:4])}")
        characters = tokens[len(SPECIAL_TOKENS) :]
        if any(len(character) != 1 for character in characters):
            raise ValueError("every token after the special tokens must be a single character")
        if len(set(tokens)) != len(tokens):
            raise ValueError("tokens must not repeat")
        self.tokens: list[str] = list(tokens)
        self.token_to_id: dict[str, int] = {token: index for index, token in enumerate(self.tokens)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(len(SPECIAL_TOKENS))

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharVocabulary:
        """A vocabulary of every character in ``texts`` (sorted), after the special tokens."""
        characters = sorted({character for text in texts for character in text})
        return cls([*SPECIAL_TOKENS, *characters])

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        """Number of tokens, special tokens included."""
        return len(self.tokens)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Characters → ids (``<unk>`` for a character never seen), optionally wrapped in ``<bos>`` … ``<eos>``."""
        ids = [self.token_to_id.get(character, self.unk_id) for character in text]
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def decode(self, ids: Iterable[int] | Tensor, skip_special: bool = True) -> str:
        """Ids → text; special tokens are dropped when ``skip_special``, else written as ``<pad>`` etc."""
        if isinstance(ids, Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids must be one sequence (T,), got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        special = len(SPECIAL_TOKENS)
        pieces = []
        for index in ids:
            if not 0 <= index < len(self.tokens):
                raise ValueError(f"id {index} is outside the vocabulary [0, {len(self.tokens)})")
            if index < special and skip_special:
                continue
            pieces.append(self.tokens[index])
        return "".join(pieces)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> tuple[Tensor, Tensor]:
        """Encode and right-pad ``texts``: (input_ids (batch, T), attention_mask (batch, T))."""
        return pad_batch([self.encode(text, add_bos, add_eos) for text in texts], self.pad_id)

    def save(self, path: str | Path) -> None:
        """Write the token list as JSON."""
        Path(path).write_text(json.dumps({"tokens": self.tokens}, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CharVocabulary:
        """Read a vocabulary written by :meth:`save`."""
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["tokens"])


WORDPIECE_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BYTE_LEVEL_SPECIAL_TOKEN = "<|endoftext|>"


def _check_training_input(texts: Sequence[str], vocab_size: int, special: int) -> None:
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise TypeError("texts must be a sequence of strings (not one string)")
    if not any(text.strip() for text in texts):
        raise ValueError("texts hold no characters to learn a vocabulary from")
    check_int("vocab_size", vocab_size)
    if vocab_size <= special:
        raise ValueError(f"vocab_size must be > {special} (the special tokens), got {vocab_size!r}")


def train_wordpiece(
    texts: Sequence[str], vocab_size: int, min_frequency: int = 2, lowercase: bool = True
) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer learned from ``texts``: ids 0–4 are [PAD] [UNK] [CLS] [SEP] [MASK];
    a pair encodes as ``[CLS] A [SEP] B [SEP]`` with token_type_ids 0 for A (and its [CLS], [SEP]), 1 for B."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from mmcourse.bpe import learn_wordpiece_vocab, word_counts

    _check_training_input(texts, vocab_size, len(WORDPIECE_SPECIAL_TOKENS))
    check_positive_int("min_frequency", min_frequency)
    pad, unk, cls, sep, mask = WORDPIECE_SPECIAL_TOKENS
    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # split on whitespace and punctuation
    # tokenizers' WordPieceTrainer learns the same merges, but breaks ties in hash-map order (a new vocabulary each
    # run): mmcourse.bpe breaks them in a fixed order
    counts = word_counts(texts, normalizer.normalize_str, pre_tokenizer.pre_tokenize_str)
    vocab = learn_wordpiece_vocab(counts, vocab_size, min_frequency, WORDPIECE_SPECIAL_TOKENS)
    tokenizer = Tokenizer(models.WordPiece({token: index for index, token in enumerate(vocab)}, unk_token=unk))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()  # glue "##" continuations back onto their word
    tokenizer.add_special_tokens(list(WORDPIECE_SPECIAL_TOKENS))  # never split or normalized, as training adds them
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",  # ":1" = token type (segment) 1
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=pad,
        unk_token=unk,
        cls_token=cls,
        sep_token=sep,
        mask_token=mask,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def train_byte_level_bpe(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer learned from ``texts``: the 256 bytes are the base alphabet (no
    unknown token, ever); id 0 is ``<|endoftext|>``, which also serves as bos, eos and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    _check_training_input(texts, vocab_size, 1 + len(alphabet))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BYTE_LEVEL_SPECIAL_TOKEN],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BYTE_LEVEL_SPECIAL_TOKEN,
        eos_token=BYTE_LEVEL_SPECIAL_TOKEN,
        unk_token=BYTE_LEVEL_SPECIAL_TOKEN,
        pad_token=BYTE_LEVEL_SPECIAL_TOKEN,
        model_input_names=["input_ids", "attention_mask"],
    )
