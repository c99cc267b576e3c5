import random
import re

import pytest

from mmcourse.data.instructions import (
    PAIR_KINDS,
    TASKS,
    chat_text,
    generate_instructions,
    instruction_splits,
    make_instruction,
    preference_pairs,
    pretraining_text,
    ramble,
    sft_responses,
    wrong_answer,
)


def solve(prompt: str) -> str:
    """An independent solver of the four tasks, from the prompt's text alone."""
    if match := re.fullmatch(r"What is (\d+) \+ (\d+)\?", prompt):
        return str(int(match[1]) + int(match[2]))
    if prompt.startswith("Sort these numbers: "):
        return " ".join(sorted(prompt.removeprefix("Sort these numbers: ").split(), key=int))
    if match := re.fullmatch(r"Write (\d+) (\w+) (\d+) as YYYY-MM-DD\.", prompt):
        import datetime

        day = datetime.datetime.strptime(f"{match[1]} {match[2]} {match[3]}", "%d %B %Y").date()
        return day.isoformat()
    match = re.fullmatch(r"\w+ has (\d+) \w+ and gets (\d+) more\. How many now\?", prompt)
    assert match, prompt
    return str(int(match[1]) + int(match[2]))


def test_every_answer_is_right() -> None:
    instructions = generate_instructions(400, seed=3)
    assert {item.task for item in instructions} == set(TASKS)
    for item in instructions:
        assert item.response == solve(item.prompt), item


def test_generation_is_deterministic_and_distinct() -> None:
    assert generate_instructions(50, seed=1) == generate_instructions(50, seed=1)
    assert generate_instructions(50, seed=1) != generate_instructions(50, seed=2)
    prompts = [item.prompt for item in generate_instructions(300, seed=0)]
    assert len(set(prompts)) == len(prompts)


def test_splits_hold_out_every_test_prompt() -> None:
    splits = instruction_splits(500, 200, seed=0)
    assert len(splits["train"]) == 500 and len(splits["test"]) == 200
    assert not {item.prompt for item in splits["train"]} & {item.prompt for item in splits["test"]}


def test_wrong_answers_are_wrong_and_rambles_keep_the_answer() -> None:
    rng = random.Random(0)
    for item in generate_instructions(400, seed=5):
        assert wrong_answer(item, rng) != item.response
        rambling = ramble(item.response, rng)
        assert rambling.startswith(item.response + ".") and len(rambling) > len(item.response) + 10


def test_preference_pairs_alternate_kinds() -> None:
    instructions = generate_instructions(40, seed=0)
    pairs = preference_pairs(instructions, seed=0)
    assert [pair.kind for pair in pairs[:4]] == [*PAIR_KINDS, *PAIR_KINDS]
    for pair, item in zip(pairs, instructions, strict=True):
        assert pair.prompt == item.prompt and pair.chosen == item.response and pair.rejected != pair.chosen
    with pytest.raises(ValueError, match="kind"):
        preference_pairs(instructions, kinds=("longer",))


def test_pretraining_text_has_the_facts_but_no_questions() -> None:
    text = pretraining_text(200, seed=0)
    lines = text.splitlines()
    assert len(lines) == 200 and "?" not in text and "User:" not in text
    assert any(re.fullmatch(r"\d+ \+ \d+ = \d+\.", line) for line in lines)


def test_chat_text_and_sft_responses() -> None:
    assert chat_text("What is 1 + 2?") == "User: What is 1 + 2?\nAssistant:"
    assert chat_text("What is 1 + 2?", "3") == "User: What is 1 + 2?\nAssistant: 3"
    with pytest.raises(ValueError, match="prompt"):
        chat_text("two\nlines")
    instructions = generate_instructions(400, seed=0)
    responses = sft_responses(instructions, rambling_share=0.5, seed=0)
    rambling = sum(response != item.response for response, item in zip(responses, instructions, strict=True))
    assert 150 < rambling < 250
    assert sft_responses(instructions, 0.0) == [item.response for item in instructions]
    with pytest.raises(ValueError, match="rambling_share"):
        sft_responses(instructions, 1.5)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="task"):
        make_instruction("poetry", random.Random(0))
    with pytest.raises(ValueError, match="n must"):
        generate_instructions(-1)
