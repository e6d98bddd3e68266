"""Prompt building and demonstration selection (no teacher needed)."""

from distill.dataset import GenerateConfig, build_requests, select_demos
from distill.seeds import Seed, load_seeds


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
    live = [p for p in plans if "request" in p]
    assert {p["style"] for p in live} == {"icl", "cot", "instruct"}
    # open-ended seeds have no gold answers, so no ICL demos: skipped and counted, not faked
    assert {p["seed"].task for p in plans if p.get("skip") == "no_demos"} == {"open"}
    icl = next(p for p in live if p["style"] == "icl")
    assert icl["request"].template_sha == templates["icl"].sha256
    assert "Example 1:" in icl["request"].messages[-1]["content"]
    # prompt erasure: the student's prompt has no demonstrations
    assert "Example 1:" not in icl["student_prompt"][-1]["content"]
    assert len({p["request"].key() for p in live}) == len(live)


def test_chat_demo_format_gives_each_demo_its_own_turns():
    seeds = pool()
    text_plans, _ = build_requests(seeds, GenerateConfig(seeds="unused", styles=["icl"], num_demos=2), "M")
    cfg = GenerateConfig(seeds="unused", styles=["icl"], num_demos=2, demo_format="chat", erase_demos=True)
    plans, templates = build_requests(seeds, cfg, "M")
    plan, text = plans[0], text_plans[0]
    msgs = plan["request"].messages
    assert plan["demo_ids"] == text["demo_ids"]  # the same demos, only their layout differs
    demos = [next(s for s in seeds if s.id == i) for i in plan["demo_ids"]]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [msgs[2]["content"], msgs[4]["content"]] == [d.answer for d in demos]
    assert demos[0].input in msgs[1]["content"] and plan["seed"].input in msgs[-1]["content"]
    assert msgs[-1] == plan["student_prompt"][-1]  # erasure leaves exactly the question's own turn
    assert plan["request"].template == "instruct+chat_demos" and plan["request"].template_sha == templates["instruct"].sha256
    assert plan["request"].key() != text["request"].key()


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
    icl = next(p for p in plans if p["style"] == "icl")
    assert icl["request"].template == f"{jinja}+chat_demos"
    assert [m["role"] for m in icl["request"].messages] == ["user", "assistant", "user", "assistant", "user"]
    assert [m["role"] for m in icl["student_prompt"]] == ["user"] and icl["student_prompt"][0]["content"].startswith("Add.")
    assert all(m["role"] != "system" for p in plans if "request" in p for m in p["request"].messages)
    text, _ = build_requests(seeds, GenerateConfig(seeds="unused", styles=["icl"], num_demos=2), "M")
    assert text[0]["request"].template == "icl" and text[0]["request"].messages[0]["role"] == "system"
