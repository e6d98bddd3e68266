"""Prompt building and demonstration selection (no teacher needed)."""

from distill.data.dataset import GenerateConfig
from distill.data.plan import Plan, Skipped, build_requests, select_demos
from distill.data.seeds import Seed, load_seeds


def pool(n=8):
    return [Seed(id=f"s{i}", instruction="Add.", input=f"{i}+1", answer=str(i + 1), task="add") for i in range(n)] + [
        Seed(id="other", instruction="Name it.", input="x", answer="y", task="names")]


def test_demo_never_leaks_into_its_target():
    seeds = pool()
    for s in seeds:
        demos = select_demos(s, seeds, 3, rng_seed=0)
        ids = [i for i, _ in demos]
        assert s.id not in ids
        assert all(next(p for p in seeds if p.id == i).task == s.task for i in ids)
        assert len(ids) == len(set(ids))  # without replacement


def test_demo_selection_is_seeded_and_order_independent():
    seeds = pool()
    a = select_demos(seeds[0], seeds, 3, rng_seed=1)
    b = select_demos(seeds[0], list(reversed(seeds)), 3, rng_seed=1)
    c = select_demos(seeds[0], seeds, 3, rng_seed=2)
    assert a == b  # same demos, same order, whatever the seed file's order
    assert a != c


def test_seed_own_demos_take_precedence():
    s = Seed(id="x", instruction="i", demos=[{"input": "a", "output": "b"}])
    assert select_demos(s, pool(), 3, 0) == [("x/demo-0", {"input": "a", "output": "b"})]


def test_build_requests_all_styles_and_provenance(repo_root):
    seeds = load_seeds(repo_root / "flows/configs/demo_seeds.jsonl")
    cfg = GenerateConfig(seeds="unused", erase_demos=True)
    plans, templates = build_requests(seeds, cfg, "M")
    live = [p for p in plans if isinstance(p, Plan)]
    assert {p.style for p in live} == {"icl", "cot", "instruct"}
    # open-ended seeds have no gold answers, so no ICL demos: skipped and counted, not faked
    assert {p.seed.task for p in plans if isinstance(p, Skipped) and p.reason == "no_demos"} == {"open"}
    icl = next(p for p in live if p.style == "icl")
    assert icl.request.template_sha == templates["icl"].sha256
    assert "Example 1:" in icl.request.messages[-1]["content"]
    # prompt erasure: the student's prompt has no demonstrations
    assert "Example 1:" not in icl.student_prompt[-1]["content"]
    assert len({p.request.key() for p in live}) == len(live)


def test_chat_demo_format_gives_each_demo_its_own_turns():
    seeds = pool()
    text_plans, _ = build_requests(seeds, GenerateConfig(seeds="unused", styles=["icl"], num_demos=2), "M")
    cfg = GenerateConfig(seeds="unused", styles=["icl"], num_demos=2, demo_format="chat", erase_demos=True)
    plans, templates = build_requests(seeds, cfg, "M")
    plan, text = plans[0], text_plans[0]
    msgs = plan.request.messages
    assert plan.demo_ids == text.demo_ids  # the same demos, only their layout differs
    demos = [next(s for s in seeds if s.id == i) for i in plan.demo_ids]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [msgs[2]["content"], msgs[4]["content"]] == [d.answer for d in demos]
    assert demos[0].input in msgs[1]["content"] and plan.seed.input in msgs[-1]["content"]
    assert msgs[-1] == plan.student_prompt[-1]  # erasure leaves exactly the question's own turn
    assert plan.request.template == "instruct+chat_demos" and plan.request.template_sha == templates["instruct"].sha256
    assert plan.request.key() != text.request.key()


def test_docs_generate_template_table_and_no_system_template_hold(repo_root, tmp_path):
    """docs/generate.md: chat demos and the erased prompt go through templates.instruct (templates.icl unused);
    its template without a system block leaves every prompt without a system message (the model's default)."""
    doc = (repo_root / "docs" / "generate.md").read_text()
    jinja = tmp_path / "no_system.jinja"
    jinja.write_text(doc.split("```jinja\n", 1)[1].split("```", 1)[0])
    seeds = pool()
    unused = tmp_path / "broken_icl.jinja"  # would fail to render if build_requests used it
    unused.write_text("{% block user %}{{ no_such_variable }}{% endblock %}")
    cfg = GenerateConfig(seeds="unused", styles=["icl", "instruct"], num_demos=2, demo_format="chat", erase_demos=True,
                         templates={"instruct": str(jinja), "icl": str(unused)})
    plans, _ = build_requests(seeds, cfg, "M")
    icl = next(p for p in plans if p.style == "icl")
    assert icl.request.template == f"{jinja}+chat_demos"
    assert [m["role"] for m in icl.request.messages] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["role"] for m in icl.student_prompt] == ["user"] and icl.student_prompt[0]["content"].startswith("Add.")
    assert all(m["role"] != "system" for p in plans if isinstance(p, Plan) for m in p.request.messages)
    text, _ = build_requests(seeds, GenerateConfig(seeds="unused", styles=["icl"], num_demos=2), "M")
    assert text[0].request.template == "icl" and text[0].request.messages[0]["role"] == "system"


# --- self-consistency for labels: icl / instruct samples vote on their first line (issue 22, section 2) ------
import pytest  # noqa: E402

from distill.data.rows import _rows_for, _sc_stats  # noqa: E402
from distill.teacher.query import Choice, TeacherResponse  # noqa: E402

SC = {"sampling": {"n": 4, "temperature": 0.8}}


def _voted_rows(style, texts, gold=None, keep="voted", sc_styles=("icl",), styles=("icl", "cot", "instruct")):
    """The rows of one prompt of ``style`` whose samples answered ``texts``."""
    seed = Seed(id="cap", instruction="Name the capital.", input="France", answer=gold, task="capital",
                demos=[{"input": "Japan", "output": "Tokyo"}], rationale="Its capital.")
    cfg = GenerateConfig(seeds="unused", styles=list(styles), num_demos=1, **SC,
                         self_consistency={"enabled": True, "keep": keep, "styles": list(sc_styles)})
    plans, _ = build_requests([seed], cfg, "m")
    plan = next(p for p in plans if p.style == style)
    resp = TeacherResponse(key="k", choices=[Choice(text=t, finish_reason="stop") for t in texts])
    return _rows_for(plan, resp, cfg, "train")


def test_icl_samples_vote_on_their_normalised_first_line():
    rows = _voted_rows("icl", ["Paris\nIt is the largest city.", "paris.", "Lyon", "Paris"])
    assert [r["answer"] for r in rows] == ["Paris", "paris.", "Lyon", "Paris"]  # the first line, as written
    assert {r["quality"]["vote_share"] for r in rows} == {0.75} and {r["quality"]["voted_answer"] for r in rows} == {"Paris"}
    assert [r["removed_reason"] is None for r in rows] == [True, True, False, True]
    assert rows[2]["removed_reason"] == "sc_minority: answer 'Lyon', voted 'Paris' (3/4)"


def test_icl_keep_gold_keeps_the_gold_labels_even_against_the_majority():
    rows = _voted_rows("icl", ["Lyon", "Lyon", "Paris", "Lyon"], gold="Paris", keep="gold")
    assert [r["removed_reason"] is None for r in rows] == [False, False, True, False]
    assert rows[0]["removed_reason"] == "gold_mismatch: answer 'Lyon', gold 'Paris' (voted 'Lyon')"
    assert rows[2]["quality"]["vote_share"] == 0.75 and rows[2]["quality"]["voted_answer"] == "Lyon"
    # no gold (a task file's unlabelled input): keep: gold falls back to the vote
    rows = _voted_rows("icl", ["Lyon", "Lyon", "Paris", "Lyon"], gold=None, keep="gold")
    assert [r["removed_reason"] is None for r in rows] == [True, True, False, True]


def test_truncated_and_empty_samples_do_not_vote_but_count_against_the_share():
    rows = _voted_rows("icl", ["Paris", "", "Paris", "Lyon"])
    assert rows[1]["removed_reason"] == "empty" and rows[0]["quality"]["vote_share"] == 0.5
    assert [r["removed_reason"] for r in rows][3].startswith("sc_minority")


def test_instruct_votes_only_when_listed_and_cot_by_default():
    texts = ["Paris", "Paris", "Lyon", "Paris"]
    assert {r["quality"]["vote_share"] for r in _voted_rows("instruct", texts)} == {None}  # not listed: no vote
    voted = _voted_rows("instruct", texts, sc_styles=("icl", "instruct"))
    assert voted[2]["removed_reason"].startswith("sc_minority") and voted[0]["quality"]["vote_share"] == 0.75
    cot = ["So it is Paris.\nThe answer is Paris.", "The answer is Lyon.", "The answer is Paris.", "The answer is paris"]
    assert {r["quality"]["vote_share"] for r in _voted_rows("cot", cot)} == {None}  # icl only: cot does not vote
    default = GenerateConfig(seeds="unused", styles=["cot"], **SC, self_consistency={"enabled": True})
    assert default.self_consistency.styles == ["cot"]  # as before: cot votes unless told otherwise
    rows = _voted_rows("cot", cot, sc_styles=("cot",))
    assert rows[0]["quality"]["voted_answer"] == "Paris" and rows[1]["removed_reason"].startswith("sc_minority")


def test_sc_stats_count_each_voting_prompt_per_style():
    icl = _voted_rows("icl", ["Paris", "Paris", "Lyon", "Paris"], gold="Paris", sc_styles=("icl", "instruct"))
    instruct = _voted_rows("instruct", ["Lyon", "Lyon", "Paris", "Lyon"], gold="Paris", sc_styles=("icl", "instruct"))
    stats = _sc_stats(icl + instruct)  # the same seed in two styles: two prompts, never one question of 8 samples
    assert stats["questions"] == 2 and stats["styles"] == ["icl", "instruct"]
    assert stats["per_style"]["icl"]["voted_accuracy"] == 1.0 and stats["per_style"]["instruct"]["voted_accuracy"] == 0.0
    assert stats["per_style"]["icl"]["mean_vote_share"] == 0.75 and stats["voted_accuracy"] == 0.5


@pytest.mark.parametrize("data, needle", [
    ({"styles": ["icl"], "self_consistency": {"enabled": True, "styles": ["icl"]}, "sampling": {"n": 4}},
     "needs sampling.n >= 2 and temperature > 0 for the icl samples to vote over (got n=4, temperature=0.0)"),
    ({"styles": ["icl", "cot"], "self_consistency": {"enabled": True, "styles": ["icl", "cot"]}, **SC,
      "sampling_per_style": {"icl": {"n": 1, "stop": ["\n"]}}}, "for the icl samples to vote over (got n=1"),
    ({"styles": ["icl"], "self_consistency": {"enabled": True}, **SC},
     "self_consistency.styles: cot is not in generate.styles ['icl']"),
])
def test_self_consistency_config_errors_name_the_style(data, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        GenerateConfig(seeds="s.jsonl", **data)
    GenerateConfig(seeds="s.jsonl", styles=["icl"], self_consistency={"enabled": True, "styles": ["icl"]}, **SC)  # valid
