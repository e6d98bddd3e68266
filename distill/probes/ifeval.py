"""IFEval-style verifiable instructions: constraints a program can check, a generated suite, strict/loose scores.

After Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models" (IFEval,
arXiv 2311.07911): a writing task gets one or more instructions whose following can be verified by a
program ("answer in at most 50 words", "no commas"), so instruction following is measured without a judge.
Each check here is a small pure function ``check_<kind>(response, **kwargs) -> bool``; :data:`KINDS`
maps the kind to its check and kwarg names, :func:`describe` writes the sentence appended to the prompt.

Kinds, with IFEval's id where one exists: ``words``/``sentences`` at least or at most n (number_words,
number_sentences; words are ``\\w+`` runs as IFEval's tokenizer, sentences split after ``.!?`` and at blank
lines), exactly n ``paragraphs`` split at blank lines or ``***`` (number_paragraphs), ``bullets`` ``* ``/``- ``
(number_bullet_lists), ``numbered`` ``1.``/``2)`` and ``sections`` "SECTION X" (multiple_sections, there at
least n); ``lowercase``/``uppercase`` (change_case, cased letters only); ``include_keywords``,
``exclude_keywords`` (existence, forbidden_words; whole word, case-insensitive), ``keyword_frequency`` at
least n (frequency); ``json`` (json_format, one ```json fence allowed); ``starts_with``/``ends_with`` an exact
phrase (end_checker, there case-insensitive); ``no_commas``; ``quotes`` (quotation); ``title`` <<in brackets>>;
``placeholders`` [like_this] at least n; ``postscript`` "P.S.". Left out: response language (needs a
language-identification model), letter and capital-word frequency, repeating the request, two responses
split by ``******``, fixed answer options, highlighted ``*sections*``, the first word of the nth paragraph, and
checks that need the base task's content.

Scoring exactly as IFEval: an empty (whitespace-only) response fails everything; **strict** = the check
on the response; **loose** = the check passes on any of 8 variants (as is, first line removed, last line
removed, both, and each of those with every ``*`` removed). Prompt-level accuracy: all constraints of a
prompt pass; instruction-level: share of all constraints that pass.

Run: ``python -c "from distill.probes.ifeval import score_if"`` (the items: :mod:`distill.probes.ifsuite`)
and ``score_if(items, responses)``; user items via :func:`distill.probes.ifsuite.load_if_items` (JSONL ``{id, base, constraints}``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

RELATIONS = ("at least", "at most")


def _count_ok(count: int, relation: str, n: int) -> bool:
    return count >= n if relation == "at least" else count <= n


def _phrase_re(word: str) -> re.Pattern[str]:
    return re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)


def check_words(response: str, relation: str, n: int) -> bool:
    """``relation`` ("at least"/"at most") ``n`` words, a word being a ``\\w+`` run."""
    return _count_ok(len(re.findall(r"\w+", response)), relation, n)


def check_sentences(response: str, relation: str, n: int) -> bool:
    """``relation`` ``n`` sentences: text split after ``.!?`` + space and at blank lines, pieces with a word."""
    pieces = re.split(r"(?<=[.!?])\s+|\n\s*\n", response.strip())
    return _count_ok(sum(1 for p in pieces if re.search(r"\w", p)), relation, n)


def check_paragraphs(response: str, n: int) -> bool:
    """Exactly ``n`` non-blank paragraphs separated by blank lines or the ``***`` divider."""
    return sum(1 for p in re.split(r"\n\s*\n|\*\*\*", response) if p.strip()) == n


def check_lowercase(response: str) -> bool:
    """Every cased letter lowercase (and at least one letter)."""
    return response.islower()


def check_uppercase(response: str) -> bool:
    """Every cased letter uppercase (and at least one letter)."""
    return response.isupper()


def check_bullets(response: str, n: int) -> bool:
    """Exactly ``n`` lines starting (after indentation) with ``* `` or ``- `` and some text."""
    return len(re.findall(r"^[ \t]*[*-][ \t]+\S", response, re.MULTILINE)) == n


def check_numbered(response: str, n: int) -> bool:
    """Exactly ``n`` lines starting with a number and ``.`` or ``)`` (``1.``, ``2)``) and some text."""
    return len(re.findall(r"^[ \t]*\d+[.)][ \t]+\S", response, re.MULTILINE)) == n


def check_include_keywords(response: str, keywords: tuple[str, ...]) -> bool:
    """Every keyword present as a whole word, case-insensitive."""
    return all(_phrase_re(k).search(response) for k in keywords)


def check_exclude_keywords(response: str, keywords: tuple[str, ...]) -> bool:
    """No keyword present as a whole word, case-insensitive."""
    return not any(_phrase_re(k).search(response) for k in keywords)


def check_keyword_frequency(response: str, keyword: str, n: int) -> bool:
    """``keyword`` appears at least ``n`` times as a whole word, case-insensitive."""
    return len(_phrase_re(keyword).findall(response)) >= n


def check_json(response: str) -> bool:
    """The whole response (inside at most one ```json / ``` fence) parses as JSON."""
    text = response.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL | re.IGNORECASE)
    try:
        json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return False
    return True


def check_starts_with(response: str, phrase: str) -> bool:
    """The response, leading whitespace stripped, starts with exactly ``phrase``."""
    return response.lstrip().startswith(phrase)


def check_ends_with(response: str, phrase: str) -> bool:
    """The response, trailing whitespace stripped, ends with exactly ``phrase``."""
    return response.rstrip().endswith(phrase)


def check_no_commas(response: str) -> bool:
    """No ASCII comma anywhere."""
    return "," not in response


def check_quotes(response: str) -> bool:
    """The stripped response starts and ends with a double quote."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


def check_title(response: str) -> bool:
    """A non-empty title on one line in double angular brackets: ``<<title>>``."""
    return any(t.strip() for t in re.findall(r"<<([^\n<>]+)>>", response))


def check_placeholders(response: str, n: int) -> bool:
    """At least ``n`` placeholders in square brackets on one line: ``[address]``."""
    return len(re.findall(r"\[[^\[\]\n]+\]", response)) >= n


def check_postscript(response: str) -> bool:
    """A line starting with "P.S." (case-insensitive, "P. S." too) followed by some text."""
    return re.search(r"^[ \t]*P\.[ \t]?S\.\s*\S", response, re.MULTILINE | re.IGNORECASE) is not None


def check_sections(response: str, n: int) -> bool:
    """Exactly ``n`` section markers "SECTION <number>" (upper case, as asked)."""
    return len(re.findall(r"\bSECTION\s+\d+", response)) == n


class KindSpec(NamedTuple):
    check: Callable[..., bool]  # check(response, **kwargs) -> bool
    kwargs: tuple[str, ...]     # the check's kwarg names, all required
    text: str                   # what the prompt says, formatted by describe()


KINDS: dict[str, KindSpec] = {
    "words": KindSpec(check_words, ("relation", "n"), "Answer in {relation} {n} word{s}."),
    "sentences": KindSpec(check_sentences, ("relation", "n"), "Answer in {relation} {n} sentence{s}."),
    "paragraphs": KindSpec(check_paragraphs, ("n",), "Write exactly {n} paragraph{s}, separated by blank "
                                                     "lines or the markdown divider ***."),
    "lowercase": KindSpec(check_lowercase, (), "Your entire response must be in lowercase letters. "
                                               "No capital letters are allowed."),
    "uppercase": KindSpec(check_uppercase, (), "Your entire response must be in capital letters. "
                                               "No lowercase letters are allowed."),
    "bullets": KindSpec(check_bullets, ("n",), "Your answer must contain exactly {n} bullet point{s}, each "
                                               "on its own line starting with \"* \"."),
    "numbered": KindSpec(check_numbered, ("n",), "Your answer must contain exactly {n} numbered item{s}, "
                                                 "each on its own line starting with its number, such as \"1.\"."),
    "include_keywords": KindSpec(check_include_keywords, ("keywords",), "Include the keywords {keywords} "
                                                                        "in the response."),
    "exclude_keywords": KindSpec(check_exclude_keywords, ("keywords",), "Do not include the keywords "
                                                                        "{keywords} in the response."),
    "keyword_frequency": KindSpec(check_keyword_frequency, ("keyword", "n"), "In your response, the word "
                                                                             "\"{keyword}\" should appear "
                                                                             "at least {n} time{s}."),
    "json": KindSpec(check_json, (), "Your entire output should be wrapped in JSON format. You can use "
                                     "markdown ticks such as ```."),
    "starts_with": KindSpec(check_starts_with, ("phrase",), "Start your response with the exact phrase "
                                                            "\"{phrase}\"."),
    "ends_with": KindSpec(check_ends_with, ("phrase",), "Finish your response with this exact phrase, with "
                                                        "no other words after it: \"{phrase}\""),
    "no_commas": KindSpec(check_no_commas, (), "In your entire response, refrain from the use of any commas."),
    "quotes": KindSpec(check_quotes, (), "Wrap your entire response with double quotation marks."),
    "title": KindSpec(check_title, (), "Your answer must contain a title, wrapped in double angular "
                                       "brackets, such as <<poem of joy>>."),
    "placeholders": KindSpec(check_placeholders, ("n",), "The response must contain at least {n} "
                                                         "placeholder{s} in square brackets, such as [address]."),
    "postscript": KindSpec(check_postscript, (), "At the end of your response, please explicitly add a "
                                                 "postscript starting with P.S."),
    "sections": KindSpec(check_sections, ("n",), "Your response must have exactly {n} section{s}. Mark the "
                                                 "beginning of each section with SECTION X, such as: SECTION 1."),
}


@dataclass(frozen=True)
class Constraint:
    """One verifiable instruction: its kind, the check's kwargs, and the sentence the model reads."""

    kind: str
    kwargs: dict = field(hash=False)
    text: str


@dataclass(frozen=True)
class IFItem:
    """A prompt = ``base`` task + the constraints' texts; graded by the constraints only."""

    id: str
    prompt: str
    base: str
    constraints: tuple[Constraint, ...]


def describe(kind: str, kwargs: dict) -> str:
    """The sentence appended to the prompt for ``kind`` with ``kwargs`` ("Answer in at most 40 words.")."""
    fields = dict(kwargs, s="" if kwargs.get("n") == 1 else "s")
    if "keywords" in fields:
        fields["keywords"] = ", ".join(f'"{k}"' for k in kwargs["keywords"])
    return KINDS[kind].text.format(**fields)


def _valid_kwarg(kind: str, name: str, value: object) -> object:
    where = f"{kind}.{name}"
    if name == "n":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where} must be a positive integer, got {value!r}")
    elif name == "relation":
        if value not in RELATIONS:
            raise ValueError(f"{where} must be one of {list(RELATIONS)}, got {value!r}")
    elif name == "keywords":
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"{where} must be a non-empty list of words, got {value!r}")
        return tuple(_valid_kwarg(kind, "keyword", v) for v in value)
    elif not isinstance(value, str) or not value.strip():  # keyword, phrase
        raise ValueError(f"{where} must be a non-empty string, got {value!r}")
    elif name == "keyword" and not re.fullmatch(r"\w(?:[\w' -]*\w)?", value.strip()):
        raise ValueError(f"{where} must start and end with a letter or digit, got {value!r}")  # for \b matching
    return value.strip() if isinstance(value, str) else value


def make_constraint(kind: str, **kwargs: object) -> Constraint:
    """A validated constraint with its text; ``ValueError`` names the bad kind or kwarg and what is allowed."""
    if kind not in KINDS:
        raise ValueError(f"unknown constraint kind {kind!r}; allowed kinds: {', '.join(KINDS)}")
    expected = KINDS[kind].kwargs
    if set(kwargs) != set(expected):
        raise ValueError(f"constraint {kind!r} takes kwargs {list(expected)}, got {sorted(kwargs)}")
    clean = {name: _valid_kwarg(kind, name, kwargs[name]) for name in expected}
    return Constraint(kind, clean, describe(kind, clean))


# Pairs of kinds that cannot share a response: case clashes, and JSON (the whole response must parse) or
# quotes (the whole response is one quoted string) against layouts and fixed openings/endings.
_CONFLICTS = {frozenset(pair) for pair in [
    ("lowercase", "uppercase"), ("lowercase", "sections"),
    *(("json", k) for k in ("paragraphs", "bullets", "numbered", "sections", "postscript", "title", "quotes",
                            "starts_with", "ends_with", "no_commas")),
    *(("quotes", k) for k in ("starts_with", "ends_with", "bullets", "numbered")),
]}


def _required_text(c: Constraint) -> str:
    return " ".join([*c.kwargs.get("keywords", ()), c.kwargs.get("keyword", ""), c.kwargs.get("phrase", "")])


def _leaves_room(a: Constraint, b: Constraint) -> bool:
    """Whether ``b`` can still hold once ``a`` does (one direction of :func:`compatible`)."""
    if a.kind in ("lowercase", "uppercase", "no_commas") and "phrase" in b.kwargs:
        return KINDS[a.kind].check(b.kwargs["phrase"])  # the required phrase must itself obey a
    if a.kind == "exclude_keywords":
        return check_exclude_keywords(_required_text(b), a.kwargs["keywords"])
    if a.kind == "sentences" and a.kwargs["relation"] == "at most" and b.kind == "paragraphs":
        return b.kwargs["n"] <= a.kwargs["n"]  # every paragraph holds at least one sentence
    return True


def compatible(a: Constraint, b: Constraint) -> bool:
    """The one rule for which constraints may share a prompt (applied to every pair).

    A kind appears once, except ``words``/``sentences`` as an at-least and an at-most bound with room between
    them; no pair from ``_CONFLICTS``; a required phrase must obey case/comma constraints; excluded keywords
    must not be required elsewhere; at most N sentences leaves room for the asked paragraphs. Pairwise and
    sound for the generated parameters; user items with extreme numbers (at most 2 words and 4 bullets) can
    still ask for the impossible.
    """
    if a.kind == b.kind:
        if a.kind not in ("words", "sentences") or a.kwargs["relation"] == b.kwargs["relation"]:
            return False
        low, high = sorted((a, b), key=lambda c: c.kwargs["relation"])  # "at least" < "at most"
        return low.kwargs["n"] <= high.kwargs["n"]
    return frozenset((a.kind, b.kind)) not in _CONFLICTS and _leaves_room(a, b) and _leaves_room(b, a)


def build_prompt(base: str, constraints: tuple[Constraint, ...]) -> str:
    """The text the model sees: the base task, then each constraint's sentence."""
    return " ".join([base.strip(), *(c.text for c in constraints)])


def loose_variants(response: str) -> list[str]:
    """IFEval's 8 loose variants: as is / without first / last / both lines, each also without ``*``."""
    lines = response.split("\n")
    cuts = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return cuts + [c.replace("*", "") for c in cuts]


def follows(constraint: Constraint, response: str) -> tuple[bool, bool]:
    """(strict, loose) for one constraint; a whitespace-only text never follows anything."""
    check = KINDS[constraint.kind].check
    strict = bool(response.strip()) and check(response, **constraint.kwargs)
    loose = strict or any(v.strip() and check(v, **constraint.kwargs) for v in loose_variants(response))
    return strict, loose


def _share(num: int, den: int) -> float:
    return round(num / den, 4) if den else 0.0


def score_if(items: list[IFItem], responses: list[str]) -> dict:
    """Prompt- and instruction-level accuracy, strict and loose, per kind and per item (shares to 4 digits)."""
    if len(items) != len(responses):
        raise ValueError(f"score_if: {len(items)} items but {len(responses)} responses")
    if not items:
        raise ValueError("score_if: no items to score")
    per_item, kinds = [], {}
    for item, response in zip(items, responses):
        results = [follows(c, response) for c in item.constraints]
        per_item.append({"id": item.id, "kinds": [c.kind for c in item.constraints],
                         "strict": [s for s, _ in results], "loose": [lo for _, lo in results],
                         "prompt_strict": all(s for s, _ in results), "prompt_loose": all(lo for _, lo in results)})
        for c, (s, lo) in zip(item.constraints, results):
            k = kinds.setdefault(c.kind, [0, 0, 0])
            k[0], k[1], k[2] = k[0] + s, k[1] + lo, k[2] + 1
    n_instr = sum(len(r["strict"]) for r in per_item)
    return {
        "prompt_strict": _share(sum(r["prompt_strict"] for r in per_item), len(items)),
        "prompt_loose": _share(sum(r["prompt_loose"] for r in per_item), len(items)),
        "instruction_strict": _share(sum(sum(r["strict"]) for r in per_item), n_instr),
        "instruction_loose": _share(sum(sum(r["loose"]) for r in per_item), n_instr),
        "items": len(items),
        "per_kind": {k: {"strict": _share(s, n), "loose": _share(lo, n), "n": n}
                     for k, (s, lo, n) in sorted(kinds.items())},
        "per_item": per_item,
    }
