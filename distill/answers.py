"""Answer extraction and normalisation for teacher outputs.

Chain-of-thought outputs are split into a rationale and a final answer. Patterns are tried in
order: ``#### 42`` (GSM8K), ``\\boxed{42}``, ``The answer is 42``, ``Answer: 42``; if none matches,
the last number in the text (for numeric gold) or the last non-empty line. Numbers are normalised
(commas, currency and unit words, trailing zeros) so ``$1,200.50`` and ``1200.5`` compare equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?"
PATTERNS = [
    ("gsm8k", re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)),
    ("boxed", re.compile(r"\\boxed\{([^{}]*)\}")),
    ("the_answer_is", re.compile(r"[Tt]he (?:final )?answer is[:\s]*\**\s*(.+?)\**\s*(?:\.\s*)?$", re.MULTILINE)),
    ("answer_colon", re.compile(r"^\s*\**(?:Final )?[Aa]nswer\**\s*:\s*\**(.+?)\**\s*$", re.MULTILINE)),
]


@dataclass(frozen=True)
class Extracted:
    rationale: str
    answer: str | None
    method: str  # which pattern matched, or "none"


def extract_answer(text: str) -> Extracted:
    """Split a CoT completion into (rationale, answer); the last match of the first pattern wins."""
    for name, pat in PATTERNS:
        matches = list(pat.finditer(text))
        if matches:
            m = matches[-1]
            answer = m.group(1).strip().rstrip(".").strip()
            rationale = (text[: m.start()] + text[m.end():]).strip()
            return Extracted(rationale=rationale, answer=answer or None, method=name)
    numbers = re.findall(NUMBER, text)
    if numbers:
        return Extracted(rationale=text.strip(), answer=numbers[-1].strip(), method="last_number")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return Extracted(rationale=text.strip(), answer=lines[-1] if lines else None, method="last_line" if lines else "none")


def normalize_number(s: str) -> str | None:
    """``"$1,200.50"`` -> ``"1200.5"``; None when ``s`` holds no single number."""
    found = re.findall(NUMBER, s)
    if len(found) != 1:
        return None
    raw = found[0].replace("$", "").replace(",", "").replace(" ", "")
    try:
        value = float(raw)
    except ValueError:
        return None
    if value == int(value):
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


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
