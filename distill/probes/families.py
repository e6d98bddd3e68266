"""Procedural task families for the EA probes: unlimited fresh items with exact gold answers.

Each :class:`Family` draws ``(input, gold, rationale)`` from a seeded RNG (or from a hand list without
replacement), so a probe can always take held-out items that no training row or demonstration used
(:func:`make_items` skips any input in ``exclude``). The instruction never names the label space: for the
ICL families only the demonstrations show it, which is what makes them in-context-learning probes — a model
that answers them zero-shot has either been taught the task or already knew it.

Two kinds:

- ``icl`` families: a short answer on the first line (a label, a number, a word). Measured by the bundled
  135M teacher (``bench/ea_transfer.py --measure``): the ones whose few-shot accuracy clearly beats their
  zero-shot accuracy are the ICL probes; those it already answers zero-shot (``continent``, ``plural``,
  ``capital``) are negative controls — a student trained on other tasks should keep them.
- ``cot`` families: a few steps of arithmetic or counting in words, where writing the steps helps; each item
  carries its worked steps (``rationale``; a demo shows them, then "The answer is N.":
  :func:`distill.data.dataset.cot_demo_turn`).

Families are plain data plus a draw function; a user adds one by building a :class:`Family` (no registry
to patch): ``make_items(Family("mytask", "icl", "Do X.", my_draw), 20, seed=0)``.

Run: ``python -c "from distill.probes.families import FAMILIES, make_items; print(make_items(FAMILIES['larger'], 3, 0))"``
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from distill.probes import wordlists as W

Draw = Callable[[random.Random], tuple[str, str, str]]  # rng -> (input, gold answer, rationale or "")


@dataclass(frozen=True)
class Family:
    """A task family: its name, the ability it probes, the instruction shown, and how to draw an item."""

    name: str
    ability: Literal["icl", "cot"]
    instruction: str
    draw: Draw | None = None                       # a generator, or ...
    pairs: tuple[tuple[str, str], ...] = ()        # ... a hand list drawn without replacement
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # gold -> other accepted spellings


@dataclass(frozen=True)
class Item:
    """One probe question with its gold answer (``rationale``: a worked solution, CoT families only)."""

    id: str
    task: str
    instruction: str
    input: str
    answer: str
    rationale: str = ""
    aliases: tuple[str, ...] = ()

    def seed_row(self) -> dict:
        """As an eakd seed row (``distill.data.seeds``)."""
        row = {"id": self.id, "task": self.task, "instruction": self.instruction, "input": self.input,
               "answer": self.answer}
        return row | ({"rationale": self.rationale} if self.rationale else {})


# --- ICL draws --------------------------------------------------------------------------------------------

def _pick(rng: random.Random, a: list[str], b: list[str], labels: tuple[str, str]) -> tuple[str, str, str]:
    first = rng.random() < 0.5
    return rng.choice(a if first else b), labels[0] if first else labels[1], ""


def _review(rng: random.Random) -> tuple[str, str, str]:
    good = rng.random() < 0.5
    return f"{rng.choice(W.REVIEW_SUBJECTS)} {rng.choice(W.POSITIVE if good else W.NEGATIVE)}.", "good" if good else "bad", ""


def _larger(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.sample(range(10, 100), 2)
    return f"{a} and {b}", str(max(a, b)), ""


def _smaller(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.sample(range(10, 100), 2)
    return f"{a} and {b}", str(min(a, b)), ""


def _successor(rng: random.Random) -> tuple[str, str, str]:
    a = rng.randint(10, 98)
    return str(a), str(a + 1), ""


def _predecessor(rng: random.Random) -> tuple[str, str, str]:
    a = rng.randint(11, 99)
    return str(a), str(a - 1), ""


def _even_odd(rng: random.Random) -> tuple[str, str, str]:
    a = rng.randint(10, 99)
    return str(a), "odd" if a % 2 else "even", ""


def _first_letter(rng: random.Random) -> tuple[str, str, str]:
    word = rng.choice(W.FRUITS + W.VEHICLES + W.HOT_THINGS + W.COLD_THINGS)
    return word, word[0], ""


def _add(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(10, 89), rng.randint(10, 89)
    return f"{a} + {b}", str(a + b), ""


# --- CoT draws: a few steps of small-number arithmetic in words, with a worked rationale --------------------

def _gain_lose(rng: random.Random) -> tuple[str, str, str]:
    name, obj = rng.choice(W.NAMES), rng.choice(W.OBJECTS)
    a, b = rng.randint(3, 9), rng.randint(2, 9)
    c = rng.randint(1, a + b - 1)
    q = f"{name} has {a} {obj}. {name} gets {b} more {obj} and then gives away {c}. How many {obj} does {name} have now?"
    steps = f"{name} starts with {a} {obj}. After getting {b} more: {a} + {b} = {a + b}. After giving away {c}: " \
            f"{a + b} - {c} = {a + b - c}."
    return q, str(a + b - c), steps


def _groups(rng: random.Random) -> tuple[str, str, str]:
    obj = rng.choice(W.OBJECTS)
    g, n, extra = rng.randint(2, 5), rng.randint(2, 5), rng.randint(1, 9)
    q = f"There are {g} boxes with {n} {obj} in each box, and {extra} more {obj} on the table. How many {obj} are there in all?"
    steps = f"The boxes hold {g} x {n} = {g * n} {obj}. With the {extra} on the table: {g * n} + {extra} = {g * n + extra}."
    return q, str(g * n + extra), steps


def _days_ahead(rng: random.Random) -> tuple[str, str, str]:
    i, k = rng.randrange(7), rng.randint(2, 6)
    day = W.WEEKDAYS[(i + k) % 7]
    q = f"Today is {W.WEEKDAYS[i]}. What day of the week will it be in {k} days?"
    walk = ", ".join(W.WEEKDAYS[(i + j) % 7] for j in range(1, k + 1))
    return q, day, f"Counting {k} days forward from {W.WEEKDAYS[i]}: {walk}."


def _two_prices(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    na, nb = rng.randint(2, 4), rng.randint(1, 3)
    total = na * a + nb * b
    q = f"A pen costs {a} dollars and a notebook costs {b} dollars. How many dollars do {na} pens and {nb} notebooks cost?"
    steps = f"{na} pens cost {na} x {a} = {na * a}. {nb} notebooks cost {nb} x {b} = {nb * b}. Together: {na * a} + {nb * b} = {total}."
    return q, str(total), steps


def _letters_ahead(rng: random.Random) -> tuple[str, str, str]:
    abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    i, k = rng.randrange(20), rng.randint(2, 5)
    walk = ", ".join(abc[i + j] for j in range(1, k + 1))
    q = f"Which letter of the alphabet comes {k} letters after {abc[i]}?"
    return q, abc[i + k], f"Counting {k} letters forward from {abc[i]}: {walk}."


def _sum3(rng: random.Random) -> tuple[str, str, str]:
    a, b, c = (rng.randint(1, 9) for _ in range(3))
    q = f"What is {a} + {b} + {c}?"
    return q, str(a + b + c), f"{a} + {b} = {a + b}. Then {a + b} + {c} = {a + b + c}."


FAMILIES: dict[str, Family] = {f.name: f for f in [
    # ICL: the instruction never names the labels; the demonstrations show the label space and format
    Family("review_gb", "icl", "Rate the review.", _review),
    Family("animal_plant", "icl", "Classify the word.", lambda r: _pick(r, W.ANIMALS, W.PLANTS, ("animal", "plant"))),
    Family("big_small", "icl", "Classify the animal.", lambda r: _pick(r, W.BIG_ANIMALS, W.SMALL_ANIMALS, ("big", "small"))),
    Family("hot_cold", "icl", "Classify the word.", lambda r: _pick(r, W.HOT_THINGS, W.COLD_THINGS, ("hot", "cold"))),
    Family("fruit_vehicle", "icl", "Classify the word.", lambda r: _pick(r, W.FRUITS, W.VEHICLES, ("fruit", "vehicle"))),
    Family("even_odd", "icl", "Classify the number.", _even_odd),
    Family("larger", "icl", "Which number is larger?", _larger),
    Family("smaller", "icl", "Pick one of the two numbers.", _smaller),
    Family("successor", "icl", "What number comes next?", _successor),
    Family("predecessor", "icl", "Transform the number.", _predecessor),
    Family("first_letter", "icl", "Transform the word.", _first_letter),
    Family("continent", "icl", "Classify the country.", pairs=tuple(W.CONTINENTS)),
    Family("plural", "icl", "Give the plural of the noun.", pairs=tuple(W.PLURALS)),
    Family("capital", "icl", "What is the capital city of this country?", pairs=tuple(W.CAPITALS)),
    Family("add", "icl", "Add the two numbers.", _add),
    # CoT: a few steps each; the rationale is the worked solution
    Family("gain_lose", "cot", "Solve the problem.", _gain_lose),
    Family("groups", "cot", "Solve the problem.", _groups),
    Family("days_ahead", "cot", "Solve the problem.", _days_ahead),
    Family("two_prices", "cot", "Solve the problem.", _two_prices),
    Family("letters_ahead", "cot", "Solve the problem.", _letters_ahead),
    Family("sum3", "cot", "Solve the problem.", _sum3),
]}


def make_items(family: Family, n: int, seed: int, exclude: Iterable[str] = (), prefix: str = "") -> list[Item]:
    """``n`` distinct items of ``family`` whose inputs are not in ``exclude``; the same for the same arguments.

    Raises ValueError when the family has fewer than ``n`` distinct inputs left (a hand list is finite)."""
    rng = random.Random(f"{seed}:{family.name}")
    banned = {x.strip().lower() for x in exclude}
    found: dict[str, tuple[str, str]] = {}
    if family.draw is None:
        for q, a in rng.sample(family.pairs, len(family.pairs)):
            if q.lower() not in banned and len(found) < n:
                found[q] = (a, "")
    else:
        for _ in range(200 * n):
            q, a, why = family.draw(rng)
            if q.lower() not in banned:
                found.setdefault(q, (a, why))
            if len(found) == n:
                break
    if len(found) < n:
        raise ValueError(f"task family {family.name!r} has {len(found)} distinct items left after excluding "
                         f"{len(banned)} inputs, fewer than the {n} asked for; ask for fewer items")
    return [Item(id=f"{prefix}{family.name}-{i:03d}", task=family.name, instruction=family.instruction, input=q,
                 answer=a, rationale=why, aliases=family.aliases.get(a, ())) for i, (q, (a, why)) in enumerate(found.items())]


def split_items(family: Family, n_pool: int, n_held_out: int, seed: int) -> tuple[list[Item], list[Item]]:
    """Disjoint (pool, held-out) items: the pool for demonstrations and training inputs, the rest for probes."""
    items = make_items(family, n_pool + n_held_out, seed)
    return items[:n_pool], items[n_pool:]


def task_file_entries(names: list[str], n_examples: int, n_inputs: int, n_held_out: int, seed: int) -> list[dict]:
    """``generate.tasks`` entries (distill/data/tasks.py) for procedural families: per family ``n_examples`` labelled
    examples (the demo pool), ``n_inputs`` unlabelled inputs and ``n_held_out`` labelled held-out items, all
    distinct. ``bench/ea_transfer.py`` and the demo's task file are made with it."""
    out = []
    for name in names:
        fam = FAMILIES[name]
        items = make_items(fam, n_examples + n_inputs + n_held_out, seed)
        ex, inp, held = items[:n_examples], items[n_examples:n_examples + n_inputs], items[n_examples + n_inputs:]
        out.append({"name": name, "instruction": fam.instruction, **({"style": "cot"} if fam.ability == "cot" else {}),
                    "examples": [{"input": i.input, "output": i.answer} | ({"rationale": i.rationale} if i.rationale else {})
                                 for i in ex],
                    "inputs": [i.input for i in inp],
                    "held_out": [{"input": i.input, "output": i.answer} for i in held]})
    return out
