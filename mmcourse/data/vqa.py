"""Visual question answering (视觉问答) on generated scenes: questions, answers and a held-out split (chapter 7).

The scenes are chapter 5's (:mod:`mmcourse.data.scenes`) with two or three coloured shapes each, every shape in
its own cell of the plus-shaped layout (``left``, ``right``, ``top``, ``bottom``, ``centre``). Five question
types ask about them, each with a small set of answers:

- ``colour``: "what colour is the circle?" (the shape is unique in the scene) → a colour;
- ``shape``: "what shape is the red object?" (the colour is unique) → circle, square or triangle;
- ``count``: "how many red objects are there?" or "how many circles are there?" → zero … three;
- ``position``: "where is the red circle?" → left, right, top, bottom or centre;
- ``relation``: "is the circle left of the square?" (both unique) → yes or no. "left of" compares the two
  objects' grid columns, "above" their rows, so an answer never depends on a pixel of jitter.

Balance by construction: the question types take turns, within a type the answers do, and for each answer the
type's templates do, so every answer of a type is asked equally often (to within one), by each template; then a
(scene, question) pair that has that answer is drawn from a pool of scenes. A model cannot score above chance on
a type by learning which answer is most common, nor which answer a template prefers.

Held-out combinations (组合泛化): ``VQAConfig.held_out`` lists (question type, subject) pairs — the subject is the
word the question is about: the shape of a colour question, the colour of a shape or position question, the
counted colour or shape, the first shape of a relation. Those questions never occur in ``train``; ``validation``
and ``test`` draw them like every other and flag them (``VQAData.held_out``). Everything is deterministic from
the seed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mmcourse.data.scenes import POSITION_CELLS, SPLITS, Scene, SceneConfig, generate_scenes, render_scenes
from mmcourse.tokenizers import SPECIAL_TOKENS, pad_batch

QUESTION_TYPES = ("colour", "shape", "count", "position", "relation")
COUNT_WORDS = ("zero", "one", "two", "three")
RELATIONS = ("left of", "right of", "above", "below")
YES_NO = ("yes", "no")
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": ("what colour is the {shape} ?",),
    "shape": ("what shape is the {colour} object ?",),
    "count": ("how many {colour} objects are there ?", "how many {shape}s are there ?"),
    "position": ("where is the {colour} {shape} ?",),
    "relation": ("is the {shape} {relation} the {other} ?",),
}
VQA_SCENES = SceneConfig(
    image_size=48, digits=False, sizes=("small",), min_objects=2, max_objects=3, held_out=()
)  # shapes only, two or three per scene, small enough that three always fit
_WORD = re.compile(r"[a-z]+|[^\sa-z]")


@dataclass(frozen=True)
class VQAConfig:
    scene: SceneConfig = VQA_SCENES
    question_types: tuple[str, ...] = QUESTION_TYPES
    held_out: tuple[tuple[str, str], ...] = (
        ("colour", "triangle"),
        ("shape", "green"),
        ("count", "blue"),
        ("position", "yellow"),
        ("relation", "square"),
    )  # (question type, subject): never asked in train
    scenes_per_question: float = 0.5  # the pool of scenes questions are drawn from, per question asked

    def __post_init__(self) -> None:
        if not isinstance(self.scene, SceneConfig):
            raise ValueError(f"scene must be a SceneConfig, got {type(self.scene).__name__}")
        if self.scene.min_objects < 2:
            raise ValueError(f"scene.min_objects must be >= 2 (relation questions need two objects), got "
                             f"{self.scene.min_objects}")  # fmt: skip
        if self.scene.max_objects > len(COUNT_WORDS) - 1:
            raise ValueError(f"scene.max_objects must be <= {len(COUNT_WORDS) - 1}, the largest count answer")
        if self.scene.digits:
            raise ValueError("scene.digits must be False: the questions are about shapes")
        if not self.question_types or any(kind not in QUESTION_TYPES for kind in self.question_types):
            raise ValueError(f"question_types must be a non-empty tuple from {QUESTION_TYPES}, got "
                             f"{self.question_types!r}")  # fmt: skip
        if len(set(self.question_types)) != len(self.question_types):
            raise ValueError(f"question_types has a repeated type: {self.question_types}")
        subjects = {"colour": self.scene.shapes, "shape": self.scene.colours, "position": self.scene.colours,
                    "count": self.scene.colours + self.scene.shapes, "relation": self.scene.shapes}  # fmt: skip
        for pair in self.held_out:
            if len(pair) != 2 or pair[0] not in QUESTION_TYPES or pair[1] not in subjects[pair[0]]:
                raise ValueError(f"held_out pair {pair!r} must be (question type, a subject word of that type)")
        if not self.scenes_per_question > 0:
            raise ValueError(f"scenes_per_question must be > 0, got {self.scenes_per_question!r}")

    def answers(self, question_type: str) -> tuple[str, ...]:
        """The answers a question type can have, in a fixed order."""
        if question_type not in QUESTION_TYPES:
            raise ValueError(f"question_type must be one of {QUESTION_TYPES}, got {question_type!r}")
        return {
            "colour": self.scene.colours,
            "shape": self.scene.shapes,
            "count": COUNT_WORDS[: self.scene.max_objects + 1],
            "position": self.scene.positions,
            "relation": YES_NO,
        }[question_type]

    @property
    def answer_vocabulary(self) -> tuple[str, ...]:
        """Every answer of every question type, each once: the classes of a VQA model."""
        return tuple(dict.fromkeys(a for kind in self.question_types for a in self.answers(kind)))


@dataclass(frozen=True)
class Question:
    question_type: str
    text: str
    answer: str
    subject: str  # the word the question is about (see the module docstring)
    template: int = 0  # which of the type's QUESTION_TEMPLATES


def _column_row(position: str) -> tuple[int, int]:
    row, column = POSITION_CELLS[position]
    return column, row


def relation_holds(relation: str, first_position: str, second_position: str) -> bool:
    """Whether an object at ``first_position`` is ``relation`` one at ``second_position``, by grid cells."""
    (first_column, first_row), (second_column, second_row) = _column_row(first_position), _column_row(second_position)
    if relation == "left of":
        return first_column < second_column
    if relation == "right of":
        return first_column > second_column
    if relation == "above":
        return first_row < second_row
    if relation == "below":
        return first_row > second_row
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


def scene_questions(scene: Scene, config: VQAConfig = VQAConfig()) -> list[Question]:
    """Every question of ``config.question_types`` this scene answers unambiguously, with its answer."""
    objects = scene.objects
    shape_count = Counter(obj.shape for obj in objects)
    colour_count = Counter(obj.colour for obj in objects)
    pair_count = Counter((obj.colour, obj.shape) for obj in objects)
    questions: list[Question] = []
    kinds = set(config.question_types)
    for obj in objects:
        if "colour" in kinds and shape_count[obj.shape] == 1:
            text = QUESTION_TEMPLATES["colour"][0].format(shape=obj.shape)
            questions.append(Question("colour", text, obj.colour, obj.shape))
        if "shape" in kinds and colour_count[obj.colour] == 1:
            text = QUESTION_TEMPLATES["shape"][0].format(colour=obj.colour)
            questions.append(Question("shape", text, obj.shape, obj.colour))
        if "position" in kinds and pair_count[(obj.colour, obj.shape)] == 1:
            text = QUESTION_TEMPLATES["position"][0].format(colour=obj.colour, shape=obj.shape)
            questions.append(Question("position", text, obj.position, obj.colour))
    if "count" in kinds:
        for colour in config.scene.colours:
            text = QUESTION_TEMPLATES["count"][0].format(colour=colour)
            questions.append(Question("count", text, COUNT_WORDS[colour_count[colour]], colour))
        for shape in config.scene.shapes:
            text = QUESTION_TEMPLATES["count"][1].format(shape=shape)
            questions.append(Question("count", text, COUNT_WORDS[shape_count[shape]], shape, template=1))
    if "relation" in kinds:
        unique = [obj for obj in objects if shape_count[obj.shape] == 1]
        for first in unique:
            for second in unique:
                if first is second:
                    continue
                for relation in RELATIONS:
                    answer = "yes" if relation_holds(relation, first.position, second.position) else "no"
                    text = QUESTION_TEMPLATES["relation"][0].format(shape=first.shape, relation=relation,
                                                                    other=second.shape)  # fmt: skip
                    questions.append(Question("relation", text, answer, first.shape))
    return questions


@dataclass
class VQAData:
    """Questions about rendered scenes. Question i asks about image ``scene_index[i]``."""

    config: VQAConfig
    split: str
    scenes: list[Scene]
    images: Tensor  # (S, 3, H, W), each scene rendered once
    questions: list[str]
    answers: list[str]
    question_types: list[str]
    subjects: list[str]
    scene_index: Tensor  # (N,) int64 into images
    answer_ids: Tensor  # (N,) int64 into config.answer_vocabulary
    held_out: Tensor  # (N,) bool: a (type, subject) pair never asked in train
    type_ids: Tensor = field(init=False)  # (N,) int64 into config.question_types

    def __post_init__(self) -> None:
        self.type_ids = torch.tensor([self.config.question_types.index(t) for t in self.question_types])

    def __len__(self) -> int:
        return len(self.questions)

    def answer_counts(self) -> dict[str, Counter]:
        """For each question type, how often each of its answers is asked."""
        counts: dict[str, Counter] = {kind: Counter() for kind in self.config.question_types}
        for kind, answer in zip(self.question_types, self.answers, strict=True):
            counts[kind][answer] += 1
        return counts


def is_held_out(question: Question, config: VQAConfig) -> bool:
    """Whether the question's (question type, subject) is one of ``config.held_out``: never asked in train."""
    return (question.question_type, question.subject) in config.held_out


def generate_vqa(count: int, config: VQAConfig = VQAConfig(), seed: int = 0, split: str = "train") -> VQAData:
    """``count`` balanced questions about scenes drawn from ``seed`` and ``split``; train never asks a held-out one."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    pool = generate_scenes(max(100, int(count * config.scenes_per_question)), config.scene, seed, split)
    candidates: dict[tuple[str, str], list[tuple[int, Question]]] = {}
    for index, scene in enumerate(pool):
        for question in scene_questions(scene, config):
            if split == "train" and is_held_out(question, config):
                continue
            key = (question.question_type, question.template, question.answer)
            candidates.setdefault(key, []).append((index, question))
    rng = np.random.default_rng([seed, SPLITS.index(split), 7])  # a stream apart from the scenes'
    slots = [(config.question_types[i % len(config.question_types)], i // len(config.question_types))
             for i in range(count)]  # fmt: skip
    chosen: list[tuple[int, Question]] = []
    for kind, turn in slots:
        answers, templates = config.answers(kind), len(QUESTION_TEMPLATES[kind])
        answer = answers[turn % len(answers)]  # the answers of a type take turns: balanced by construction …
        template = (turn // len(answers)) % templates  # … and, for each answer, the templates of the type
        group = candidates.get((kind, template, answer))
        if not group:
            raise ValueError(f"no scene in the pool of {len(pool)} gives a {kind} question (template {template}) the "
                             f"answer {answer!r}: raise scenes_per_question or count")  # fmt: skip
        chosen.append(group[rng.integers(len(group))])
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]
    used = sorted({index for index, _ in chosen})
    new_index = {old: new for new, old in enumerate(used)}
    scenes = [pool[index] for index in used]
    answer_vocabulary = config.answer_vocabulary
    return VQAData(
        config=config,
        split=split,
        scenes=scenes,
        images=render_scenes(scenes, config.scene),  # (S, 3, H, W)
        questions=[question.text for _, question in chosen],
        answers=[question.answer for _, question in chosen],
        question_types=[question.question_type for _, question in chosen],
        subjects=[question.subject for _, question in chosen],
        scene_index=torch.tensor([new_index[index] for index, _ in chosen], dtype=torch.long),  # (N,)
        answer_ids=torch.tensor([answer_vocabulary.index(q.answer) for _, q in chosen], dtype=torch.long),
        held_out=torch.tensor([is_held_out(question, config) for _, question in chosen], dtype=torch.bool),
    )


# ---------------------------------------------------------------------------------------------------------------
# Words to ids
# ---------------------------------------------------------------------------------------------------------------


def split_words(text: str) -> list[str]:
    """Lowercase words and single punctuation marks: 'Is the circle left?' → ['is', 'the', 'circle', 'left', '?']."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    return _WORD.findall(text.lower())


class WordVocabulary:
    """One id per word; ids 0–3 are the special tokens ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>`` (as chapter 2's
    ``CharVocabulary``). For the closed, generated vocabularies of questions and captions, whole words are the
    natural tokens."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"tokens must start with the special tokens {SPECIAL_TOKENS}, got {tuple(tokens[:4])}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("tokens must not repeat")
        self.tokens: list[str] = list(tokens)
        self.token_to_id = {token: index for index, token in enumerate(self.tokens)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(len(SPECIAL_TOKENS))

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> WordVocabulary:
        """Every word of ``texts``, sorted, after the special tokens."""
        return cls([*SPECIAL_TOKENS, *sorted({word for text in texts for word in split_words(text)})])

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Words → ids (``<unk>`` for an unknown word), optionally wrapped in ``<bos>`` … ``<eos>``."""
        ids = [self.token_to_id.get(word, self.unk_id) for word in split_words(text)]
        return [self.bos_id] * add_bos + ids + [self.eos_id] * add_eos

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> tuple[Tensor, Tensor]:
        """Encode and right-pad: (input_ids (batch, T), attention_mask (batch, T), 1 = real token).

        Where the texts enter the models: every id is one of the vocabulary's, and a text that gives no token is
        refused here (a row of padding alone has nothing to attend to), so the models need not check their ids."""
        sequences = [self.encode(text, add_bos, add_eos) for text in texts]
        empty = [index for index, sequence in enumerate(sequences) if not sequence]
        if empty:
            raise ValueError(f"texts {empty[:5]} have no words: every text needs at least one token")
        return pad_batch(sequences, self.pad_id)

    def decode(self, ids: Iterable[int] | Tensor, skip_special: bool = True) -> str:
        """Ids → words joined by spaces; stops at ``<eos>`` and drops special tokens when ``skip_special``."""
        if isinstance(ids, Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids must be one sequence (T,), got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        words = []
        for index in ids:
            if not 0 <= index < len(self.tokens):
                raise ValueError(f"id {index} is outside the vocabulary [0, {len(self.tokens)})")
            if skip_special and index == self.eos_id:
                break
            if skip_special and index < len(SPECIAL_TOKENS):
                continue
            words.append(self.tokens[index])
        return " ".join(words)


def question_vocabulary(config: VQAConfig = VQAConfig()) -> WordVocabulary:
    """Every word any question template can produce: no question, held-out ones included, meets ``<unk>``."""
    words = [re.sub(r"\{\w+\}s?", " ", template) for templates in QUESTION_TEMPLATES.values() for template in templates]
    fills = [*config.scene.shapes, *(f"{shape}s" for shape in config.scene.shapes), *config.scene.colours, *RELATIONS]
    return WordVocabulary.from_texts(words + fills)
