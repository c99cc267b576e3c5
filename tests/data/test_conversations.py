"""Chapter 9's instruction data: determinism, true answers, balance, the held-out split, descriptions and their
scorer, POPE's questions and scores, exact match, prompts, bad input."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from mmcourse.data.conversations import (
    CAPTION_QUESTION,
    CONVERSATION_KINDS,
    DEFAULT_MIX,
    POPE_KINDS,
    Conversation,
    caption_accuracy,
    chat_prompt,
    conversation_messages,
    describe_scene,
    exact_match,
    existence_text,
    generate_conversations,
    grid_words,
    named_objects,
    normalise_answer,
    pope_questions,
    pope_scores,
    text_picture,
    vqa_conversations,
)
from mmcourse.data.scenes import POSITION_CELLS, Scene, SceneConfig, SceneObject, generate_scenes
from mmcourse.data.vqa import VQA_SCENES, VQAConfig, generate_vqa, scene_questions
from mmcourse.vlm import IMAGE_TOKEN, vlm_prompt


@pytest.fixture(scope="module")
def train_data():
    return generate_conversations(600, seed=1, split="train")


@pytest.fixture(scope="module")
def test_data():
    return generate_conversations(600, seed=1, split="test")


def shape(colour: str, name: str, position: str, size: str = "small") -> SceneObject:
    return SceneObject(kind="shape", colour=colour, shape=name, digit=None, size=size, position=position,
                       centre=(0.0, 0.0), extent=10.0, rgb=(1.0, 0.0, 0.0))  # fmt: skip


def scene_of(*objects: SceneObject) -> Scene:
    return Scene(objects=objects, noise_seed=0, held_out=False)


def present(scene: Scene) -> set[tuple[str, str]]:
    return {(obj.colour, obj.shape) for obj in scene.objects}


def check_turn(scene: Scene, turn_type: str, user: str, assistant: str, config: VQAConfig) -> tuple[str, str] | None:
    """Assert the turn's answer is what the scene says; return a VQA turn's (question type, subject)."""
    if turn_type == "caption":
        assert (user, assistant) == (CAPTION_QUESTION, describe_scene(scene))
        return None
    if turn_type == "existence":
        pair = next((c, s) for c in config.scene.colours for s in config.scene.shapes if existence_text(c, s) == user)
        assert assistant == ("yes" if pair in present(scene) else "no")
        return None
    question = {q.text: q for q in scene_questions(scene, config)}[user]
    assert (question.question_type, question.answer) == (turn_type, assistant)
    return question.question_type, question.subject


def test_generation_is_deterministic(train_data) -> None:
    assert generate_conversations(600, seed=1, split="train") == train_data
    other = generate_conversations(600, seed=2, split="train")
    assert other.conversations != train_data.conversations
    scenes = generate_scenes(20, VQA_SCENES, seed=0, split="test")
    assert pope_questions(scenes, train_data.scenes, seed=3) == pope_questions(scenes, train_data.scenes, seed=3)


def test_kinds_follow_the_mix(train_data) -> None:
    counts = Counter(c.kind for c in train_data.conversations)
    total = sum(DEFAULT_MIX.values())
    assert sum(counts.values()) == 600 and set(counts) == set(CONVERSATION_KINDS)
    for kind in CONVERSATION_KINDS:
        assert abs(counts[kind] - 600 * DEFAULT_MIX[kind] / total) < 1, (kind, counts)
    odd = generate_conversations(7, seed=0, mix={"caption": 1, "existence": 2})
    assert Counter(c.kind for c in odd.conversations) == {"existence": 5, "caption": 2}  # 4.67 rounds up, 2.33 down
    assert odd.images().shape == (len(odd.scenes), 3, 48, 48)


def test_every_answer_is_what_the_scene_says(train_data, test_data) -> None:
    for data in (train_data, test_data):
        assert sorted({c.scene_index for c in data.conversations}) == list(range(len(data.scenes)))  # each used
        for conversation in data.conversations:
            scene = data.scenes[conversation.scene_index]
            assert len(conversation.turns) == len(conversation.turn_types)
            for turn_type, (user, assistant) in zip(conversation.turn_types, conversation.turns, strict=True):
                check_turn(scene, turn_type, user, assistant, data.config)


def test_existence_is_balanced(train_data) -> None:
    answers = Counter(c.turns[0][1] for c in train_data.conversations if c.kind == "existence")
    assert set(answers) == {"yes", "no"} and abs(answers["yes"] - answers["no"]) <= 1


def test_multi_turn_conversations_mix_two_or_three_kinds_of_turn(train_data) -> None:
    conversations = [c for c in train_data.conversations if c.kind == "multi_turn"]
    assert {len(c.turns) for c in conversations} == {2, 3}
    assert all(len(set(c.turn_types)) == len(c.turn_types) for c in conversations)  # a different type each turn
    seen = Counter(turn_type for c in conversations for turn_type in c.turn_types)
    assert set(seen) == {"caption", "existence", *train_data.config.question_types}


def test_held_out_questions_only_outside_train(train_data, test_data) -> None:
    held_out = set(train_data.config.held_out)
    for data in (train_data, test_data):
        for conversation in data.conversations:
            scene = data.scenes[conversation.scene_index]
            turns = zip(conversation.turn_types, conversation.turns, strict=True)
            asked = [check_turn(scene, kind, user, assistant, data.config) for kind, (user, assistant) in turns]
            assert conversation.held_out == any(pair in held_out for pair in asked)
    assert not any(c.held_out for c in train_data.conversations)
    flagged = [c for c in test_data.conversations if c.held_out]
    assert {c.kind for c in flagged} == {"vqa", "multi_turn"}


def test_vqa_conversations_are_chapter_7s_test_set() -> None:
    vqa = generate_vqa(300, seed=4, split="test")
    as_conversations = vqa_conversations(vqa)
    assert [c.turns[0] for c in as_conversations] == list(zip(vqa.questions, vqa.answers, strict=True))
    assert [c.scene_index for c in as_conversations] == vqa.scene_index.tolist()
    assert [c.held_out for c in as_conversations] == vqa.held_out.tolist() and any(vqa.held_out.tolist())
    data = generate_conversations(300, seed=4, split="test", mix={"vqa": 1.0})
    ours = Counter((data.scenes[c.scene_index], *c.turns[0], c.held_out) for c in data.conversations)
    chapter_7 = Counter((vqa.scenes[c.scene_index], *c.turns[0], c.held_out) for c in as_conversations)
    assert ours == chapter_7


def test_describe_scene_names_every_object_in_grid_order() -> None:
    scene = scene_of(shape("blue", "square", "left"), shape("red", "circle", "top"))
    assert describe_scene(scene) == "top: red circle; left: blue square."
    assert text_picture(describe_scene(scene)) == "Picture: top: red circle; left: blue square."
    for scene in generate_scenes(50, VQA_SCENES, seed=0, split="test"):
        order = sorted(scene.objects, key=lambda obj: ("top", "left", "centre", "right", "bottom").index(obj.position))
        assert named_objects(describe_scene(scene)) == [(obj.position, obj.colour, obj.name) for obj in order]


def test_describe_scene_round_trips_sizes_digits_and_corners() -> None:
    config = SceneConfig(positions=("top left", "left", "bottom right"), max_objects=3)
    digit = SceneObject(kind="digit", colour="green", shape=None, digit=7, size="small", position="left",
                        centre=(0.0, 0.0), extent=10.0, rgb=(0.0, 1.0, 0.0), digit_image=0)  # fmt: skip
    scene = scene_of(shape("red", "triangle", "bottom right", "large"), digit, shape("blue", "circle", "top left"))
    text = describe_scene(scene, config)
    assert text == "top left: small blue circle; left: small green digit seven; bottom right: large red triangle."
    assert named_objects(text, config) == [("top left", "blue", "circle"), ("left", "green", "digit seven"),
                                           ("bottom right", "red", "triangle")]  # fmt: skip
    assert caption_accuracy(text, scene, config) == 1.0


def test_caption_accuracy() -> None:
    scene = scene_of(shape("red", "circle", "top"), shape("blue", "square", "left"), shape("green", "circle", "right"))
    description = describe_scene(scene)
    assert caption_accuracy(description, scene) == 1.0
    assert caption_accuracy(description.replace("blue", "yellow"), scene) == pytest.approx(2 / 3)
    assert caption_accuracy(description.replace("top", "bottom"), scene) == pytest.approx(2 / 3)
    assert caption_accuracy("", scene) == 0.0
    wordy = "Picture: at the top a red circle, on the left there is a blue square. And a green circle on the right!"
    assert caption_accuracy(wordy, scene) == 1.0  # extra words do not matter
    assert caption_accuracy("top: red blue circle; left: blue square circle.", scene) == 0.0  # hedging does


def test_pope_questions_are_balanced_and_true() -> None:
    scenes = generate_scenes(60, VQA_SCENES, seed=0, split="test")
    train = [scene_of(shape("cyan", "square", "top"))] * 3 + [scene_of(shape("purple", "circle", "top"))] * 2
    questions = pope_questions(scenes, train, seed=0)
    assert {q.kind for q in questions} == set(POPE_KINDS)
    pairs = [(colour, name) for colour in VQA_SCENES.colours for name in VQA_SCENES.shapes]
    ranking = [("cyan", "square"), ("purple", "circle")]
    ranking += [pair for pair in pairs if pair not in ranking]  # then the ones never seen, in config order
    for kind in POPE_KINDS:
        subset = [q for q in questions if q.kind == kind]
        assert Counter(q.answer for q in subset) == {"yes": len(subset) // 2, "no": len(subset) // 2}
        for index, scene in enumerate(scenes):
            here = [q for q in subset if q.scene_index == index]
            yes = {(q.colour, q.shape) for q in here if q.answer == "yes"}
            no = [(q.colour, q.shape) for q in here if q.answer == "no"]
            assert yes == present(scene) and not set(no) & present(scene) and len(set(no)) == len(no) == len(yes)
            assert all(q.text == existence_text(q.colour, q.shape) for q in here)
            if kind == "adversarial":
                assert all(any(c == colour or s == name for c, s in present(scene)) for colour, name in no)
            if kind == "popular":  # the most frequent in training of those absent
                assert no == [pair for pair in ranking if pair not in present(scene)][: len(no)]
    random_no = {(q.colour, q.shape) for q in questions if q.kind == "random" and q.answer == "no"}
    assert len(random_no) == 18  # random negatives range over every (colour, shape)


def test_pope_scores_on_a_known_example() -> None:
    predicted = [True, True, True, False, False, False, True, False]
    truth = [True, True, False, False, True, False, False, False]  # tp 2, fp 2, fn 1, tn 3
    scores = pope_scores(predicted, truth)
    assert scores == pytest.approx({"accuracy": 5 / 8, "precision": 0.5, "recall": 2 / 3, "f1": 4 / 7,
                                    "yes_rate": 0.5})  # fmt: skip
    assert pope_scores(torch.tensor(predicted), torch.tensor(truth)) == scores
    never = pope_scores([False] * 4, [True, False, True, False])
    assert never == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_rate": 0.0}
    always = pope_scores([True] * 4, [True, False, True, False])
    assert always == pytest.approx({"accuracy": 0.5, "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "yes_rate": 1.0})


def test_exact_match_normalises() -> None:
    assert exact_match(" Left.", "left") and exact_match("Top  Left .\n", "top left") and exact_match("YES", "yes")
    assert not exact_match("left", "right") and not exact_match("yes, there is", "yes")
    assert not exact_match("left..", "left")  # only one full stop is dropped
    assert normalise_answer("  Top: Red Circle. ") == "top: red circle"
    with pytest.raises(TypeError, match="text"):
        exact_match(3, "three")


def test_prompts() -> None:
    single = Conversation(0, (("what colour is the circle ?", "red"),), "vqa", ("colour",))
    assert chat_prompt(single) == (vlm_prompt("what colour is the circle ?"), "red")
    multi = Conversation(0, (("is there a red circle ?", "yes"), (CAPTION_QUESTION, "top: red circle.")), "multi_turn",
                         ("existence", "caption"))  # fmt: skip
    prompt, answer = chat_prompt(multi, text_picture("top: red circle."))
    assert answer == "top: red circle." and IMAGE_TOKEN not in prompt
    assert prompt.startswith("<|im_start|>user\nPicture: top: red circle.\nis there a red circle ?<|im_end|>\n")
    assert prompt.endswith("<|im_start|>assistant\nyes<|im_end|>\n<|im_start|>user\ndescribe the picture .<|im_end|>\n"
                           "<|im_start|>assistant\n")  # fmt: skip
    messages = conversation_messages(multi)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2 and messages[0]["content"].startswith(IMAGE_TOKEN)


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"count": 0}, ValueError, "count"),
        ({"count": "3"}, TypeError, "count"),
        ({"count": 10, "split": "dev"}, ValueError, "split"),
        ({"count": 10, "seed": -1}, ValueError, "seed"),
        ({"count": 10, "config": VQA_SCENES}, TypeError, "config"),
        ({"count": 10, "mix": [("vqa", 1.0)]}, TypeError, "mix"),
        ({"count": 10, "mix": {"chat": 1.0}}, ValueError, "mix"),
        ({"count": 10, "mix": {"vqa": -1.0, "caption": 2.0}}, ValueError, "mix"),
        ({"count": 10, "mix": {"vqa": 0.0}}, ValueError, "mix"),
        ({"count": 10, "mix": {"vqa": "half"}}, TypeError, "mix"),
    ],
)
def test_generate_rejects_bad_input(kwargs, error, field) -> None:
    with pytest.raises(error, match=field):
        generate_conversations(**kwargs)


def test_scorers_reject_bad_input() -> None:
    scene = scene_of(shape("red", "circle", "top"), shape("blue", "square", "left"))
    with pytest.raises(ValueError, match="predicted_yes and truth"):
        pope_scores([True], [True, False])
    with pytest.raises(ValueError, match="non-empty"):
        pope_scores([], [])
    with pytest.raises(TypeError, match="predicted_yes"):
        pope_scores(["yes", "no"], [True, False])
    with pytest.raises(TypeError, match="truth"):
        pope_scores([True, False], "yn")
    with pytest.raises(ValueError, match="scenes is empty"):
        pope_questions([], [scene])
    with pytest.raises(TypeError, match="train_scenes"):
        pope_questions([scene], scene)
    with pytest.raises(ValueError, match="kinds"):
        pope_questions([scene], [scene], kinds=("rare",))
    crowded = scene_of(shape("red", "circle", "top"), shape("blue", "square", "left"), shape("red", "square", "right"))
    with pytest.raises(ValueError, match="fewer than 3 absent adversarial"):  # only the blue circle is absent
        two_by_two = SceneConfig(colours=("red", "blue"), shapes=("circle", "square"), held_out=())
        pope_questions([crowded], [scene], two_by_two, kinds=("adversarial",))
    with pytest.raises(TypeError, match="caption"):
        caption_accuracy(None, scene)
    with pytest.raises(TypeError, match="config"):
        caption_accuracy("top: red circle.", scene, VQAConfig())
    with pytest.raises(TypeError, match="scene"):
        describe_scene("top: red circle")
    with pytest.raises(TypeError, match="data"):
        vqa_conversations([])
    with pytest.raises(ValueError, match="turns must be non-empty"):
        Conversation(0, (), "vqa", ())
    with pytest.raises(ValueError, match="kind"):
        Conversation(0, (("q", "a"),), "chat", ("colour",))
    with pytest.raises(TypeError, match="picture"):
        chat_prompt(Conversation(0, (("q", "a"),), "vqa", ("colour",)), picture=None)


def test_grid_words_name_every_cell_in_reading_order_with_one_word_per_slot() -> None:
    for scene in generate_scenes(50, VQA_SCENES, seed=3, split="train"):
        words = grid_words(scene)
        assert len(words) == 9 and all(len(cell) == 3 and all(" " not in w for w in cell) for cell in words)
        by_cell = {obj.position: obj for obj in scene.objects}
        for (where, colour, shape), cell in zip(words, POSITION_CELLS, strict=True):
            assert where == (cell if " " not in cell else "corner")
            obj = by_cell.get(cell)
            assert (colour, shape) == ((obj.colour, obj.shape) if obj else ("empty", "space"))
        described = describe_scene(scene)  # the same objects, in the same order
        assert [f"{w}: {c} {s}" for w, c, s in words if c != "empty"] == described.rstrip(".").split("; ")
    with pytest.raises(TypeError, match="scene must be a Scene"):
        grid_words("top: red circle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="config.digits must be False"):
        grid_words(scene, SceneConfig())
