"""Configurable extraction and numeric normalisation, as tables of tricky cases."""

import pytest
from pydantic import ValidationError

from distill.answers import ExtractionConfig, answers_match, extract_answer, normalize_number

# (raw, normalised) — None means "not exactly one number" (ambiguous on purpose)
NUMBERS = [
    ("42", "42"),
    ("42 apples", "42"),
    ("42 dollars", "42"),
    ("$42", "42"),
    ("-$5.00", "-5"),
    ("$-5", "-5"),
    ("42%", "42"),              # a percent sign is dropped: GSM8K golds are bare numbers
    ("12.5%", "12.5"),
    ("1,000.00", "1000"),
    ("1,234,567", "1234567"),
    ("−5", "-5"),               # U+2212 minus sign
    ("− 5 degrees", "-5"),
    ("3/4", "0.75"),
    ("-3/4", "-0.75"),
    ("3 / 4 cup", "0.75"),
    ("1 1/2", "1.5"),           # mixed number
    ("\\frac{1}{2}", "0.5"),
    ("\\dfrac{3}{4}", "0.75"),
    ("1/0", None),
    ("1e3", "1000"),
    ("1.5e-3", "0.0015"),
    (".5", "0.5"),
    ("0.50", "0.5"),
    ("3.0", "3"),
    ("007", "7"),
    ("42.", "42"),
    ("x = 42", "42"),
    ("3.14159265", "3.141593"),  # six decimals
    ("60 km/h", "60"),
    ("3eggs", "3"),
    ("twelve", None),           # number words are not parsed
    ("1 000", None),            # space-grouped thousands are ambiguous
    ("1 and 2", None),
    ("3-5", None),              # a range
    ("2023-01-05", None),       # a date
    ("12/25/2020", None),
    ("1/2 of 10", None),
    ("v2", None),               # a version tag, not a quantity
    ("5 - 3", None),
    ("", None),
    ("1e400", None),            # overflows to inf
]


@pytest.mark.parametrize("raw, norm", NUMBERS)
def test_normalize_number_table(raw, norm):
    assert normalize_number(raw) == norm


@pytest.mark.parametrize("pred, gold, ok", [
    ("0.75", "3/4", True),
    ("\\frac{3}{4}", "0.75", True),
    ("1,000 apples", "1000", True),
    ("−5", "-5", True),
    ("42%", "42", True),
    ("1e3", "1,000", True),
    ("5 or 6", "5", False),
    ("Paris, France", "paris", True),
])
def test_answers_match_table(pred, gold, ok):
    assert answers_match(pred, gold) is ok


JSON_CFG = ExtractionConfig(patterns=["json", "last_line"])
REGEX_CFG = ExtractionConfig(patterns=["regex"], regex=r"RESULT\s*=\s*(\S+)")

EXTRACTIONS = [
    # (text, cfg, answer, method)
    ("so \\boxed{\\frac{1}{2}} is it", None, "\\frac{1}{2}", "boxed"),
    ("\\boxed{x^{2}+\\{1\\}}", None, "x^{2}+\\{1\\}", "boxed"),
    ("first \\boxed{3} then \\boxed{4}", None, "4", "boxed"),
    ("unbalanced \\boxed{3 so 7", None, "7", "last_number"),
    ("$\\boxed{42}$", None, "42", "boxed"),
    ("reasoning\n#### 1,200", None, "1,200", "gsm8k"),
    ("**Final Answer:** 17", None, "17", "answer_colon"),
    ('Thinking...\n```json\n{"answer": 42}\n```', JSON_CFG, "42", "json"),
    ('{"answer": "Paris", "confidence": 0.9}', JSON_CFG, "Paris", "json"),
    ('{"other": 1}\nlast', JSON_CFG, "last", "last_line"),
    ('{"answer": 1} then {"answer": 2}', JSON_CFG, "2", "json"),
    ('{"result": {"answer": 7}}', ExtractionConfig(patterns=["json"], json_key="result.answer"), "7", "json"),
    ("{not json", JSON_CFG, "{not json", "last_line"),
    ("RESULT = 9\nRESULT = 10", REGEX_CFG, "10", "regex"),
    ("nothing", REGEX_CFG, None, "none"),
    ("The answer is 5.\n#### 6", ExtractionConfig(patterns=["the_answer_is", "gsm8k"]), "5", "the_answer_is"),
    ("", ExtractionConfig(patterns=["last_number"]), None, "none"),
    # a small teacher echoing the template's instruction: quotes and the final period are not the answer
    ('The answer is 3.\nWrite it as "The answer is 3."', None, "3", "the_answer_is"),
    ("The answer is '12.5'.", None, "12.5", "the_answer_is"),
    ("The answer is 3.5.", None, "3.5", "the_answer_is"),
]


@pytest.mark.parametrize("text, cfg, answer, method", EXTRACTIONS)
def test_extract_table(text, cfg, answer, method):
    ex = extract_answer(text, cfg)
    assert (ex.answer, ex.method) == (answer, method)


def test_json_fence_is_cut_from_rationale():
    ex = extract_answer('Work: 6*7.\n```json\n{"answer": 42}\n```', JSON_CFG)
    assert ex.rationale == "Work: 6*7."


def test_default_cfg_is_historical_order():
    text = "The answer is 3.\nAnswer: 4"
    assert extract_answer(text) == extract_answer(text, ExtractionConfig())


@pytest.mark.parametrize("kwargs, needle", [
    ({"patterns": ["regex"], "regex": "(unclosed"}, "not a valid regular expression"),
    ({"patterns": ["regex"], "regex": "no group"}, "exactly one capturing group"),
    ({"patterns": ["regex"], "regex": "(a)(b)"}, "exactly one capturing group"),
    ({"patterns": ["regex"]}, "extraction.regex is not set"),
    ({"patterns": ["boxed", "boxed"]}, "more than once"),
    ({"patterns": ["nope"]}, "patterns"),
    ({"patterns": []}, "patterns"),
    ({"unknown_key": 1}, "unknown_key"),
])
def test_config_errors_name_the_field(kwargs, needle):
    with pytest.raises(ValidationError, match=needle):
        ExtractionConfig(**kwargs)
