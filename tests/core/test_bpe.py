"""mmcourse.bpe against tokenizers' Rust trainers: the same vocabulary id for id wherever the Rust trainer's hash-map
order cannot matter, the same one as the Rust trainer's run given that run's ``##`` order, and the same vocabulary in
every process."""

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from mmcourse.bpe import initial_vocab, learn_merges, learn_wordpiece_vocab, word_counts

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NORMALIZER = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
PRE_TOKENIZER = pre_tokenizers.BertPreTokenizer()


def bert_word_counts(texts: list[str]) -> dict[str, int]:
    return word_counts(texts, NORMALIZER.normalize_str, PRE_TOKENIZER.pre_tokenize_str)


def rust_trained(
    texts: list[str], vocab_size: int, min_frequency: int, wordpiece: bool = True, bert: bool = True
) -> Tokenizer:
    """A tokenizer trained as mmcourse.tokenizers.train_wordpiece did before mmcourse.bpe (or by BpeTrainer); with
    ``bert=False`` it splits on whitespace alone, for texts the BERT normalizer would leave as they are (faster)."""
    model, trainer = (models.WordPiece, trainers.WordPieceTrainer) if wordpiece else (models.BPE, trainers.BpeTrainer)
    tokenizer = Tokenizer(model(unk_token="[UNK]"))
    if bert:
        tokenizer.normalizer = NORMALIZER
    tokenizer.pre_tokenizer = PRE_TOKENIZER if bert else pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.train_from_iterator(
        texts,
        trainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS, show_progress=False),
    )
    return tokenizer


def vocab_in_id_order(tokenizer: Tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    assert sorted(vocab.values()) == list(range(len(vocab)))
    return sorted(vocab, key=vocab.__getitem__)


def naive_bpe(counts: dict[str, int], vocab_size: int, min_frequency: int) -> tuple[list[str], bool]:
    """The textbook loop (recount every pair, merge the most frequent everywhere) and whether no two pairs ever tied
    for the top: on such corpora the order of the ``##`` ids cannot matter."""
    vocab = initial_vocab(counts, SPECIAL_TOKENS)
    pieces = {word: [word[0], *("##" + c for c in word[1:])] for word in counts}
    tie_free = True
    while len(vocab) < vocab_size:
        pair_counts: Counter[tuple[str, str]] = Counter()
        for word, split in pieces.items():
            for pair in zip(split, split[1:], strict=False):
                pair_counts[pair] += counts[word]
        ranked = pair_counts.most_common(2)
        if not ranked or ranked[0][1] < max(min_frequency, 1):
            break
        tie_free &= len(ranked) == 1 or ranked[1][1] < ranked[0][1]
        (left, right), _ = ranked[0]
        new_token = left + right.removeprefix("##")
        if new_token not in vocab:
            vocab.append(new_token)
        for word, split in pieces.items():
            merged, i = [], 0
            while i < len(split):
                if split[i : i + 2] == [left, right]:
                    merged.append(new_token)
                    i += 2
                else:
                    merged.append(split[i])
                    i += 1
            pieces[word] = merged
    return vocab, tie_free


@pytest.fixture(scope="module")
def tie_free_counts() -> dict[str, int]:
    """400 random words over eight letters, each occurring up to 2,000 times: the first 144 merges never tie."""
    rng = random.Random(4)
    return {"".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 8))): rng.randint(1, 2000) for _ in range(400)}


@pytest.fixture(scope="module")
def tie_free_texts(tie_free_counts: dict[str, int]) -> list[str]:
    """One text per word, the word repeated as often as it occurs."""
    texts = [" ".join([word] * count) for word, count in tie_free_counts.items()]
    first = dict(list(tie_free_counts.items())[:40])
    assert bert_word_counts(texts[:40]) == first  # lower-case letters pass the BERT normalizer unchanged
    return texts


@pytest.fixture(scope="module")
def captions() -> list[str]:
    """Scene captions as chapters 5 and 6 train their tokenizers on: a few dozen words, full of tied pairs."""
    from mmcourse.data.scenes import SceneConfig, describe, generate_scenes

    rng = np.random.default_rng(0)
    return [describe(scene, rng) for scene in generate_scenes(500, SceneConfig(digits=False)) for _ in range(5)]


@pytest.fixture(scope="module")
def speeches() -> list[str]:
    """Speeches from four of the works chapter 3 trains its tokenizer on."""
    from mmcourse.data.bert_corpus import shakespeare_documents

    documents = shakespeare_documents()
    return [speech for name in sorted(documents)[:4] for speech in documents[name]]


def test_word_counts_split_words_as_the_tokenizer_does() -> None:
    texts = ["Héllo, WORLD! 你好 world", "don't"]
    assert bert_word_counts(texts) == Counter("hello , world ! 你 好 world don ' t".split())


@pytest.mark.parametrize(("vocab_size", "min_frequency"), [(41, 0), (161, 2), (1000, 4709), (1000, 4710)])
def test_equals_the_rust_trainer_where_no_pairs_tie(
    tie_free_counts: dict[str, int], tie_free_texts: list[str], vocab_size: int, min_frequency: int
) -> None:
    expected, tie_free = naive_bpe(tie_free_counts, vocab_size, min_frequency)
    assert tie_free, "the corpus must never offer two pairs of the same top count"
    ours = learn_wordpiece_vocab(tie_free_counts, vocab_size, min_frequency, SPECIAL_TOKENS)
    assert ours == expected
    rust = vocab_in_id_order(rust_trained(tie_free_texts, vocab_size, min_frequency, bert=False))
    initial = len(initial_vocab(tie_free_counts, SPECIAL_TOKENS))  # 5 special tokens, 8 letters, 8 "##" letters
    assert len(rust) == len(ours) > initial
    assert rust[:13] == ours[:13]  # special tokens and alphabet
    assert sorted(rust[13:initial]) == ours[13:initial]  # the "##" letters: the Rust trainer's are in hash-map order
    assert rust[initial:] == ours[initial:]  # every merge, id for id


@pytest.mark.parametrize("corpus", ["captions", "speeches"])
def test_equals_the_rust_trainer_given_its_continuing_token_order(corpus: str, request: pytest.FixtureRequest) -> None:
    """On corpora full of ties: replayed from the Rust run's own "##" ids, we learn its vocabulary id for id."""
    texts = request.getfixturevalue(corpus)
    vocab_size = 300 if corpus == "captions" else 1000
    counts = bert_word_counts(texts)
    rust = vocab_in_id_order(rust_trained(texts, vocab_size, min_frequency=2))
    initial = len(initial_vocab(counts, SPECIAL_TOKENS))
    assert sorted(rust[:initial]) == sorted(initial_vocab(counts, SPECIAL_TOKENS))
    assert learn_merges(counts, rust[:initial], vocab_size, min_frequency=2) == rust


@pytest.mark.parametrize("vocab_size", [300, 1000])
def test_without_a_prefix_equals_the_bpe_trainer(speeches: list[str], vocab_size: int) -> None:
    """With no "##" tokens the Rust BpeTrainer is deterministic, and we learn its vocabulary id for id, ties and all."""
    ours = learn_wordpiece_vocab(bert_word_counts(speeches), vocab_size, 2, SPECIAL_TOKENS, prefix="")
    assert ours == vocab_in_id_order(rust_trained(speeches, vocab_size, 2, wordpiece=False))


LEARN_IN_A_FRESH_PROCESS = """
import json, sys
from tokenizers import normalizers, pre_tokenizers
from mmcourse.bpe import learn_wordpiece_vocab, word_counts
normalizer, pre_tokenizer = normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer()
counts = word_counts(json.load(open(sys.argv[1])), normalizer.normalize_str, pre_tokenizer.pre_tokenize_str)
print(json.dumps(learn_wordpiece_vocab(counts, 300, 2, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])))
"""


def test_the_same_vocabulary_in_every_process(captions: list[str], tmp_path: Path) -> None:
    counts = bert_word_counts(captions)
    vocab = initial_vocab(counts, SPECIAL_TOKENS)
    continuing = [token for token in vocab if token.startswith("##")]
    reordered = [token for token in vocab if not token.startswith("##")] + continuing[::-1]
    ours = learn_wordpiece_vocab(counts, 300, 2, SPECIAL_TOKENS)
    assert set(learn_merges(counts, reordered, 300, 2)) != set(ours), "the corpus must hold ties that matter"
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(captions))
    runs = [
        subprocess.run(
            [sys.executable, "-c", LEARN_IN_A_FRESH_PROCESS, str(path)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    ]
    assert json.loads(runs[0]) == json.loads(runs[1]) == ours


@pytest.mark.parametrize("vocab_size", [1, 30, 60, 100, 300])
def test_vocabulary_properties(captions: list[str], vocab_size: int) -> None:
    counts = bert_word_counts(captions)
    initial = initial_vocab(counts, ["[PAD]", "[UNK]", "[PAD]", "e"])  # a repeat and a letter: each kept once
    assert initial[:3] == ["[PAD]", "[UNK]", "e"] and "e" not in initial[3:]
    vocab = learn_wordpiece_vocab(counts, vocab_size, 2, ["[PAD]", "[UNK]", "[PAD]", "e"])
    assert vocab[: len(initial)] == initial and len(set(vocab)) == len(vocab)
    if vocab_size < 300:
        assert len(vocab) == max(vocab_size, len(initial))  # never cut below the initial vocabulary
    else:
        assert len(initial) < len(vocab) < vocab_size  # the captions run out of pairs that occur twice
    alphabet = {token for token in initial[3:] if not token.startswith("##")} | {"e"}
    assert all(token[2:] in alphabet for token in initial if token.startswith("##"))
    for index in range(len(initial), len(vocab)):  # every merge joins two earlier tokens
        token, earlier = vocab[index], set(vocab[:index])
        start = 2 if token.startswith("##") else 0
        splits = [(token[:k], "##" + token[k:]) for k in range(start + 1, len(token))]
        assert any(left in earlier and right in earlier for left, right in splits), token


def test_bad_input_names_the_field() -> None:
    counts = {"low": 5, "lower": 2}
    with pytest.raises(TypeError, match="texts"):
        word_counts("one string", NORMALIZER.normalize_str, PRE_TOKENIZER.pre_tokenize_str)
    with pytest.raises(TypeError, match="texts"):
        word_counts(["fine", 3], NORMALIZER.normalize_str, PRE_TOKENIZER.pre_tokenize_str)
    with pytest.raises(TypeError, match="counts"):
        learn_wordpiece_vocab([("low", 5)], 10)
    with pytest.raises(TypeError, match="counts"):
        learn_wordpiece_vocab({"low": 5.0}, 10)
    with pytest.raises(ValueError, match="counts"):
        learn_wordpiece_vocab({"low": 0}, 10)
    with pytest.raises(ValueError, match="counts"):
        learn_wordpiece_vocab({"": 3}, 10)
    with pytest.raises(TypeError, match="vocab_size"):
        learn_wordpiece_vocab(counts, 10.0)
    with pytest.raises(ValueError, match="vocab_size"):
        learn_wordpiece_vocab(counts, 0)
    with pytest.raises(ValueError, match="min_frequency"):
        learn_wordpiece_vocab(counts, 10, min_frequency=-1)
    with pytest.raises(TypeError, match="special_tokens"):
        learn_wordpiece_vocab(counts, 10, special_tokens="[UNK]")
    with pytest.raises(TypeError, match="prefix"):
        learn_wordpiece_vocab(counts, 10, prefix=None)
    with pytest.raises(ValueError, match="vocab lacks"):
        learn_merges(counts, ["l", "o", "w"], 10)
    with pytest.raises(ValueError, match="vocab must not repeat"):
        learn_merges(counts, [*initial_vocab(counts), "l"], 10)


def test_a_tokenizer_built_from_the_vocabulary_works_like_the_rust_trained_one(
    tie_free_counts: dict[str, int], tie_free_texts: list[str]
) -> None:
    rust = rust_trained(tie_free_texts, 81, 2)
    vocab = learn_wordpiece_vocab(tie_free_counts, 81, 2, SPECIAL_TOKENS)
    ours = Tokenizer(models.WordPiece({token: index for index, token in enumerate(vocab)}, unk_token="[UNK]"))
    ours.normalizer, ours.pre_tokenizer, ours.decoder = NORMALIZER, PRE_TOKENIZER, decoders.WordPiece()
    ours.add_special_tokens(SPECIAL_TOKENS)  # as train_from_iterator does
    for tokenizer in (rust, ours):
        cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
    rust_json, ours_json = json.loads(rust.to_str()), json.loads(ours.to_str())
    assert rust_json["model"].pop("vocab").keys() == ours_json["model"].pop("vocab").keys()
    assert rust_json == ours_json  # same normalizer, pre-tokenizer, model settings, added tokens, post-processor
    for text in ["Abba cafe, BEEF deaf!", "hgfedcba gg [MASK] a", "zebra 42"]:
        rust_encoding, ours_encoding = rust.encode(text), ours.encode(text)
        assert ours_encoding.tokens == rust_encoding.tokens
        assert ours.decode(ours_encoding.ids) == rust.decode(rust_encoding.ids)
    pair = ours.encode("bad cab", "fade")  # [CLS] A [SEP] B [SEP], token types 0 up to the first [SEP], then 1
    first_sep = pair.tokens.index("[SEP]")
    assert pair.tokens[0] == "[CLS]" and pair.tokens[-1] == "[SEP]"
    assert pair.type_ids == [0] * (first_sep + 1) + [1] * (len(pair.tokens) - first_sep - 1)
    assert ours.decode(ours.encode("bad cab").ids) == "bad cab"


@pytest.mark.slow
def test_chapter_3_replays_the_rust_run() -> None:
    """Chapter 3's training speeches and cpu-profile vocabulary: id for id, given the Rust run's "##" order."""
    from mmcourse.data.bert_corpus import shakespeare_documents, split_documents

    train_documents, _ = split_documents(shakespeare_documents(), validation_fraction=0.15, seed=0)
    train_speeches = [speech for speeches in train_documents.values() for speech in speeches]
    counts = bert_word_counts(train_speeches)
    rust = vocab_in_id_order(rust_trained(train_speeches, 4000, min_frequency=2))
    initial = len(initial_vocab(counts, SPECIAL_TOKENS))
    assert learn_merges(counts, rust[:initial], 4000, min_frequency=2) == rust
