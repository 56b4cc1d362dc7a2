"""TALLRec's yes/no preference prompt (Bao et al., RecSys 2023; repo SAI990323/TALLRec).

Followed as closely as its code documents: the Alpaca "instruction + input" template of
``finetune_rec.py`` (without the stray ``# noqa: E501`` that leaked into its string), the
instruction and input of ``preprocess_movie.py``: movie titles in double quotes, liked
(rating > 3) history items under "User Preference", the others under "User Unpreference",
at most 10 history items, then the target. The answer is "Yes." or "No."; the prompt ends
right before it, so the next token's distribution holds the model's answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INSTRUCTION = (
    "Given the user's preference and unpreference, identify whether the user will like the "
    'target movie by answering "Yes." or "No."'
)
HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
ANSWERS = ("Yes", "No")  # first token of TALLRec's "Yes." / "No." (index 0 = positive)
LIKED_ABOVE = 3.0  # "liked" = rating > 3, TALLRec's label


def item_title(text: str) -> str:
    """The title part of an item text: MovieLens texts here are "Title (Year). Genres: A, B"
    and TALLRec shows titles only; other texts are used whole."""
    return text.split(". Genres:", 1)[0].strip()


def _quoted(titles: Sequence[str]) -> str:
    return ", ".join(f'"{t}"' for t in titles)


def build_prompt(history: Sequence[str], liked: Sequence[bool], target: str) -> str:
    """The prompt for one (history, target) pair; ``history`` oldest first, as titles."""
    if len(history) != len(liked):
        raise ValueError(f"{len(history)} history items but {len(liked)} liked flags")
    pref = [t for t, y in zip(history, liked) if y]
    unpref = [t for t, y in zip(history, liked) if not y]
    inp = (
        f"User Preference: {_quoted(pref)}\n"
        f"User Unpreference: {_quoted(unpref)}\n"
        f'Whether the user will like the target movie "{target}"?'
    )
    return f"{HEADER}\n\n### Instruction:\n{INSTRUCTION}\n\n### Input:\n{inp}\n\n### Response:\n"


def user_ratings(run, row: int) -> np.ndarray:
    """The liked flags (rating > 3) of split row ``row``'s whole sequence, time order."""
    if run.data.ratings is None:
        raise ValueError(f"model=causal_lora needs ratings: dataset {run.data.name!r} has no rating column")
    return np.asarray(run.data.ratings[int(run.split.users[row])]) > LIKED_ABOVE


class PromptBuilder:
    """Prompts from item indices, with titles looked up once."""

    def __init__(self, item_text: list[str], max_history: int) -> None:
        self.titles = [item_title(t) for t in item_text]
        self.max_history = max_history

    def __call__(self, items: np.ndarray, liked: np.ndarray, t: int) -> str:
        """Prompt for target position ``t`` of ``items`` with the items before it as history."""
        lo = max(0, t - self.max_history)
        return build_prompt([self.titles[i] for i in items[lo:t]], list(liked[lo:t]), self.titles[items[t]])
