"""IFEval-style checks: each kind on hand-written positives and negatives, describe() texts, strict/loose, scores."""

import pytest

from distill.probes.ifeval import (
    KINDS,
    Constraint,
    IFItem,
    describe,
    follows,
    loose_variants,
    make_constraint,
    score_if,
)

AT_MOST, AT_LEAST = "at most", "at least"

# (kind, kwargs, response, follows?) written by hand; every kind has at least one of each
CASES = [
    ("words", {"relation": AT_MOST, "n": 5}, "one two three four five", True),
    ("words", {"relation": AT_MOST, "n": 5}, "one two three four five six", False),
    ("words", {"relation": AT_LEAST, "n": 3}, "Hello, big world!", True),
    ("words", {"relation": AT_LEAST, "n": 3}, "Hello world.", False),
    ("sentences", {"relation": AT_MOST, "n": 2}, "One. Two! ", True),
    ("sentences", {"relation": AT_MOST, "n": 2}, "One. Two? Three.", False),
    ("sentences", {"relation": AT_LEAST, "n": 3}, "A heading\n\nSecond part. Third part.", True),
    ("sentences", {"relation": AT_LEAST, "n": 3}, "Only one sentence, with 3.5 kg in it.", False),
    ("paragraphs", {"n": 3}, "First.\n\nSecond.\n  \nThird.\n", True),
    ("paragraphs", {"n": 3}, "First.\n***\nSecond.\n***\nThird.", True),
    ("paragraphs", {"n": 3}, "First.\nSecond.\nThird.", False),
    ("paragraphs", {"n": 2}, "First.\n\nSecond.\n\nThird.", False),
    ("lowercase", {}, "all lower, even 123 and ok!", True),
    ("lowercase", {}, "Not lower", False),
    ("lowercase", {}, "123 !!", False),  # no letter at all
    ("uppercase", {}, "ALL CAPS, 42!", True),
    ("uppercase", {}, "ALL CAPs", False),
    ("bullets", {"n": 2}, "Intro\n* one\n  - two\nend", True),
    ("bullets", {"n": 1}, "**Bold** line\n* one", True),  # ``**Bold**`` is emphasis, not a bullet
    ("bullets", {"n": 2}, "* one\n* two\n* three", False),
    ("bullets", {"n": 2}, "*one\n-two", False),
    ("numbered", {"n": 3}, "1. a\n2) b\n 3. c", True),
    ("numbered", {"n": 1}, "2023.\n1. only this", True),
    ("numbered", {"n": 3}, "1. a\n2. b", False),
    ("include_keywords", {"keywords": ("cat", "dog")}, "The Cat chased a DOG.", True),
    ("include_keywords", {"keywords": ("cat", "dog")}, "A category of dogs.", False),
    ("exclude_keywords", {"keywords": ("very",)}, "Everything is fine.", True),
    ("exclude_keywords", {"keywords": ("very", "stuff")}, "It is Very good.", False),
    ("keyword_frequency", {"keyword": "tea", "n": 2}, "Tea first, then more tea.", True),
    ("keyword_frequency", {"keyword": "tea", "n": 2}, "Tea and teapots.", False),
    ("json", {}, '{"a": [1, 2]}', True),
    ("json", {}, '```json\n{"a": 1}\n```', True),
    ("json", {}, "```\n[1, 2]\n```", True),
    ("json", {}, 'Here it is: {"a": 1}', False),
    ("json", {}, '{"a": 1', False),
    ("json", {}, '```json\n{"a": 1}\n```\n```json\n{}\n```', False),  # two fences
    ("starts_with", {"phrase": "Dear reader"}, "  Dear reader, hello.", True),
    ("starts_with", {"phrase": "Dear reader"}, "dear reader, hello.", False),
    ("ends_with", {"phrase": "Hope this helps."}, "Some text. Hope this helps.  \n", True),
    ("ends_with", {"phrase": "Hope this helps."}, "Hope this helps. Bye.", False),
    ("ends_with", {"phrase": "Hope this helps."}, "Text. hope this helps.", False),
    ("no_commas", {}, "No commas here. None at all!", True),
    ("no_commas", {}, "One, two", False),
    ("quotes", {}, ' "Quoted text." \n', True),
    ("quotes", {}, '"unbalanced', False),
    ("quotes", {}, '"', False),
    ("title", {}, "<<My Day>>\nIt was fine.", True),
    ("title", {}, "<< >> text", False),
    ("title", {}, "<My Day>", False),
    ("title", {}, "<<My\nDay>>", False),
    ("placeholders", {"n": 2}, "Meet at [address] on [date].", True),
    ("placeholders", {"n": 2}, "Meet at [address] on [].", False),
    ("postscript", {}, "Bye.\n\nP.S. See you soon.", True),
    ("postscript", {}, "bye.\np. s. later", True),
    ("postscript", {}, "Bye. P.S. written inline", False),
    ("postscript", {}, "Bye.\nP.S.", False),
    ("postscript", {}, "Bye.\nPS see you", False),
    ("sections", {"n": 2}, "SECTION 1\nA\nSECTION 2\nB", True),
    ("sections", {"n": 2}, "Section 1\nA\nSection 2\nB", False),
    ("sections", {"n": 2}, "SECTION 1 a SECTION 2 b SECTION 3 c", False),
]


@pytest.mark.parametrize(("kind", "kwargs", "response", "expected"), CASES)
def test_check(kind, kwargs, response, expected):
    assert KINDS[kind].check(response, **kwargs) is expected


def test_every_kind_has_positive_and_negative_cases():
    seen = {(kind, expected) for kind, _, _, expected in CASES}
    assert seen == {(kind, e) for kind in KINDS for e in (True, False)}


def test_kinds_table_matches_check_signatures():
    import inspect

    for kind, spec in KINDS.items():
        params = list(inspect.signature(spec.check).parameters)
        assert params == ["response", *spec.kwargs], kind
        assert spec.check.__doc__, kind


TEXTS = {
    "words": ({"relation": AT_MOST, "n": 40}, "Answer in at most 40 words."),
    "sentences": ({"relation": AT_LEAST, "n": 3}, "Answer in at least 3 sentences."),
    "paragraphs": ({"n": 3}, "Write exactly 3 paragraphs, separated by blank lines or the markdown divider ***."),
    "lowercase": ({}, "Your entire response must be in lowercase letters. No capital letters are allowed."),
    "uppercase": ({}, "Your entire response must be in capital letters. No lowercase letters are allowed."),
    "bullets": ({"n": 4}, 'Your answer must contain exactly 4 bullet points, each on its own line starting with "* ".'),
    "numbered": ({"n": 3}, "Your answer must contain exactly 3 numbered items, each on its own line starting with "
                           'its number, such as "1.".'),
    "include_keywords": ({"keywords": ("simple", "future")},
                         'Include the keywords "simple", "future" in the response.'),
    "exclude_keywords": ({"keywords": ("very",)}, 'Do not include the keywords "very" in the response.'),
    "keyword_frequency": ({"keyword": "tea", "n": 2},
                          'In your response, the word "tea" should appear at least 2 times.'),
    "json": ({}, "Your entire output should be wrapped in JSON format. You can use markdown ticks such as ```."),
    "starts_with": ({"phrase": "Let me explain"}, 'Start your response with the exact phrase "Let me explain".'),
    "ends_with": ({"phrase": "That is all."},
                  'Finish your response with this exact phrase, with no other words after it: "That is all."'),
    "no_commas": ({}, "In your entire response, refrain from the use of any commas."),
    "quotes": ({}, "Wrap your entire response with double quotation marks."),
    "title": ({}, "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."),
    "placeholders": ({"n": 2}, "The response must contain at least 2 placeholders in square brackets, such as "
                               "[address]."),
    "postscript": ({}, "At the end of your response, please explicitly add a postscript starting with P.S."),
    "sections": ({"n": 3}, "Your response must have exactly 3 sections. Mark the beginning of each section with "
                           "SECTION X, such as: SECTION 1."),
}


def test_texts_cover_every_kind():
    assert set(TEXTS) == set(KINDS)


@pytest.mark.parametrize("kind", list(TEXTS))
def test_describe_text(kind):
    kwargs, text = TEXTS[kind]
    assert describe(kind, kwargs) == text
    assert make_constraint(kind, **kwargs) == Constraint(kind, kwargs, text)


def test_describe_singular():
    assert describe("words", {"relation": AT_MOST, "n": 1}) == "Answer in at most 1 word."
    assert describe("placeholders", {"n": 1}).startswith("The response must contain at least 1 placeholder in")


@pytest.mark.parametrize(("kind", "kwargs", "message"), [
    ("lowercas", {}, "unknown constraint kind 'lowercas'; allowed kinds: words, sentences, paragraphs"),
    ("words", {"n": 3}, "constraint 'words' takes kwargs ['relation', 'n'], got ['n']"),
    ("json", {"strict": True}, "constraint 'json' takes kwargs [], got ['strict']"),
    ("words", {"relation": "exactly", "n": 3}, "words.relation must be one of ['at least', 'at most'], got 'exactly'"),
    ("bullets", {"n": 0}, "bullets.n must be a positive integer, got 0"),
    ("bullets", {"n": True}, "bullets.n must be a positive integer, got True"),
    ("bullets", {"n": "3"}, "bullets.n must be a positive integer, got '3'"),
    ("include_keywords", {"keywords": []}, "include_keywords.keywords must be a non-empty list of words, got []"),
    ("include_keywords", {"keywords": "cat"}, "include_keywords.keywords must be a non-empty list of words"),
    ("exclude_keywords", {"keywords": ["ok", "-x"]}, "exclude_keywords.keyword must start and end with a letter"),
    ("starts_with", {"phrase": "  "}, "starts_with.phrase must be a non-empty string, got '  '"),
])
def test_make_constraint_errors(kind, kwargs, message):
    with pytest.raises(ValueError) as e:
        make_constraint(kind, **kwargs)
    assert message in str(e.value)


def test_constraint_is_hashable_and_keywords_normalised():
    a = make_constraint("include_keywords", keywords=["cat", " dog "])
    assert a.kwargs == {"keywords": ("cat", "dog")}
    assert a == make_constraint("include_keywords", keywords=("cat", "dog"))
    assert len({a, make_constraint("include_keywords", keywords=("cat", "dog"))}) == 1


def test_loose_variants_are_ifevals_eight():
    assert loose_variants("*a*\nb\n**c**") == ["*a*\nb\n**c**", "b\n**c**", "*a*\nb", "b",
                                               "a\nb\nc", "b\nc", "a\nb", "b"]


LOWER = make_constraint("lowercase")


def test_loose_passes_where_strict_fails_on_a_preamble():
    response = "Sure! Here it is:\nall lowercase text, as asked."
    assert follows(LOWER, response) == (False, True)


def test_loose_fails_when_no_variant_passes():
    response = "Sure! Here it is:\nSome Capitalised text.\nAnd More."
    assert follows(LOWER, response) == (False, False)


def test_loose_removes_markdown_asterisks_and_last_line():
    assert follows(make_constraint("starts_with", phrase="Dear reader"), "**Dear reader**, hello.") == (False, True)
    ends = make_constraint("ends_with", phrase="That is all.")
    assert follows(ends, "Text. That is all.\nLet me know if you need more.") == (False, True)
    assert follows(ends, "Text. That is all.") == (True, True)


@pytest.mark.parametrize("response", ["", "  \n \n"])
def test_empty_response_follows_nothing(response):
    assert follows(make_constraint("exclude_keywords", keywords=["very"]), response) == (False, False)
    assert follows(make_constraint("no_commas"), response) == (False, False)


def _item(item_id, *constraints):
    return IFItem(item_id, "prompt", "base", tuple(constraints))


def test_score_if_on_a_hand_made_example():
    items = [_item("a", LOWER, make_constraint("no_commas")),
             _item("b", make_constraint("words", relation=AT_MOST, n=3)),
             _item("c", make_constraint("postscript"))]
    responses = ["Sure, here:\nall lower text", "one two three", "No postscript here."]
    out = score_if(items, responses)
    # a: both fail strict (capital S, a comma), both pass loose (first line dropped); b passes; c fails
    assert out["prompt_strict"] == 0.3333 and out["prompt_loose"] == 0.6667
    assert out["instruction_strict"] == 0.25 and out["instruction_loose"] == 0.75
    assert out["items"] == 3
    assert out["per_kind"] == {"lowercase": {"strict": 0.0, "loose": 1.0, "n": 1},
                               "no_commas": {"strict": 0.0, "loose": 1.0, "n": 1},
                               "postscript": {"strict": 0.0, "loose": 0.0, "n": 1},
                               "words": {"strict": 1.0, "loose": 1.0, "n": 1}}
    assert out["per_item"][0] == {"id": "a", "kinds": ["lowercase", "no_commas"], "strict": [False, False],
                                  "loose": [True, True], "prompt_strict": False, "prompt_loose": True}
    assert [r["prompt_strict"] for r in out["per_item"]] == [False, True, False]


def test_score_if_rejects_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="2 items but 1 responses"):
        score_if([_item("a", LOWER), _item("b", LOWER)], ["x"])
    with pytest.raises(ValueError, match="no items"):
        score_if([], [])
