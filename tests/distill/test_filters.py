"""Row filters: each heuristic, composition with first-filter attribution, n-gram contamination."""

import pytest

from distill.answers import ExtractionConfig
from distill.data.filters import (
    BlocklistFilter,
    ContaminationFilter,
    FormatFilter,
    GoldMatchFilter,
    LengthFilter,
    NgramIndex,
    apply_filters,
    ngram_contamination,
    row_instruction,
    row_response,
)


def row(instruction, response="A fine answer.", **extra):
    return {"id": instruction[:10], "instruction": instruction, "output": response} | extra


def test_row_accessors_read_chat_rows():
    chat = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 2+2?"},
                         {"role": "assistant", "content": "4"}]}
    assert row_instruction(chat) == "What is 2+2?" and row_response(chat) == "4"
    assert row_instruction({"question": "Q?", "input": "ctx"}) == "Q?\nctx"


@pytest.mark.parametrize("r, reason", [
    (row("Name three colors of the rainbow."), None),
    (row("Sort"), "instruction has 1 words (< 4)"),
    (row(" ".join(["word"] * 151)), "instruction has 151 words (> 150)"),
    (row("Name three colors please.", ""), "response has 0 words (< 1)"),
])
def test_length_filter(r, reason):
    assert LengthFilter()(r) == reason


@pytest.mark.parametrize("instruction, response, needle", [
    ("Name three colors of the rainbow.", "Red, orange, yellow.", None),
    ("- list three fruits please", "x", "starts with punctuation"),
    ("Переведите это предложение на английский.", "x", "non-ASCII"),
    ("Describe the image below in detail.", "x", "'image'"),
    ("Draw a flowchart of the login process.", "x", "mentions 'draw'"),
    ("Explain how to go to the station by bus.", "x", "'go to'"),
    ("Summarize the profile of this author.", "ok", None),  # "file" only as a whole word
    ("Write a program that sorts a list.", "x", "starts with 'write a program'"),
    ("Give me a fun fact about owls.", "", "response is empty"),
    ("Give me a fun fact about owls.", "As an AI language model, I don't have opinions.", "refusal"),
    ("Give me a fun fact about owls.", "I\u2019m sorry, but I can\u2019t help with that.", "refusal"),
])
def test_format_filter(instruction, response, needle):
    reason = FormatFilter()(row(instruction, response))
    assert reason is None if needle is None else needle in reason


def test_format_filter_instruction_only():
    assert FormatFilter(check_response=False)(row("Give me a fun fact about owls.", "")) is None


def test_blocklist_filter():
    f = BlocklistFilter(("password", "credit card"))
    assert f(row("How do I reset my Password?")) == "instruction contains blocked 'password'"
    assert f(row("Explain interest.", "Use a CREDIT   card wisely.")) == "response contains blocked 'credit   card'"
    assert f(row("Explain passwords.")) is None  # whole words only
    assert BlocklistFilter(("secret",), fields=("response",))(row("a secret question here")) is None
    with pytest.raises(ValueError, match="BlocklistFilter.words"):
        BlocklistFilter(())
    with pytest.raises(ValueError, match="BlocklistFilter.fields"):
        BlocklistFilter(("x",), fields=("title",))


def test_gold_match_filter():
    f = GoldMatchFilter()
    assert f({"answer": "$1,200", "gold": "1200"}) is None
    assert f({"answer": "13", "gold": "12"}) == "answer '13' does not match gold '12'"
    assert f({"answer": "13"}) is None
    assert GoldMatchFilter(require_gold=True)({"answer": "13"}) == "no gold answer to check against"
    # no extracted answer: extract from the response with the configured patterns
    assert f({"output": "so 6*7\n#### 42", "gold": "42"}) is None
    cfg = ExtractionConfig(patterns=["json"])
    assert GoldMatchFilter(extraction=cfg)({"output": '{"answer": 41}', "gold": "42"}) is not None


def test_apply_filters_counts_and_first_filter_attribution():
    rows = [
        row("Name three colors of the rainbow."),              # kept
        row("Sort"),                                            # length (and nothing else)
        row("Describe the image, it has the secret word."),     # format AND blocklist -> format (first)
        row("Tell me the secret recipe for good bread."),       # blocklist
        row("Sort"),                                            # length again
    ]
    filters = [LengthFilter(), FormatFilter(), BlocklistFilter(("secret",))]
    kept, removed, counts = apply_filters(rows, filters)
    assert [r["instruction"] for r in kept] == ["Name three colors of the rainbow."]
    assert counts == {"length": 2, "format": 1, "blocklist": 1}
    assert [r["removed_by"] for r in removed] == ["length", "format", "blocklist", "length"]
    assert all(r["reason"] for r in removed)
    assert "removed_by" not in rows[1]  # inputs untouched
    # reversing the order moves the doubly-bad row to the blocklist
    assert apply_filters(rows, filters[::-1]).counts == {"blocklist": 2, "format": 0, "length": 2}


def test_apply_filters_plain_functions_and_unique_names():
    def no_q(r):
        return "has a q" if "q" in r["instruction"] else None

    res = apply_filters([row("quiet please now ok"), row("fine words here ok")], [no_q])
    assert res.counts == {"no_q": 1} and len(res.kept) == 1
    with pytest.raises(ValueError, match="unique"):
        apply_filters([], [LengthFilter(), LengthFilter()])
    with pytest.raises(ValueError, match="LengthFilter.min_instruction_words"):
        LengthFilter(min_instruction_words=10, max_instruction_words=5)


EVAL = ["Marco baked cookies for 36 of his neighbours in June, and then he baked half as many cookies in July. "
        "How many cookies did Marco bake altogether in June and July?",
        "What is 7 times 8?"]


def test_contamination_detects_injected_13_gram():
    injected = "Here is a story. " + "he baked half as many cookies in July. How many cookies did Marco bake" + " tonight."
    rows = [row("Write a story about a baker.", "Once upon a time there was a baker."),
            row("Solve this problem.", injected, id="leak"),
            # 12 consecutive eval words only: below n = 13
            row("Solve this.", "Marco baked cookies for 36 of his neighbours in June, and then")]
    rep = ngram_contamination(rows, EVAL, n=13)
    assert rep.contaminated == 1 and rep.eval_items_hit == 1 and rep.rows == 3
    assert rep.per_row[1].id == "leak" and rep.per_row[1].eval_indices == [0] and rep.per_row[1].ngrams >= 1
    assert rep.per_row[0].ngrams == 0 and rep.per_row[2].ngrams == 0
    assert rep.skipped_short_eval == 1  # "What is 7 times 8?" has 5 tokens < min_n = 8
    # normalisation: case and punctuation do not hide the overlap
    shouted = "HE BAKED HALF, AS MANY COOKIES IN JULY -- HOW MANY COOKIES DID MARCO BAKE!!"
    assert ngram_contamination([shouted], EVAL).contaminated == 1
    # a smaller n (short math questions) catches the 12-word row too
    assert ngram_contamination(rows, EVAL, n=8).contaminated == 2


def test_contamination_short_eval_text_matched_whole_and_as_filter():
    evals = ["Compute the sum of the first ten primes"]  # 8 tokens: < 13 but >= min_n, matched whole
    f = ContaminationFilter(evals)
    assert f(row("Please compute the sum of the first ten primes for me.")).startswith("1 n-gram(s) (n=8)")
    assert f(row("Compute the sum of the first nine primes")) is None
    kept, removed, counts = apply_filters([row("Compute the sum of the first ten primes now.")], [f])
    assert counts == {"contamination": 1} and removed[0]["removed_by"] == "contamination"
    with pytest.raises(ValueError, match="min_n"):
        NgramIndex(evals, n=8, min_n=9)
