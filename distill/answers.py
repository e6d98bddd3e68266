"""Answer extraction and normalisation for teacher outputs.

Chain-of-thought outputs are split into a rationale and a final answer. An :class:`ExtractionConfig`
names the patterns to try, in order; the first pattern that matches anywhere wins, and within it the
*last* match (a model that corrects itself states the final answer last). Patterns:

- ``gsm8k``         ``#### 42`` (the GSM8K reference format, Cobbe et al. 2021)
- ``boxed``         ``\\boxed{...}`` with nested braces (``\\boxed{\\frac{1}{2}}``; MATH, Hendrycks et al. 2021)
- ``the_answer_is`` ``The (final) answer is 42`` (the CoT exemplar format, Wei et al. 2022)
- ``answer_colon``  a line ``Answer: 42`` / ``**Final answer:** 42``
- ``json``          a JSON object holding ``json_key`` (dotted path allowed), bare or in a ```json fence
- ``regex``         a user regex whose one capturing group is the answer
- ``last_number``   the last number in the text (the rationale is the whole text)
- ``last_line``     the last non-empty line

``extract_answer(text)`` with no config keeps the historical order (gsm8k, boxed, the_answer_is,
answer_colon, last_number, last_line).

Numbers are normalised so that equal quantities compare equal (:func:`normalize_number`):
thousands commas, ``$``, ``%``, unit words after the number ("42 apples"), the Unicode minus
``−5``, scientific ``1e3``, fractions ``3/4`` / ``1 1/2`` / ``\\frac{3}{4}`` (as decimals), leading-dot
decimals ``.5`` and trailing zeros. Deliberately *not* handled (ambiguous): number words ("twelve"),
space-grouped thousands ("1 000"), European decimal commas ("1,5" reads as 15), and ``42%`` vs ``0.42``
(a percent sign is dropped, as GSM8K golds are bare numbers).

Run: ``python -c "from distill.answers import extract_answer; print(extract_answer('#### 42'))"``
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from distill.config import StageConfig

NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?"  # what `last_number` picks out of free text
_REGEX_PATTERNS = {
    "gsm8k": re.compile(r"####\s*(.+?)\s*$", re.MULTILINE),
    "the_answer_is": re.compile(r"[Tt]he (?:final )?answer is[:\s]*\**\s*(.+?)\**\s*(?:\.\s*)?$", re.MULTILINE),
    "answer_colon": re.compile(r"^\s*\**(?:Final )?[Aa]nswer\**\s*:\s*\**(.+?)\**\s*$", re.MULTILINE),
}

PatternName = Literal["gsm8k", "boxed", "the_answer_is", "answer_colon", "json", "regex", "last_number", "last_line"]
DEFAULT_PATTERNS: tuple[PatternName, ...] = ("gsm8k", "boxed", "the_answer_is", "answer_colon", "last_number", "last_line")


class ExtractionConfig(StageConfig):
    """Which answer formats to look for, in order of trust."""

    patterns: list[PatternName] = Field(default_factory=lambda: list(DEFAULT_PATTERNS), min_length=1,
                                        description="formats tried in order; the first that matches wins")
    json_key: str = Field("answer", min_length=1, description="key (dotted path for nesting) read by the `json` pattern")
    regex: str | None = Field(None, description="user regex with exactly one capturing group (the answer); for `regex`")

    @field_validator("patterns")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dupes = sorted({p for p in v if v.count(p) > 1})
        if dupes:
            raise ValueError(f"extraction.patterns lists {dupes} more than once")
        return v

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            pat = re.compile(v, re.MULTILINE)
        except re.error as exc:
            raise ValueError(f"extraction.regex {v!r} is not a valid regular expression: {exc}") from None
        if pat.groups != 1:
            raise ValueError(f"extraction.regex {v!r} must have exactly one capturing group (the answer), "
                             f"it has {pat.groups}; use (?:...) for the others")
        return v

    @model_validator(mode="after")
    def _regex_given(self) -> ExtractionConfig:
        if "regex" in self.patterns and self.regex is None:
            raise ValueError("extraction.patterns includes 'regex' but extraction.regex is not set")
        return self


@dataclass(frozen=True)
class Extracted:
    rationale: str
    answer: str | None
    method: str  # which pattern matched, or "none"


_DEFAULT_CFG = ExtractionConfig()


def _balanced(text: str, open_at: int) -> int | None:
    """Index just past the brace matching ``text[open_at] == "{"``; None when unbalanced (``\\{`` is content)."""
    depth, i = 0, open_at
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2  # an escaped char (\{, \}) never opens or closes
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _boxed_spans(text: str) -> list[tuple[int, int, str]]:
    spans = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        end = _balanced(text, m.end() - 1)
        if end is not None:
            spans.append((m.start(), end, text[m.end(): end - 1]))
    return spans


def _json_value(obj: object, key: str) -> object:
    for part in key.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _json_spans(text: str, key: str) -> list[tuple[int, int, str]]:
    """Every JSON object (fenced or bare, outermost only) that holds ``key``, as (start, end, answer)."""
    spans = []
    decoder = json.JSONDecoder()
    i = 0
    while (i := text.find("{", i)) != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i += 1
            continue
        value = _json_value(obj, key)
        if value is not None:
            answer = value if isinstance(value, str) else json.dumps(value)
            start, stop = i, end
            fence = re.search(r"```(?:json)?\s*$", text[:i])  # swallow a surrounding ```json fence
            close = re.match(r"\s*```", text[end:])
            if fence and close:
                start, stop = fence.start(), end + close.end()
            spans.append((start, stop, answer))
        i = end
    return spans


def _match_spans(name: str, text: str, cfg: ExtractionConfig) -> list[tuple[int, int, str]]:
    if name == "boxed":
        return _boxed_spans(text)
    if name == "json":
        return _json_spans(text, cfg.json_key)
    pat = re.compile(cfg.regex, re.MULTILINE) if name == "regex" else _REGEX_PATTERNS[name]  # type: ignore[arg-type]
    return [(m.start(), m.end(), m.group(1) or "") for m in pat.finditer(text)]


_QUOTES = "\"'`“”‘’"


def _trim(raw: str) -> str:
    """Drop what wraps a captured answer: spaces, quotes and a sentence's final period (``3."`` -> ``3``)."""
    prev = None
    while raw != prev:
        prev, raw = raw, raw.strip().strip(_QUOTES).rstrip(".")
    return raw


def extract_answer(text: str, cfg: ExtractionConfig | None = None) -> Extracted:
    """Split a CoT completion into (rationale, answer); the last match of the first matching pattern wins."""
    cfg = cfg or _DEFAULT_CFG
    for name in cfg.patterns:
        if name == "last_number":
            numbers = re.findall(NUMBER, text)
            if numbers:
                return Extracted(rationale=text.strip(), answer=numbers[-1].strip(), method="last_number")
            continue
        if name == "last_line":
            lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
            if lines:
                return Extracted(rationale=text.strip(), answer=lines[-1], method="last_line")
            continue
        spans = _match_spans(name, text, cfg)
        if spans:
            start, end, raw = spans[-1]
            answer = _trim(raw)
            rationale = (text[:start] + text[end:]).strip()
            return Extracted(rationale=rationale, answer=answer or None, method=name)
    return Extracted(rationale=text.strip(), answer=None, method="none")


# A number as written in an answer: sign (ASCII or Unicode minus), optional $, digits with thousands
# commas or a leading-dot decimal, optional exponent; not glued to a preceding letter/digit/dot.
_NUM = r"[-−]?\s?\$?\s?[-−]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUM_RE = re.compile(rf"(?<![A-Za-z0-9_.]){_NUM}")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(-?\d+)\s*\}")
_SLASH_RE = re.compile(r"(?<![\w./])([-−]?)(?:(\d+)\s+)?(\d+)\s*/\s*(\d+)(?![\w./])")


def _to_float(raw: str) -> float | None:
    raw = raw.replace("−", "-").replace("$", "").replace(",", "").replace(" ", "")
    if raw.count("-") > 1:
        return None
    raw = raw if not raw.startswith("-") else "-" + raw[1:].lstrip("-")
    try:
        return float(raw)
    except ValueError:
        return None


def _format(value: float) -> str | None:
    if not math.isfinite(value):
        return None
    if value == int(value):
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def normalize_number(s: str) -> str | None:
    """``"$1,200.50"`` -> ``"1200.5"``, ``"3/4"`` -> ``"0.75"``; None when ``s`` holds no single number."""
    s = s.replace("−", "-")
    fracs = list(_FRAC_RE.finditer(s)) or [m for m in _SLASH_RE.finditer(s)]
    if len(fracs) == 1:
        m = fracs[0]
        rest = s[: m.start()] + " " + s[m.end():]
        if _NUM_RE.search(rest):
            return None  # "3/4 of 12" is not a single number
        if m.re is _FRAC_RE:
            num, den, whole, sign = float(m.group(1)), float(m.group(2)), 0.0, 1.0
        else:
            sign = -1.0 if m.group(1) else 1.0
            whole, num, den = float(m.group(2) or 0), float(m.group(3)), float(m.group(4))
        if den == 0:
            return None
        return _format(sign * (whole + num / den))
    if len(fracs) > 1:
        return None
    found = _NUM_RE.findall(s)
    if len(found) != 1:
        return None
    value = _to_float(found[0])
    return None if value is None else _format(value)


def normalize_text(s: str) -> str:
    s = s.strip().lower()
    s = re.sub(r"^[\"'*\s]+|[\"'*.!?\s]+$", "", s)
    return re.sub(r"\s+", " ", s)


def answers_match(predicted: str | None, gold: str | None) -> bool | None:
    """True/False when gold exists; None when there is no gold to check against."""
    if gold is None or gold == "":
        return None
    if predicted is None:
        return False
    gn = normalize_number(gold)
    if gn is not None:
        return normalize_number(predicted) == gn
    p, g = normalize_text(predicted), normalize_text(gold)
    # short gold labels ("positive", "Paris") count when the answer states them as a whole word
    return p == g or re.search(rf"\b{re.escape(g)}\b", p) is not None


def answers_match_strict(predicted: str | None, gold: str | None) -> bool | None:
    """The strict rule: ``answer_key(predicted) == answer_key(gold)`` (numbers normalised, text lower-cased and
    stripped of surrounding quotes/punctuation), so "The capital is Paris." does not match "Paris" here while
    :func:`answers_match` accepts it. True/False when gold exists; None when there is no gold to check against."""
    if gold is None or gold == "":
        return None
    key = answer_key(predicted)
    return key is not None and key == answer_key(gold)


def answer_key(answer: str | None) -> str | None:
    """The form answers are compared in for voting: the normalised number, else the normalised text."""
    if answer is None or not answer.strip():
        return None
    return normalize_number(answer) or normalize_text(answer) or None


@dataclass(frozen=True)
class Vote:
    """Self-consistency over one question's samples (Wang et al. 2023, "Self-Consistency Improves
    Chain of Thought Reasoning in Language Models"): the most frequent normalised answer."""

    answer: str | None   # the winning answer as first written by a sample (None: no sample had one)
    key: str | None      # its normalised form
    share: float         # winning votes / all samples (samples without an answer count against it)
    votes: int
    samples: int
    agrees: list[bool]   # per sample: does it reach the winning answer


def majority_vote(answers: list[str | None]) -> Vote:
    """Majority vote over ``answers`` (one per sample). Ties go to the answer seen first, so the
    result depends only on the samples' order, which is fixed by their index."""
    keys = [answer_key(a) for a in answers]
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k is not None:
            counts[k] = counts.get(k, 0) + 1
            first.setdefault(k, i)
    if not counts:
        return Vote(None, None, 0.0, 0, len(answers), [False] * len(answers))
    win = max(counts, key=lambda k: (counts[k], -first[k]))
    return Vote(answers[first[win]], win, counts[win] / len(answers), counts[win], len(answers),
                [k == win for k in keys])
