import pytest

from distill.answers import answer_key, answers_match, answers_match_strict, extract_answer, normalize_number


@pytest.mark.parametrize("text, answer, method", [
    ("3 boxes of 4 is 12.\nThe answer is 12.", "12", "the_answer_is"),
    ("Half of 10 is 5.\n#### 5", "5", "gsm8k"),
    ("We get \\boxed{42} in the end.", "42", "boxed"),
    ("Step 1: 2+2=4\nAnswer: 4", "4", "answer_colon"),
    ("The answer is 7. Wait, recheck.\nThe answer is 8.", "8", "the_answer_is"),
    ("So she pays $1,200.50 in total", "$1,200.50", "last_number"),
    ("The answer is **Paris**.", "Paris", "the_answer_is"),
    ("no numbers here\nfinal line", "final line", "last_line"),
    ("", None, "none"),
])
def test_extract_answer(text, answer, method):
    ex = extract_answer(text)
    assert ex.answer == answer
    assert ex.method == method


@pytest.mark.parametrize("raw, norm", [("1,200", "1200"), ("$5", "5"), ("12.50", "12.5"), ("3.0", "3"),
                                       ("-7", "-7"), ("18 dollars", "18"), ("no number", None), ("1 and 2", None)])
def test_normalize_number(raw, norm):
    assert normalize_number(raw) == norm


@pytest.mark.parametrize("pred, gold, ok", [
    ("12", "12", True), ("12.0", "12", True), ("$1,200", "1200", True), ("13", "12", False),
    ("Paris", "paris", True), ("The capital is Paris.", "Paris", True), ("positive", "negative", False),
    ("Parisian", "Paris", False), (None, "1", False), ("anything", None, None),
])
def test_answers_match(pred, gold, ok):
    assert answers_match(pred, gold) is ok


@pytest.mark.parametrize("pred, gold, strict, lenient", [
    ("12", "12", True, True), ("12.0", "12", True, True), ("$1,200", "1200", True, True),
    ("13", "12", False, False),
    ("Paris", "paris", True, True), ('"Paris."', "Paris", True, True),  # case, surrounding quotes/punctuation
    ("The capital is Paris.", "Paris", False, True),  # only the lenient rule reads a label inside a sentence
    ("positive, clearly", "positive", False, True),
    ("Parisian", "Paris", False, False), (None, "1", False, False), ("", "positive", False, False),
    ("anything", None, None, None), ("anything", "", None, None),
])
def test_strict_match_is_exact_on_the_normalised_form(pred, gold, strict, lenient):
    assert answers_match_strict(pred, gold) is strict
    assert answers_match(pred, gold) is lenient


@pytest.mark.parametrize("pred, gold", [("12", "12.0"), ("Paris", "PARIS!"), ("The capital is Paris.", "Paris"),
                                        ("7", "8"), ("yes", "no"), ("$3", "3 dollars")])
def test_strict_match_is_the_answer_key_equality_and_implies_the_lenient_one(pred, gold):
    strict = answers_match_strict(pred, gold)
    assert strict is (answer_key(pred) == answer_key(gold))
    assert strict is answers_match_strict(gold, pred)  # symmetric
    if strict:
        assert answers_match(pred, gold)
