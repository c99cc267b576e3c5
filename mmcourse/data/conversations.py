"""Visual instruction data (视觉指令微调) on chapter 7's scenes: captions, questions, yes/no, short conversations.

Chapter 9's vision-language model learns in two stages: stage 1 aligns the connector on captions alone, stage 2
tunes on conversations of four kinds (``CONVERSATION_KINDS``), mixed in given proportions:

- ``vqa``: one of chapter 7's questions, drawn by :func:`mmcourse.data.vqa.generate_vqa` itself (balanced answers,
  the same held-out (question type, subject) pairs, never asked in ``train``);
- ``caption``: "describe the picture ." → ``describe_scene``: every object, cell by cell in reading order,
  ``"top: red circle; left: blue square; centre: green triangle."``;
- ``existence``: "is there a red circle ?" → yes or no, half of each;
- ``multi_turn``: two or three turns about one scene, each a different kind of turn (a caption, an existence
  question, or a question of a chapter 7 type), held-out questions left out in ``train``.

Every answer is a short, exact string (vqa.py's answers, ``yes`` / ``no``, the description), so a generated answer
is scored by ``exact_match``. The held-out VQA questions stay unasked in training, but the captions still name every
object's colour and cell: a held-out "where is the yellow circle ?" is new as a *question*, not as a fact the model
has read. Existence questions have no held-out pairs: chapter 7's scenes hold no (colour, shape) out, so
hallucination is measured on unseen scenes (the test split), as POPE does, not on unseen combinations.

Evaluation: ``vqa_conversations`` turns chapter 7's test set into conversations (the very same questions);
``caption_accuracy`` scores a caption by the objects it names correctly; ``pope_questions`` and ``pope_scores``
measure hallucination POPE-style (Li et al. 2023). In the text bottleneck, ``text_picture(describe_scene(scene))``
stands where the image tokens would. Everything is deterministic from the seed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from mmcourse.checks import check_finite_number, check_int, check_positive_int
from mmcourse.data.scenes import (
    DIGIT_WORDS,
    POSITION_CELLS,
    SPLITS,
    Scene,
    SceneConfig,
    drawable_pairs,
    generate_scenes,
    render_scenes,
)
from mmcourse.data.vqa import VQA_SCENES, VQAConfig, VQAData, generate_vqa, is_held_out, scene_questions
from mmcourse.prompting import chatml
from mmcourse.vlm import IMAGE_TOKEN

VQA_DEFAULTS = VQAConfig()  # vqa.py's questions, held-out pairs and scenes
CONVERSATION_KINDS = ("vqa", "caption", "existence", "multi_turn")
DEFAULT_MIX = {"vqa": 0.5, "caption": 0.15, "existence": 0.15, "multi_turn": 0.2}
POPE_KINDS = ("random", "popular", "adversarial")  # how the absent objects of the "no" questions are drawn
CAPTION_QUESTION = "describe the picture ."
EMPTY_CELL_WORDS = ("empty", "space")  # grid_words: the colour and shape an empty cell says
CORNER_WORD = "corner"  # grid_words: where a corner cell is, in one word
PICTURE_PREFIX = "Picture: "  # the text bottleneck: the scene in words where the image tokens would be


def _check_scene_config(config: SceneConfig) -> None:
    if not isinstance(config, SceneConfig):
        raise TypeError(f"config must be a SceneConfig, got {type(config).__name__}")


def describe_scene(scene: Scene, config: SceneConfig = VQA_SCENES) -> str:
    """The scene in words, every object once, in reading order of its cell: ``"top: red circle; left: blue square."``
    (the size too, ``"top: small red circle"``, where ``config`` has more than one size)."""
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    _check_scene_config(config)
    cells = list(POSITION_CELLS)
    objects = sorted(scene.objects, key=lambda obj: cells.index(obj.position))
    sized = len(config.sizes) > 1
    phrases = [f"{obj.position}: {f'{obj.size} ' if sized else ''}{obj.colour} {obj.name}" for obj in objects]
    return "; ".join(phrases) + "."


def grid_words(scene: Scene, config: SceneConfig = VQA_SCENES) -> list[tuple[str, str, str]]:
    """The 3 x 3 grid in reading order, one (where, colour, shape) per cell, every one a single word: ``("top",
    "red", "circle")``; an empty cell says ``"empty", "space"``; a corner cell's where is ``"corner"`` (its name has
    two words). What chapter 9's ``words`` connector learns to write for each image patch."""
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    _check_scene_config(config)
    if config.digits:
        raise ValueError("config.digits must be False: a digit has no one-word shape")
    by_cell = {obj.position: obj for obj in scene.objects}
    words = []
    for cell in POSITION_CELLS:
        where = cell if " " not in cell else CORNER_WORD
        obj = by_cell.get(cell)
        words.append((where, *((obj.colour, obj.shape) if obj is not None else EMPTY_CELL_WORDS)))
    return words


def text_picture(description: str) -> str:
    """What the text bottleneck reads in place of the image: ``"Picture: " + description``."""
    if not isinstance(description, str):
        raise TypeError(f"description must be a string, got {type(description).__name__}")
    return PICTURE_PREFIX + description


def _find_phrases(words: list[str], phrases: Sequence[str]) -> list[str]:
    """The phrases in ``words``, longest first, each word used once: 'top left' leaves no 'left' behind."""
    found, used = [], [False] * len(words)
    for phrase in sorted(phrases, key=lambda phrase: -len(phrase.split())):
        parts = phrase.split()
        for start in range(len(words) - len(parts) + 1):
            if words[start : start + len(parts)] == parts and not any(used[start : start + len(parts)]):
                used[start : start + len(parts)] = [True] * len(parts)
                found.append(phrase)
    return found


def named_objects(caption: str, config: SceneConfig = VQA_SCENES) -> list[tuple[str, str, str]]:
    """The (position, colour, name) triples a caption names, one per clause (text between ``; , .``): a clause
    counts when it names exactly one position, one colour and one shape or digit of ``config``; other words are
    ignored, so ``"on the left, a red circle"`` names ``("left", "red", "circle")``."""
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a string, got {type(caption).__name__}")
    _check_scene_config(config)
    names = [*config.shapes, *(f"digit {word}" for word in DIGIT_WORDS if config.digits)]
    triples = []
    for clause in re.split(r"[;,.\n]", caption.lower()):
        words = re.findall(r"[a-z]+", clause)
        found = [_find_phrases(words, vocabulary) for vocabulary in (config.positions, config.colours, names)]
        if all(len(phrases) == 1 for phrases in found):
            triples.append((found[0][0], found[1][0], found[2][0]))
    return triples


def caption_accuracy(caption: str, scene: Scene, config: SceneConfig = VQA_SCENES) -> float:
    """Attribute accuracy: the share of the scene's objects whose cell, colour and shape (or digit) one clause of
    the caption names together (``named_objects``). 1.0 for ``describe_scene``; 0.0 for an empty caption."""
    if not isinstance(scene, Scene) or not scene.objects:
        raise TypeError(f"scene must be a Scene with objects, got {type(scene).__name__}")
    named = set(named_objects(caption, config))
    return sum((obj.position, obj.colour, obj.name) in named for obj in scene.objects) / len(scene.objects)


def normalise_answer(text: str) -> str:
    """A generated answer made comparable: stripped, lower-case, one space between words, no final full stop."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    return " ".join(text.lower().split()).removesuffix(".").strip()


def exact_match(prediction: str, answer: str) -> bool:
    """Whether the prediction is the answer once both are normalised: ``" Left."`` matches ``"left"``."""
    return normalise_answer(prediction) == normalise_answer(answer)


# ---------------------------------------------------------------------------------------------------------------
# Existence questions and POPE
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExistenceQuestion:
    scene_index: int  # into the scenes they were asked about
    text: str  # "is there a red circle ?"
    answer: str  # "yes" (the object is in the scene) or "no" (it is absent)
    colour: str
    shape: str
    kind: str  # one of POPE_KINDS: how this question's set drew its absent objects


def existence_text(colour: str, shape: str) -> str:
    """'is there a red circle ?' ('an' before a vowel)."""
    return f"is there {'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape} ?"


def _present_pairs(scene: Scene) -> list[tuple[str, str]]:
    """The scene's (colour, shape) pairs, each once, in the scene's order (digits left out)."""
    return list(dict.fromkeys((obj.colour, obj.shape) for obj in scene.objects if obj.kind == "shape"))


def _absent_pairs(
    kind: str, scene: Scene, pairs: Sequence[tuple[str, str]], ranking: Sequence[tuple[str, str]], count: int, rng
) -> list[tuple[str, str]]:
    """``count`` distinct (colour, shape) pairs absent from the scene, drawn the POPE way ``kind``."""
    present = _present_pairs(scene)
    candidates = [pair for pair in (ranking if kind == "popular" else pairs) if pair not in present]
    if kind == "adversarial":  # sharing a colour or a shape with an object that is there
        candidates = [pair for pair in candidates if any(pair[0] == c or pair[1] == s for c, s in present)]
    if len(candidates) < count:
        raise ValueError(f"a scene has fewer than {count} absent {kind} objects: use more colours or shapes in config")
    if kind == "popular":  # the most frequent in training, in order
        return candidates[:count]
    return [candidates[i] for i in rng.choice(len(candidates), size=count, replace=False)]


def pope_questions(
    scenes: Sequence[Scene],
    train_scenes: Sequence[Scene],
    config: SceneConfig = VQA_SCENES,
    kinds: Sequence[str] = POPE_KINDS,
    seed: int = 0,
) -> list[ExistenceQuestion]:
    """POPE's yes/no questions, one balanced set per kind: for each scene, "yes" about each (colour, shape) in it
    and as many "no" about absent ones, drawn ``random``ly from every pair, among the ``popular`` ones (most
    frequent in ``train_scenes``, ties in config order), or ``adversarial``ly (sharing a colour or a shape with an
    object in the scene). Returns the questions, set after set, each tagged with its kind."""
    for name, value in (("scenes", scenes), ("train_scenes", train_scenes)):
        if isinstance(value, Scene) or not isinstance(value, Sequence) or not all(isinstance(s, Scene) for s in value):
            raise TypeError(f"{name} must be a sequence of Scene, got {type(value).__name__}")
        if not value:
            raise ValueError(f"{name} is empty")
    if isinstance(kinds, str) or not kinds or any(kind not in POPE_KINDS for kind in kinds):
        raise ValueError(f"kinds must be a non-empty sequence from {POPE_KINDS}, got {kinds!r}")
    _check_scene_config(config)
    check_int("seed", seed, minimum=0)
    pairs = [(colour, shape) for colour in config.colours for shape in config.shapes]
    frequency = Counter(pair for scene in train_scenes for pair in _present_pairs(scene))
    ranking = sorted(pairs, key=lambda pair: -frequency[pair])  # stable: ties keep config order
    rng = np.random.default_rng([seed, 11])
    questions = []
    for kind in kinds:
        for index, scene in enumerate(scenes):
            present = _present_pairs(scene)
            absent = _absent_pairs(kind, scene, pairs, ranking, len(present), rng)
            for answer, group in (("yes", present), ("no", absent)):
                questions += [ExistenceQuestion(index, existence_text(*pair), answer, *pair, kind) for pair in group]
    return questions


def _bools(name: str, values: Sequence[bool] | Tensor | np.ndarray) -> list[bool]:
    values = values.tolist() if isinstance(values, (Tensor, np.ndarray)) else values
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of bools, got {type(values).__name__}")
    if not all(isinstance(value, bool) for value in values):
        raise TypeError(f"{name} must hold bools, got {sorted({type(value).__name__ for value in values})}")
    return list(values)


def pope_scores(predicted_yes: Sequence[bool] | Tensor, truth: Sequence[bool] | Tensor) -> dict[str, float]:
    """POPE's numbers, "yes" the positive class: {"accuracy", "precision", "recall", "f1", "yes_rate"}. precision
    is 0.0 when nothing is predicted "yes" (and recall 0.0 when nothing is truly "yes"); f1 0.0 when both are 0."""
    predicted, actual = _bools("predicted_yes", predicted_yes), _bools("truth", truth)
    if len(predicted) != len(actual) or not predicted:
        raise ValueError(f"predicted_yes and truth must be equally long and non-empty, got {len(predicted)} and "
                         f"{len(actual)}")  # fmt: skip
    true_positives = sum(p and t for p, t in zip(predicted, actual, strict=True))
    precision = true_positives / sum(predicted) if any(predicted) else 0.0
    recall = true_positives / sum(actual) if any(actual) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = sum(p == t for p, t in zip(predicted, actual, strict=True)) / len(actual)
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1,
            "yes_rate": sum(predicted) / len(predicted)}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversation:
    scene_index: int  # into the scenes of its ConversationData (or VQAData)
    turns: tuple[tuple[str, str], ...]  # (user, assistant) pairs; the picture goes before the first user turn
    kind: str  # one of CONVERSATION_KINDS
    turn_types: tuple[str, ...]  # per turn: "caption", "existence" or a chapter 7 question type
    held_out: bool = False  # some turn asks a held-out (question type, subject) pair: never in train

    def __post_init__(self) -> None:
        if self.kind not in CONVERSATION_KINDS:
            raise ValueError(f"kind must be one of {CONVERSATION_KINDS}, got {self.kind!r}")
        if not self.turns or len(self.turn_types) != len(self.turns):
            raise ValueError(f"turns must be non-empty, one turn_types entry each, got {len(self.turns)} turns and "
                             f"{len(self.turn_types)} turn_types")  # fmt: skip


@dataclass
class ConversationData:
    """Conversations about scenes; conversation i is about ``scenes[conversations[i].scene_index]``."""

    config: VQAConfig
    split: str
    scenes: list[Scene]
    conversations: list[Conversation]

    def images(self) -> Tensor:
        """The scenes rendered: (S, 3, H, W) float in [0, 1]."""
        return render_scenes(self.scenes, self.config.scene)


def vqa_conversations(data: VQAData) -> list[Conversation]:
    """Chapter 7's questions as one-turn conversations, in order, about the same ``data.scenes``."""
    if not isinstance(data, VQAData):
        raise TypeError(f"data must be a VQAData (from generate_vqa), got {type(data).__name__}")
    rows = zip(data.questions, data.answers, data.question_types, data.scene_index.tolist(), data.held_out.tolist(),
               strict=True)  # fmt: skip
    return [Conversation(index, ((question, answer),), "vqa", (kind,), held_out)
            for question, answer, kind, index, held_out in rows]  # fmt: skip


def _counts(count: int, mix: Mapping[str, float]) -> dict[str, int]:
    """``count`` split over the kinds in proportion to ``mix``, largest remainders rounded up: they sum to count."""
    if not isinstance(mix, Mapping):
        raise TypeError(f"mix must be a mapping from kind to share, got {type(mix).__name__}")
    for kind, share in mix.items():
        if kind not in CONVERSATION_KINDS:
            raise ValueError(f"mix has the kind {kind!r}; choose from {CONVERSATION_KINDS}")
        check_finite_number(f"mix[{kind!r}]", share)
        if share < 0:
            raise ValueError(f"mix[{kind!r}] must be >= 0, got {share}")
    total = sum(mix.values())
    if not total > 0:
        raise ValueError(f"mix must give some kind a share > 0, got {dict(mix)}")
    exact = {kind: count * mix.get(kind, 0) / total for kind in CONVERSATION_KINDS}
    counts = {kind: int(value) for kind, value in exact.items()}
    by_remainder = sorted(CONVERSATION_KINDS, key=lambda kind: counts[kind] - exact[kind])
    for kind in by_remainder[: count - sum(counts.values())]:
        counts[kind] += 1
    return counts


def _existence_turn(scene: Scene, answer: str, pairs: Sequence[tuple[str, str]], rng) -> tuple[str, str]:
    present = _present_pairs(scene)
    group = present if answer == "yes" else [pair for pair in pairs if pair not in present]
    return existence_text(*group[rng.integers(len(group))]), answer


def _multi_turn(scene: Scene, index: int, config: VQAConfig, split: str, rng) -> Conversation:
    """Two or three turns about one scene, each of a different turn type, held-out questions skipped in train."""
    options: dict[str, list] = {"caption": [(CAPTION_QUESTION, describe_scene(scene, config.scene))]}
    options["existence"] = [_existence_turn(scene, answer, drawable_pairs(config.scene, split), rng)
                            for answer in ("yes", "no")]  # fmt: skip
    for question in scene_questions(scene, config):
        if split != "train" or not is_held_out(question, config):
            options.setdefault(question.question_type, []).append(question)
    chosen = [list(options)[i] for i in rng.choice(len(options), size=2 + int(rng.integers(2)), replace=False)]
    turns, held_out = [], False
    for turn_type in chosen:
        picked = options[turn_type][rng.integers(len(options[turn_type]))]
        if turn_type not in ("caption", "existence"):
            held_out |= is_held_out(picked, config)
            picked = (picked.text, picked.answer)
        turns.append(picked)
    return Conversation(index, tuple(turns), "multi_turn", tuple(chosen), held_out)


def generate_conversations(
    count: int,
    config: VQAConfig = VQA_DEFAULTS,
    seed: int = 0,
    split: str = "train",
    mix: Mapping[str, float] = DEFAULT_MIX,
) -> ConversationData:
    """``count`` conversations, kinds in proportion to ``mix``, shuffled. The ``vqa`` ones are exactly
    ``generate_vqa(n_vqa, config, seed, split)``'s questions; existence answers alternate yes / no; train never
    asks a held-out (question type, subject). Only the scenes used are kept."""
    check_positive_int("count", count)
    if not isinstance(config, VQAConfig):
        raise TypeError(f"config must be a VQAConfig, got {type(config).__name__}")
    check_int("seed", seed, minimum=0)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    counts = _counts(count, mix)
    pool = generate_scenes(max(100, int(count * config.scenes_per_question)), config.scene, seed, split)
    conversations: list[Conversation] = []
    if counts["vqa"]:
        vqa = generate_vqa(counts["vqa"], config, seed, split)  # its pool is a prefix of ours: same seed and split
        at = {scene: index for index, scene in enumerate(pool)}
        conversations += [
            Conversation(at[vqa.scenes[c.scene_index]], c.turns, c.kind, c.turn_types, c.held_out)
            for c in vqa_conversations(vqa)
        ]
    rng = np.random.default_rng([seed, SPLITS.index(split), 9])  # a stream apart from the scenes' and vqa's
    pairs = drawable_pairs(config.scene, split)
    for turn in range(counts["existence"]):
        index = int(rng.integers(len(pool)))
        user_assistant = _existence_turn(pool[index], ("yes", "no")[turn % 2], pairs, rng)
        conversations.append(Conversation(index, (user_assistant,), "existence", ("existence",)))
    for _ in range(counts["caption"]):
        index = int(rng.integers(len(pool)))
        caption = (CAPTION_QUESTION, describe_scene(pool[index], config.scene))
        conversations.append(Conversation(index, (caption,), "caption", ("caption",)))
    for _ in range(counts["multi_turn"]):
        index = int(rng.integers(len(pool)))
        conversations.append(_multi_turn(pool[index], index, config, split, rng))
    conversations = [conversations[i] for i in rng.permutation(len(conversations))]
    used = sorted({c.scene_index for c in conversations})
    new_index = {old: new for new, old in enumerate(used)}
    conversations = [Conversation(new_index[c.scene_index], c.turns, c.kind, c.turn_types, c.held_out)
                     for c in conversations]  # fmt: skip
    return ConversationData(config, split, [pool[index] for index in used], conversations)


def conversation_messages(conversation: Conversation, picture: str = IMAGE_TOKEN) -> list[dict[str, str]]:
    """The conversation as chat messages, ``picture`` (the image placeholder, or ``text_picture(...)``) on the first
    user line: [{"role": "user", "content": "<image>\\nwhat colour is the circle ?"}, {"role": "assistant", …}, …]."""
    if not isinstance(conversation, Conversation):
        raise TypeError(f"conversation must be a Conversation, got {type(conversation).__name__}")
    if not isinstance(picture, str):
        raise TypeError(f"picture must be a string, got {type(picture).__name__}")
    messages = []
    for index, (user, assistant) in enumerate(conversation.turns):
        content = f"{picture}\n{user}" if index == 0 else user
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": assistant}]
    return messages


def chat_prompt(conversation: Conversation, picture: str = IMAGE_TOKEN) -> tuple[str, str]:
    """(prompt, answer): the ChatML of every turn before the last answer, ending with the assistant's opening, and
    that last answer. One turn and the placeholder give ``vlm_prompt(question)``; earlier answers are context."""
    messages = conversation_messages(conversation, picture)
    return chatml(messages[:-1], add_generation_prompt=True), messages[-1]["content"]
