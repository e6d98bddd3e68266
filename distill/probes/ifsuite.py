"""The IF probe's items: a generated suite of verifiable-instruction prompts, and users' own from JSONL.

The generated suite: ~30 generic writing tasks (templates x fillers, written here; no hub data) each with one
or two constraints of :mod:`distill.probes.ifeval` drawn with sensible parameters and never contradicting
each other (:func:`distill.probes.ifeval.compatible`). Deterministic for (n, seed); a smaller n gives a prefix.
A user's items: JSONL rows ``{"id", "base", "constraints": [{"kind", ...kwargs}]}``; errors name file:line.

Run: ``python -c "from distill.probes.ifsuite import make_if_items; print(make_if_items(3, 0)[0].prompt)"``
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from distill.probes.ifeval import KINDS, RELATIONS, Constraint, IFItem, build_prompt, compatible, make_constraint

_FILL = {
    "person": ["a new neighbour", "your manager", "a school friend", "your grandmother", "a new colleague",
               "your landlord", "a team of volunteers", "a pen pal abroad", "your sports coach", "a local librarian"],
    "topic": ["a delayed delivery", "a weekend trip", "learning a new language", "a community garden",
              "saving energy at home", "a book you enjoyed", "a change of schedule", "a small business idea",
              "healthy sleep habits", "a charity bake sale"],
    "thing": ["a lighthouse", "a public library", "a bicycle", "a thunderstorm", "an old map", "a cup of tea",
              "a city park in autumn", "a train station at night", "a vegetable garden", "a second-hand bookshop"],
    "activity": ["running a first marathon", "cooking on a budget", "studying for exams", "moving to a new city",
                 "planting tomatoes", "learning to swim", "working from home", "planning a picnic",
                 "starting a podcast", "keeping a journal"],
    "place": ["a mountain village", "a busy market", "a quiet beach", "a science museum", "an island ferry",
              "a desert town", "a rooftop garden", "a night market", "a small harbour", "a forest cabin"],
}
_TASKS = [
    "Write a note to {person} about {topic}.", "Write an email to {person} about {topic}.",
    "Write a message to {person} explaining {topic}.", "Describe {thing}.",
    "Write a poem about {thing}.", "Write a product description for a postcard showing {thing}.",
    "Explain why {thing} might appear in a children's story.", "Write a diary entry about {thing}.",
    "List some tips for {activity}.", "Give advice to a friend who is {activity}.",
    "Explain common mistakes people make when {activity}.", "Write a plan for {activity}.",
    "Summarise the benefits of {activity}.", "Write an encouraging message for someone {activity}.",
    "Describe a day in {place}.", "Write a travel blog post about {place}.",
    "Write a story that takes place in {place}.", "Write a postcard from {place}.",
    "Describe the sounds and smells of {place}.", "Write a speech about {topic}.",
    "Summarise a meeting about {topic}.", "Write a social media post about {topic}.",
    "Write an announcement about {topic}.", "Write a dialogue between two friends about {topic}.",
    "Write a riddle whose answer is {thing}.", "Compare {thing} with {place}.",
    "Write a thank-you note to {person} for help with {activity}.", "Invite {person} to visit {place}.",
    "Explain to {person} what you learned from {activity}.", "Write a to-do list for {activity}.",
]
_KEYWORDS = ["simple", "future", "balance", "journey", "community", "patience", "colour", "morning", "promise"]
_BANNED = ["very", "really", "basically", "actually", "stuff", "amazing", "literally"]
_STARTS = ["Here is my answer", "Let me explain", "In short", "Dear reader"]
_ENDS = ["Is there anything else I can help with?", "Hope this helps.", "That is all.", "thank you for reading"]


def _bound(rng: random.Random, at_most: tuple[int, ...], at_least: tuple[int, ...]) -> dict:
    relation = rng.choice(RELATIONS)
    return {"relation": relation, "n": rng.choice(at_most if relation == "at most" else at_least)}


_PARAMS: dict[str, Callable[[random.Random], dict]] = {
    "words": lambda r: _bound(r, (30, 50, 80, 120), (20, 40, 60, 100)),
    "sentences": lambda r: _bound(r, (2, 3, 5), (3, 4, 6)),
    "paragraphs": lambda r: {"n": r.choice((2, 3, 4))},
    "bullets": lambda r: {"n": r.choice((2, 3, 4, 5))},
    "numbered": lambda r: {"n": r.choice((3, 4, 5))},
    "include_keywords": lambda r: {"keywords": tuple(r.sample(_KEYWORDS, 2))},
    "exclude_keywords": lambda r: {"keywords": tuple(r.sample(_BANNED, r.choice((1, 2))))},
    "keyword_frequency": lambda r: {"keyword": r.choice(_KEYWORDS), "n": r.choice((2, 3))},
    "starts_with": lambda r: {"phrase": r.choice(_STARTS)},
    "ends_with": lambda r: {"phrase": r.choice(_ENDS)},
    "placeholders": lambda r: {"n": r.choice((1, 2, 3))},
    "sections": lambda r: {"n": r.choice((2, 3, 4))},
}


def _draw_constraints(rng: random.Random, k: int) -> tuple[Constraint, ...]:
    chosen: list[Constraint] = []
    for _ in range(20 * k):  # a draw that clashes is redrawn; a crowded item may end with fewer than k
        if len(chosen) == k:
            break
        kind = rng.choice(list(KINDS))
        c = make_constraint(kind, **(_PARAMS[kind](rng) if kind in _PARAMS else {}))
        if all(compatible(c, other) for other in chosen):
            chosen.append(c)
    return tuple(chosen)


def make_if_items(n: int, seed: int, max_constraints: int = 2) -> list[IFItem]:
    """``n`` distinct generated items, each with 1..``max_constraints`` compatible constraints.

    Deterministic for (n, seed) (``random.Random(f"ifeval:{seed}")``); a smaller n gives a prefix.
    """
    if n < 0:
        raise ValueError(f"make_if_items: n must be >= 0, got {n}")
    if not 1 <= max_constraints <= len(KINDS):
        raise ValueError(f"make_if_items: max_constraints must be in [1, {len(KINDS)}], got {max_constraints}")
    rng = random.Random(f"ifeval:{seed}")
    items: list[IFItem] = []
    seen: set[str] = set()
    for _ in range(50 * n + 100):  # duplicates are redrawn; bounded so an impossible n fails instead of hanging
        if len(items) == n:
            return items
        template = rng.choice(_TASKS)
        base = template.format(**{slot: rng.choice(words) for slot, words in _FILL.items()})
        constraints = _draw_constraints(rng, rng.randint(1, max_constraints))
        prompt = build_prompt(base, constraints)
        if prompt not in seen:
            seen.add(prompt)
            items.append(IFItem(f"ifeval-{seed}-{len(items):04d}", prompt, base, constraints))
    if len(items) < n:
        raise ValueError(f"make_if_items: only {len(items)} distinct prompts after {50 * n + 100} draws; "
                         f"ask for fewer than {n}")
    return items


def load_if_items(path: str | Path) -> list[IFItem]:
    """User-written items from JSONL rows ``{"id", "base" (or "instruction"), "constraints": [{"kind", ...kwargs}]}``.

    The prompt is built as for generated items. Problems raise ``ValueError("file:line: ...")``.
    """
    items: list[IFItem] = []
    ids: set[str] = set()
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(_parse_row(line, ids))
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
    return items


def _parse_row(line: str, ids: set[str]) -> IFItem:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - {"id", "base", "instruction", "constraints"})
    if unknown:
        raise ValueError(f"unknown keys {unknown}; a row has id, base (or instruction), constraints — the prompt "
                         "is built from base + the constraint texts")
    item_id, base = row.get("id"), row.get("base", row.get("instruction"))
    if not isinstance(item_id, str) or not item_id or item_id in ids:
        raise ValueError(f"id must be a unique non-empty string, got {item_id!r}")
    if ("base" in row) == ("instruction" in row) or not isinstance(base, str) or not base.strip():
        raise ValueError("give the task as one non-empty string under 'base' (or 'instruction'), not both")
    specs = row.get("constraints")
    if not isinstance(specs, list) or not specs or not all(isinstance(s, dict) for s in specs):
        raise ValueError("constraints must be a non-empty list of objects {\"kind\": ..., **kwargs}")
    if any("kind" not in s for s in specs):
        raise ValueError(f"every constraint needs a \"kind\"; allowed kinds: {', '.join(KINDS)}")
    constraints = tuple(make_constraint(**s) for s in specs)
    for i, a in enumerate(constraints):
        for b in constraints[i + 1:]:
            if not compatible(a, b):
                raise ValueError(f"constraints {a.kind!r} and {b.kind!r} cannot both be followed (see compatible())")
    ids.add(item_id)
    return IFItem(item_id, build_prompt(base, constraints), base.strip(), constraints)

