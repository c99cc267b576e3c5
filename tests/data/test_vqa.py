"""Chapter 7's question-answering data: determinism, balance, correct answers, the held-out split, bad input."""

from __future__ import annotations

import pytest
import torch

from mmcourse.data.scenes import Scene, SceneConfig, SceneObject
from mmcourse.data.vqa import (
    COUNT_WORDS,
    VQAConfig,
    WordVocabulary,
    generate_vqa,
    question_vocabulary,
    relation_holds,
    scene_questions,
    split_words,
)


@pytest.fixture(scope="module")
def train_data():
    return generate_vqa(600, seed=1, split="train")


@pytest.fixture(scope="module")
def test_data():
    return generate_vqa(600, seed=1, split="test")


def shape(colour: str, name: str, position: str) -> SceneObject:
    return SceneObject(kind="shape", colour=colour, shape=name, digit=None, size="small", position=position,
                       centre=(0.0, 0.0), extent=10.0, rgb=(1.0, 0.0, 0.0))  # fmt: skip


def test_generation_is_deterministic() -> None:
    first, second = generate_vqa(200, seed=4, split="validation"), generate_vqa(200, seed=4, split="validation")
    assert first.questions == second.questions and first.answers == second.answers
    assert torch.equal(first.images, second.images) and torch.equal(first.scene_index, second.scene_index)
    other = generate_vqa(200, seed=5, split="validation")
    assert other.questions != first.questions


def test_answers_are_balanced_within_each_type(train_data) -> None:
    counts = train_data.answer_counts()
    for kind, counter in counts.items():
        assert set(counter) == set(train_data.config.answers(kind)), kind  # every answer is asked
        assert max(counter.values()) - min(counter.values()) <= 1, (kind, counter)
    per_type = [sum(counter.values()) for counter in counts.values()]
    assert max(per_type) - min(per_type) <= 1


def test_count_answers_are_balanced_for_each_template(train_data) -> None:
    """Colour counts are mostly zero, shape counts mostly one or two: balance per template, or the words leak."""
    for word in ("objects", "s are"):
        answers = [a for q, a, t in zip(train_data.questions, train_data.answers, train_data.question_types,
                                        strict=True) if t == "count" and word in q]  # fmt: skip
        counts = [answers.count(answer) for answer in COUNT_WORDS]
        assert max(counts) - min(counts) <= 1, (word, counts)


def test_every_answer_is_what_the_scene_says(train_data) -> None:
    for index in range(0, len(train_data), 7):
        scene = train_data.scenes[train_data.scene_index[index]]
        asked = {(q.text, q.answer) for q in scene_questions(scene, train_data.config)}
        assert (train_data.questions[index], train_data.answers[index]) in asked
        answer_id = train_data.answer_ids[index].item()
        assert train_data.config.answer_vocabulary[answer_id] == train_data.answers[index]


def test_questions_about_a_known_scene() -> None:
    scene = Scene(objects=(shape("red", "circle", "left"), shape("blue", "square", "top"),
                           shape("red", "triangle", "right")), noise_seed=0, held_out=False)  # fmt: skip
    answers = {q.text: q.answer for q in scene_questions(scene)}
    assert answers["what colour is the circle ?"] == "red"
    assert answers["what shape is the blue object ?"] == "square"
    assert "what shape is the red object ?" not in answers  # two red objects: ambiguous, never asked
    assert answers["how many red objects are there ?"] == "two"
    assert answers["how many green objects are there ?"] == "zero"
    assert answers["where is the blue square ?"] == "top"
    assert answers["is the circle left of the square ?"] == "yes"  # column 0 < column 1
    assert answers["is the square above the triangle ?"] == "yes"  # row 0 < row 1
    assert answers["is the triangle left of the circle ?"] == "no"
    assert answers["is the circle above the triangle ?"] == "no"  # the same row: neither above nor below


def test_relations_are_consistent() -> None:
    positions = ("left", "right", "top", "bottom", "centre")
    for first in positions:
        for second in positions:
            assert relation_holds("left of", first, second) == relation_holds("right of", second, first)
            assert relation_holds("above", first, second) == relation_holds("below", second, first)
            assert not relation_holds("left of", first, first)
    with pytest.raises(ValueError, match="relation"):
        relation_holds("near", "left", "right")


def test_held_out_questions_only_outside_train(train_data, test_data) -> None:
    held_out = set(train_data.config.held_out)
    assert not train_data.held_out.any()
    assert not {(t, s) for t, s in zip(train_data.question_types, train_data.subjects, strict=True)} & held_out
    flagged = [(t, s) in held_out for t, s in zip(test_data.question_types, test_data.subjects, strict=True)]
    assert flagged == test_data.held_out.tolist() and any(flagged)
    kinds = {test_data.question_types[i] for i in range(len(test_data)) if test_data.held_out[i]}
    assert kinds == {kind for kind, _ in held_out}  # every held-out type is tested


def test_scenes_have_two_or_more_objects_and_are_rendered_once(train_data) -> None:
    assert all(2 <= len(scene.objects) <= 3 for scene in train_data.scenes)
    assert train_data.images.shape == (len(train_data.scenes), 3, 48, 48)
    assert sorted(set(train_data.scene_index.tolist())) == list(range(len(train_data.scenes)))  # each one used


def test_vocabulary_covers_every_question(test_data) -> None:
    vocabulary = question_vocabulary()
    input_ids, attention_mask = vocabulary.encode_batch(test_data.questions)
    assert not (input_ids == vocabulary.unk_id).any()
    lengths = attention_mask.sum(dim=1)
    assert vocabulary.decode(input_ids[0, : lengths[0]]) == " ".join(split_words(test_data.questions[0]))
    assert split_words("Is the circle left?") == ["is", "the", "circle", "left", "?"]


def test_word_vocabulary_round_trip_and_bad_input() -> None:
    vocabulary = WordVocabulary.from_texts(["a small red circle on the left"])
    ids = vocabulary.encode("a red circle", add_bos=True, add_eos=True)
    assert ids[0] == vocabulary.bos_id and ids[-1] == vocabulary.eos_id
    assert vocabulary.decode(ids + [vocabulary.encode("left")[0]]) == "a red circle"  # stops at <eos>
    assert vocabulary.encode("a blue circle")[1] == vocabulary.unk_id
    with pytest.raises(ValueError, match="special tokens"):
        WordVocabulary(["a", "b"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocabulary.decode([999])
    with pytest.raises(TypeError, match="text must be a string"):
        vocabulary.encode(3)


def test_encode_batch_is_where_the_ids_are_checked() -> None:
    """Every id it writes is the vocabulary's, and it refuses a text with no token: the models need not check."""
    vocabulary = WordVocabulary.from_texts(["a red circle"])
    input_ids, attention_mask = vocabulary.encode_batch(["a red circle", "a cat"])
    assert input_ids.max() < len(vocabulary) and input_ids.min() >= 0
    assert attention_mask.sum(dim=1).tolist() == [3, 2]
    with pytest.raises(ValueError, match=r"texts \[1\] have no words"):
        vocabulary.encode_batch(["a red circle", "  "])
    assert vocabulary.encode_batch([""], add_bos=True)[1].tolist() == [[1]], "<bos> alone is a token"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"count": 0}, "count"),
        ({"count": 10, "split": "dev"}, "split"),
        ({"count": 10, "seed": -1}, "seed"),
    ],
)
def test_generate_rejects_bad_input(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        generate_vqa(**kwargs)


def test_config_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="min_objects"):
        VQAConfig(scene=SceneConfig(digits=False, held_out=()))  # one object: no relation questions
    with pytest.raises(ValueError, match="digits"):
        VQAConfig(scene=SceneConfig(min_objects=2, max_objects=3, sizes=("small",), held_out=()))
    with pytest.raises(ValueError, match="held_out"):
        VQAConfig(held_out=(("colour", "red"),))  # a colour question's subject is a shape
    with pytest.raises(ValueError, match="question_types"):
        VQAConfig(question_types=("colour", "size"))
