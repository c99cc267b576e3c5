"""Generated instructions and preferences for instruction tuning and DPO (chapter 8).

Four tasks with one exact answer each, templated from a seed: arithmetic (``What is 23 + 45?`` → ``68``), list
sorting, date formatting (``Write 5 March 2031 as YYYY-MM-DD.`` → ``2031-03-05``) and word problems. The same
facts also come as raw documents without any question–answer format (``pretraining_text``), for pretraining a
base model. ``chat_text`` wraps an instruction in the chat format the tuned model learns; ``preference_pairs``
pairs a preferred response with a worse one: correct vs incorrect, concise vs rambling. Everything is
deterministic from its seed; ``instruction_splits`` keeps every test prompt out of the training set.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mmcourse.data.dates import ENGLISH_MONTHS

TASKS = ("arithmetic", "sorting", "dates", "word_problem")
PAIR_KINDS = ("correct", "concise")
NAMES = ("Ann", "Ben", "Chen", "Dara", "Eli", "Fatima", "Hugo", "Li", "Mia", "Omar", "Sara", "Tom")
THINGS = ("apples", "books", "coins", "pens", "shells", "stamps", "cards", "eggs")
RAMBLES = (" I hope this helps!", " Happy to help again.", " Thanks for asking!")
USER, ASSISTANT = "User: ", "Assistant:"


@dataclass(frozen=True)
class Instruction:
    task: str
    prompt: str
    response: str  # the exact answer, nothing else


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    kind: str  # "correct" (right vs wrong answer) or "concise" (the answer vs the answer plus rambling)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _facts(task: str, rng: random.Random) -> dict:
    """The random content of one example of ``task``."""
    if task == "arithmetic":
        return {"a": rng.randrange(40), "b": rng.randrange(40)}
    if task == "sorting":
        return {"numbers": [rng.randrange(10) for _ in range(rng.randint(3, 5))]}
    if task == "dates":
        return {"year": rng.randint(1950, 2049), "month": rng.randint(1, 12), "day": rng.randint(1, 28)}
    return {"name": rng.choice(NAMES), "things": rng.choice(THINGS), "a": rng.randint(2, 20), "b": rng.randint(1, 9)}


def _answer(task: str, facts: dict) -> str:
    if task in ("arithmetic", "word_problem"):
        return str(facts["a"] + facts["b"])
    if task == "sorting":
        return " ".join(str(n) for n in sorted(facts["numbers"]))
    return f"{facts['year']:04d}-{facts['month']:02d}-{facts['day']:02d}"


def _written_date(facts: dict) -> str:
    return f"{facts['day']} {ENGLISH_MONTHS[facts['month'] - 1]} {facts['year']}"


def _prompt(task: str, facts: dict) -> str:
    if task == "arithmetic":
        return f"What is {facts['a']} + {facts['b']}?"
    if task == "sorting":
        return "Sort these numbers: " + " ".join(str(n) for n in facts["numbers"])
    if task == "dates":
        return f"Write {_written_date(facts)} as YYYY-MM-DD."
    return f"{facts['name']} has {facts['a']} {facts['things']} and gets {facts['b']} more. How many now?"


def _document(task: str, facts: dict) -> str:
    """The same fact as raw text, with no question and no answer format."""
    answer = _answer(task, facts)
    if task == "arithmetic":
        return f"{facts['a']} + {facts['b']} = {answer}."
    if task == "sorting":
        return "In order, " + " ".join(str(n) for n in facts["numbers"]) + f" becomes {answer}."
    if task == "dates":
        return f"The date {_written_date(facts)} is written {answer}."
    return f"{facts['name']} had {facts['a']} {facts['things']}, got {facts['b']} more and then had {answer}."


def make_instruction(task: str, rng: random.Random) -> Instruction:
    """One instruction of ``task`` with its exact answer."""
    _check_task(task)
    facts = _facts(task, rng)
    return Instruction(task, _prompt(task, facts), _answer(task, facts))


def generate_instructions(
    n: int, seed: int = 0, tasks: Sequence[str] = TASKS, exclude: set[str] | frozenset[str] = frozenset()
) -> list[Instruction]:
    """n distinct instructions, tasks in turn, none of whose prompts is in ``exclude``."""
    _check_count("n", n)
    for task in tasks:
        _check_task(task)
    rng = random.Random(seed)
    seen, instructions = set(exclude), []
    attempts = 0
    while len(instructions) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"could not draw {n} distinct instructions: too few possible prompts for {tasks}")
        instruction = make_instruction(tasks[len(instructions) % len(tasks)], rng)
        if instruction.prompt not in seen:
            seen.add(instruction.prompt)
            instructions.append(instruction)
    return instructions


def instruction_splits(n_train: int, n_test: int, seed: int = 0) -> dict[str, list[Instruction]]:
    """{"train", "test"}: instructions whose prompts never occur in both."""
    train = generate_instructions(n_train, seed)
    test = generate_instructions(n_test, seed + 10_000, exclude={item.prompt for item in train})
    return {"train": train, "test": test}


def pretraining_text(n_documents: int, seed: int = 0) -> str:
    """Raw text for a base model: one fact per line, in the form of a statement, never a question and answer."""
    _check_count("n_documents", n_documents)
    rng = random.Random(seed)
    lines = []
    for index in range(n_documents):
        task = TASKS[index % len(TASKS)]
        lines.append(_document(task, _facts(task, rng)))
    return "\n".join(lines) + "\n"


def chat_text(prompt: str, response: str | None = None) -> str:
    """The chat format: ``User: <prompt>\\nAssistant:``, then `` <response>`` when given (the model's turn)."""
    if not prompt or "\n" in prompt:
        raise ValueError(f"prompt must be one non-empty line, got {prompt!r}")
    text = f"{USER}{prompt}\n{ASSISTANT}"
    return text if response is None else f"{text} {response}"


def ramble(response: str, rng: random.Random) -> str:
    """The answer followed by a sentence that adds nothing."""
    return response + "." + rng.choice(RAMBLES)


def wrong_answer(instruction: Instruction, rng: random.Random) -> str:
    """A plausible but incorrect answer to ``instruction``: off by a little, out of order, or a wrong day."""
    _check_task(instruction.task)
    right = instruction.response
    if instruction.task in ("arithmetic", "word_problem"):
        return str(int(right) + rng.choice((-2, -1, 1, 2, 10)))
    if instruction.task == "sorting":
        numbers = right.split()
        if len(set(numbers)) == 1:
            return " ".join([*numbers, numbers[0]])  # one number too many
        while " ".join(numbers) == right:
            rng.shuffle(numbers)
        return " ".join(numbers)
    year, month, day = right.split("-")
    return f"{year}-{day}-{month}" if day != month and int(day) <= 12 else f"{year}-{month}-{int(day) % 28 + 1:02d}"


def preference_pairs(
    instructions: Sequence[Instruction], seed: int = 0, kinds: Sequence[str] = PAIR_KINDS
) -> list[PreferencePair]:
    """One pair per instruction, kinds in turn: "correct" prefers the answer to a wrong one, "concise" prefers
    the answer alone to the answer followed by rambling."""
    for kind in kinds:
        if kind not in PAIR_KINDS:
            raise ValueError(f"kind={kind!r} is not one of {PAIR_KINDS}")
    if not kinds:
        raise ValueError("kinds must name at least one kind of pair")
    rng = random.Random(seed)
    pairs = []
    for index, instruction in enumerate(instructions):
        kind = kinds[index % len(kinds)]
        rejected = wrong_answer(instruction, rng) if kind == "correct" else ramble(instruction.response, rng)
        pairs.append(PreferencePair(instruction.prompt, instruction.response, rejected, kind))
    return pairs


def sft_responses(instructions: Sequence[Instruction], rambling_share: float, seed: int = 0) -> list[str]:
    """Demonstration responses as people write them: the answer, followed by rambling in a ``rambling_share``."""
    if not 0.0 <= rambling_share <= 1.0:
        raise ValueError(f"rambling_share must be in [0, 1], got {rambling_share!r}")
    rng = random.Random(seed)
    return [ramble(item.response, rng) if rng.random() < rambling_share else item.response for item in instructions]
