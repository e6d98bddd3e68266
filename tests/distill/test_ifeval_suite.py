"""IFEval-style suite: the compatibility rule, generated items (seeded, distinct, non-contradictory), JSONL loading."""

import itertools
import json

import pytest

from distill.probes.ifeval import KINDS, build_prompt, compatible, make_constraint
from distill.probes.ifsuite import load_if_items, make_if_items

C = make_constraint


@pytest.mark.parametrize(("a", "b"), [
    (C("lowercase"), C("uppercase")),
    (C("lowercase"), C("sections", n=2)),
    (C("json"), C("bullets", n=3)),
    (C("json"), C("quotes")),
    (C("quotes"), C("starts_with", phrase="In short")),
    (C("words", relation="at least", n=100), C("words", relation="at most", n=50)),
    (C("words", relation="at most", n=50), C("words", relation="at most", n=80)),
    (C("sentences", relation="at most", n=2), C("paragraphs", n=3)),
    (C("exclude_keywords", keywords=["very"]), C("include_keywords", keywords=["Very", "simple"])),
    (C("exclude_keywords", keywords=["tea"]), C("keyword_frequency", keyword="tea", n=2)),
    (C("exclude_keywords", keywords=["help"]), C("ends_with", phrase="Hope this helps, I can help.")),
    (C("lowercase"), C("starts_with", phrase="Dear reader")),
    (C("uppercase"), C("ends_with", phrase="That is all.")),
    (C("no_commas"), C("starts_with", phrase="Well, yes")),
    (C("postscript"), C("postscript")),
])
def test_contradictions_are_incompatible(a, b):
    assert not compatible(a, b) and not compatible(b, a)


@pytest.mark.parametrize(("a", "b"), [
    (C("words", relation="at least", n=40), C("words", relation="at most", n=50)),
    (C("words", relation="at least", n=50), C("words", relation="at most", n=50)),
    (C("sentences", relation="at most", n=3), C("paragraphs", n=3)),
    (C("lowercase"), C("ends_with", phrase="thank you for reading")),
    (C("lowercase"), C("postscript")),
    (C("uppercase"), C("json")),
    (C("exclude_keywords", keywords=["very"]), C("include_keywords", keywords=["everyday"])),
    (C("bullets", n=3), C("numbered", n=3)),
    (C("quotes"), C("title")),
])
def test_compatible_pairs(a, b):
    assert compatible(a, b) and compatible(b, a)


def test_generated_items_are_deterministic_and_a_prefix():
    a = make_if_items(60, seed=3)
    assert a == make_if_items(60, seed=3)
    assert a[:20] == make_if_items(20, seed=3)
    assert [it.prompt for it in a] != [it.prompt for it in make_if_items(60, seed=4)]


def test_generated_items_are_distinct_and_varied():
    items = make_if_items(1000, seed=0)
    assert len({it.prompt for it in items}) == 1000
    assert len({it.id for it in items}) == 1000
    assert len({it.base for it in items}) >= 300  # templates x fillers, not a handful of bases
    assert {c.kind for it in items for c in it.constraints} == set(KINDS)


@pytest.mark.parametrize("max_constraints", [1, 2, 4])
def test_generated_items_never_contradict(max_constraints):
    for it in make_if_items(500, seed=max_constraints, max_constraints=max_constraints):
        assert 1 <= len(it.constraints) <= max_constraints
        assert it.prompt == build_prompt(it.base, it.constraints)
        for c in it.constraints:
            assert make_constraint(c.kind, **c.kwargs) == c  # each one validated, its text from describe()
        for a, b in itertools.combinations(it.constraints, 2):
            assert compatible(a, b), (it.id, a, b)


def test_make_if_items_rejects_bad_arguments():
    assert make_if_items(0, seed=0) == []
    with pytest.raises(ValueError, match="n must be >= 0"):
        make_if_items(-1, seed=0)
    with pytest.raises(ValueError, match=r"max_constraints must be in \[1, 19\], got 0"):
        make_if_items(5, seed=0, max_constraints=0)


def _write(tmp_path, rows):
    path = tmp_path / "if.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_load_if_items(tmp_path):
    path = _write(tmp_path, [
        {"id": "x1", "base": "Describe a cat.", "constraints": [{"kind": "words", "relation": "at most", "n": 40},
                                                                  {"kind": "lowercase"}]},
        "",
        {"id": "x2", "instruction": "List fruits.", "constraints": [{"kind": "bullets", "n": 3}]},
    ])
    a, b = load_if_items(path)
    assert a.id == "x1" and a.base == "Describe a cat."
    assert a.prompt == ("Describe a cat. Answer in at most 40 words. Your entire response must be in lowercase "
                        "letters. No capital letters are allowed.")
    assert [c.kind for c in a.constraints] == ["words", "lowercase"]
    assert b.prompt.startswith("List fruits. Your answer must contain exactly 3 bullet points")


GOOD = {"id": "ok", "base": "Describe a cat.", "constraints": [{"kind": "json"}]}


@pytest.mark.parametrize(("row", "message"), [
    ({"id": "b", "base": "Hi.", "constraints": [{"kind": "lowercas"}]},
     "unknown constraint kind 'lowercas'; allowed kinds: words, sentences, paragraphs, lowercase"),
    ({"id": "b", "base": "Hi.", "constraints": [{"kind": "words", "n": 0, "relation": "at most"}]},
     "words.n must be a positive integer, got 0"),
    ({"id": "b", "base": "Hi.", "constraints": [{"kind": "bullets"}]},
     "constraint 'bullets' takes kwargs ['n'], got []"),
    ({"id": "b", "base": "Hi.", "constraints": [{"n": 3}]}, 'every constraint needs a "kind"; allowed kinds: words'),
    ({"id": "b", "base": "Hi.", "constraints": []}, "constraints must be a non-empty list"),
    ({"id": "b", "base": "Hi.", "constraints": [{"kind": "lowercase"}, {"kind": "uppercase"}]},
     "constraints 'lowercase' and 'uppercase' cannot both be followed"),
    ({"id": "b", "prompt": "Hi.", "constraints": [{"kind": "json"}]}, "unknown keys ['prompt']"),
    ({"id": "b", "base": "Hi.", "instruction": "Hi.", "constraints": [{"kind": "json"}]}, "not both"),
    ({"id": "b", "base": " ", "constraints": [{"kind": "json"}]}, "one non-empty string under 'base'"),
    ({"id": "ok", "base": "Hi.", "constraints": [{"kind": "json"}]}, "id must be a unique non-empty string, got 'ok'"),
    ({"base": "Hi.", "constraints": [{"kind": "json"}]}, "id must be a unique non-empty string, got None"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "a row must be a JSON object, got list"),
])
def test_load_if_items_errors_name_file_and_line(tmp_path, row, message):
    path = _write(tmp_path, [GOOD, "", row])
    with pytest.raises(ValueError) as e:
        load_if_items(path)
    assert str(e.value).startswith(f"{path}:3: ")
    assert message in str(e.value)
