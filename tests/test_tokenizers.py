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


def test_encode_batch_and_save_load(tmp_path: Path) -> None:
    vocabulary = CharVocabulary.from_texts(["23. März 2026", "1er août"])
    input_ids, attention_mask = vocabulary.encode_batch(["März", "1er août"], add_eos=True)
    assert input_ids.shape == attention_mask.shape == (2, 9)
    assert attention_mask.sum(dim=1).tolist() == [5, 9]
    vocabulary.save(tmp_path / "vocabulary.json")
    loaded = CharVocabulary.load(tmp_path / "vocabulary.json")
    assert loaded.tokens == vocabulary.tokens
    assert loaded.decode(input_ids[1]) == "1er août"
