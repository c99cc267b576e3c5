from __future__ import annotations

import pytest

from mmcourse.data.bert_corpus import make_nsp_pairs, shakespeare_documents, speeches, split_documents

PLAY = """HAMLET

ACT I.

[Enter Bernardo.]

Ber.
Who's there?

Fran.
Nay, answer me: stand, and unfold yourself.

[Exit.]
"""


def toy_documents() -> dict[str, list[str]]:
    """Five documents whose units name their document and position, so a pair can be traced back."""
    return {f"doc{d}": [f"doc{d} unit{u} word word" for u in range(30)] for d in range(5)}


def test_speeches_keep_or_drop_speakers_and_drop_stage_directions() -> None:
    assert speeches(PLAY) == [
        "HAMLET",
        "ACT I.",
        "Ber. Who's there?",
        "Fran. Nay, answer me: stand, and unfold yourself.",
    ]
    assert speeches(PLAY, speakers=False)[2:] == ["Who's there?", "Nay, answer me: stand, and unfold yourself."]


def test_split_is_by_document() -> None:
    documents = toy_documents()
    train, validation = split_documents(documents, validation_fraction=0.2, seed=0)
    assert not set(train) & set(validation) and set(train) | set(validation) == set(documents)
    assert len(validation) == 2  # at least two: a negative needs another document
    assert split_documents(documents, 0.2, seed=0) == (train, validation)
    with pytest.raises(ValueError, match="validation_fraction"):
        split_documents(documents, 1.0)
    with pytest.raises(ValueError, match="at least 4"):
        split_documents({"a": ["x"]})


def test_nsp_pairs_are_balanced_and_negatives_come_from_another_document() -> None:
    pairs = make_nsp_pairs(toy_documents(), n_pairs=400, max_tokens=24, seed=0)
    assert len(pairs) == 400 and sum(pair.is_next for pair in pairs) == 200
    for pair in pairs:
        first_units, second_units = pair.first.split(" doc"), pair.second.split(" doc")
        assert pair.first.startswith(pair.first_document + " ") and pair.second.startswith(pair.second_document + " ")
        last = int(first_units[-1].split("unit")[1].split()[0])
        following = int(second_units[0].split("unit")[1].split()[0])
        if pair.is_next:
            assert pair.second_document == pair.first_document and following == last + 1
        else:
            assert pair.second_document != pair.first_document
        assert len(pair.first.split()) <= 12 and len(pair.second.split()) <= 12  # max_tokens // 2 words each
    assert tuple(pairs[0][:3]) == (pairs[0].first, pairs[0].second, pairs[0].is_next)


def test_nsp_pairs_are_deterministic_and_validated() -> None:
    documents = toy_documents()
    assert make_nsp_pairs(documents, 20, 24, seed=1) == make_nsp_pairs(documents, 20, 24, seed=1)
    assert make_nsp_pairs(documents, 20, 24, seed=1) != make_nsp_pairs(documents, 20, 24, seed=2)
    with pytest.raises(ValueError, match="n_pairs"):
        make_nsp_pairs(documents, 21, 24)
    with pytest.raises(ValueError, match="max_tokens"):
        make_nsp_pairs(documents, 20, 1)
    with pytest.raises(ValueError, match="two documents"):
        make_nsp_pairs({"only": ["a", "b", "c"]}, 20, 24)


def test_real_shakespeare_documents() -> None:
    documents = shakespeare_documents()
    assert len(documents) >= 35 and "hamlet" in documents
    assert any(unit.startswith("Ham. ") for unit in documents["hamlet"])
    train, validation = split_documents(documents)
    pairs = make_nsp_pairs(validation, 2000, 128, seed=0)
    assert sum(pair.is_next for pair in pairs) == 1000
    assert all(pair.first_document in validation and pair.second_document in validation for pair in pairs)
