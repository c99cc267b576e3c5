from pathlib import Path

import pytest
import torch

from mmcourse.tokenizers import SPECIAL_TOKENS, CharVocabulary, pad_batch


def test_round_trip_and_special_ids() -> None:
    vocabulary = CharVocabulary.from_texts(["23 novembre 2026", "2026年11月23日"])
    assert vocabulary.tokens[:4] == list(SPECIAL_TOKENS)
    assert (vocabulary.pad_id, vocabulary.bos_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2, 3)
    assert len(vocabulary) == vocabulary.vocab_size == 4 + len(set("23 novembre 2026年11月23日"))
    ids = vocabulary.encode("2026年11月23日", add_bos=True, add_eos=True)
    assert ids[0] == vocabulary.bos_id and ids[-1] == vocabulary.eos_id and len(ids) == 11 + 2
    assert vocabulary.decode(ids) == "2026年11月23日"
    assert vocabulary.decode(ids, skip_special=False) == "<bos>2026年11月23日<eos>"
    assert vocabulary.decode(torch.tensor(ids)) == "2026年11月23日"


def test_unknown_characters_and_bad_ids() -> None:
    vocabulary = CharVocabulary.from_texts(["abc"])
    assert vocabulary.encode("abz") == [vocabulary.token_to_id["a"], vocabulary.token_to_id["b"], vocabulary.unk_id]
    assert vocabulary.decode(vocabulary.encode("abz"), skip_special=False) == "ab<unk>"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocabulary.decode([99])
    with pytest.raises(ValueError, match="special tokens"):
        CharVocabulary(["a", "b"])


def test_pad_batch() -> None:
    input_ids, attention_mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert input_ids.dtype == torch.long
    with pytest.raises(ValueError, match="sequences"):
        pad_batch([])
    with pytest.raises(ValueError, match="sequences must hold token ids >= 0"):
        pad_batch([[5, -1]])
    with pytest.raises(TypeError, match="pad_id"):
        pad_batch([[5]], pad_id=None)


def test_encode_batch_and_save_load(tmp_path: Path) -> None:
    vocabulary = CharVocabulary.from_texts(["23. März 2026", "1er août"])
    input_ids, attention_mask = vocabulary.encode_batch(["März", "1er août"], add_eos=True)
    assert input_ids.shape == attention_mask.shape == (2, 9)
    assert attention_mask.sum(dim=1).tolist() == [5, 9]
    vocabulary.save(tmp_path / "vocabulary.json")
    loaded = CharVocabulary.load(tmp_path / "vocabulary.json")
    assert loaded.tokens == vocabulary.tokens
    assert loaded.decode(input_ids[1]) == "1er août"


# --- subword tokenizers learned with the tokenizers library ------------------------------------------------------

CORPUS = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles, and by opposing end them. To die, to sleep;",
] * 10


def test_train_wordpiece_is_bert_like() -> None:
    from mmcourse.tokenizers import WORDPIECE_SPECIAL_TOKENS, train_wordpiece

    tokenizer = train_wordpiece(CORPUS, vocab_size=120)
    assert len(tokenizer) <= 120
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == list(WORDPIECE_SPECIAL_TOKENS)
    ids = (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
           tokenizer.mask_token_id)  # fmt: skip
    assert ids == (0, 1, 2, 3, 4)
    encoded = tokenizer("To be", "the question")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[tokens.index("[SEP]") - 1] == "be" and tokens[-1] == "[SEP]"
    first_length = tokens.index("[SEP]") + 1  # [CLS] to be [SEP]
    assert encoded["token_type_ids"] == [0] * first_length + [1] * (len(tokens) - first_length)
    assert tokenizer.decode(encoded["input_ids"], skip_special_tokens=True) == "to be the question"  # lowercased
    assert tokenizer.decode(tokenizer("outrageous fortune")["input_ids"], skip_special_tokens=True) == (
        "outrageous fortune"
    )
    assert tokenizer.unk_token_id in tokenizer("zebra 你")["input_ids"]
    batch = tokenizer(["to be", "or not to be"], ["a", "b"], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == batch["token_type_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"][0, -1] == tokenizer.pad_token_id and batch["attention_mask"][0, -1] == 0


def test_train_byte_level_bpe_round_trips_anything() -> None:
    from mmcourse.tokenizers import BYTE_LEVEL_SPECIAL_TOKEN, train_byte_level_bpe

    tokenizer = train_byte_level_bpe(CORPUS, vocab_size=300)
    assert len(tokenizer) <= 300 and tokenizer.convert_ids_to_tokens(0) == BYTE_LEVEL_SPECIAL_TOKEN
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == tokenizer.pad_token_id == 0
    for text in ("To be, or not to be", "Zebra 你好 — ünïcödé!\n\ttabs"):
        ids = tokenizer(text)["input_ids"]
        assert 0 not in ids and tokenizer.decode(ids) == text  # no unknown token: every byte is in the vocabulary
    assert len(tokenizer("to be or not to be")["input_ids"]) < len("to be or not to be")  # merges learned


def test_subword_trainers_validate() -> None:
    from mmcourse.tokenizers import train_byte_level_bpe, train_wordpiece

    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece(CORPUS, vocab_size=5)
    with pytest.raises(TypeError, match="texts"):
        train_wordpiece("one string", vocab_size=100)
    with pytest.raises(TypeError, match="vocab_size"):
        train_wordpiece(CORPUS, vocab_size=100.0)
    with pytest.raises(ValueError, match="min_frequency"):
        train_wordpiece(CORPUS, vocab_size=100, min_frequency=0)
    with pytest.raises(ValueError, match="vocab_size"):
        train_byte_level_bpe(CORPUS, vocab_size=100)


@pytest.mark.slow
def test_wordpiece_training_gives_the_same_vocabulary_in_every_process() -> None:
    """The library's own trainer does not (huggingface/tokenizers#1794); ``train_wordpiece`` must, so results
    repeat."""
    import subprocess
    import sys

    script = (
        "from mmcourse.data.scenes import SceneCaptionDataset, SceneConfig\n"
        "from mmcourse.tokenizers import train_wordpiece\n"
        "data = SceneCaptionDataset(200, SceneConfig(), seed=0, split=\"train\")\n"
        "texts = [caption for captions in data.captions for caption in captions]\n"
        "print(sorted(train_wordpiece(texts, 300).get_vocab().items(), key=lambda item: item[1]))\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed}
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1 and "[PAD]" in outputs.pop()
