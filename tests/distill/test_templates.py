"""distill.data.templates: one rule for which templates the generate stage renders (what build_requests renders with,
preflight checks and the stage key hashes; the per-config cases are in tests/flows/test_stage_keys.py)."""

import subprocess
import sys

import pytest

from distill.config import ConfigError
from distill.data.dataset import GenerateConfig
from distill.data.plan import build_requests
from distill.data.seeds import Seed
from distill.data.templates import resolve_templates


def test_build_requests_renders_with_the_resolved_templates():
    seeds = [Seed(id=f"s{i}", instruction="Add.", input=f"{i}+1", answer=str(i + 1), task="add",
                  rationale=f"{i} and one.") for i in range(4)]
    cfg = GenerateConfig(seeds="unused", cot_shots=2, erase_demos=True, filters={"judge": {}})
    plans, templates = build_requests(seeds, cfg, "m")
    assert {r: t.name for r, t in templates.items()} == {r: t.name for r, t in resolve_templates(cfg).items()} == {
        "icl": "icl", "cot": "cot_fewshot", "cot_zero_shot": "cot", "instruct": "instruct", "judge": "judge"}
    assert {(p.style, p.request.template_sha) for p in plans} == {
        (s, templates[s].sha256) for s in ("icl", "cot", "instruct")}


def test_a_missing_template_names_its_config_field(tmp_path):
    cfg = GenerateConfig(seeds="unused", styles=["instruct"], filters={"judge": {"template": str(tmp_path / "j.jinja")}})
    with pytest.raises(ConfigError, match=r"^generate\.filters\.judge\.template: template '.*j\.jinja' not found"):
        build_requests([Seed(id="a", instruction="Say hi.")], cfg, "m")


def test_the_module_imports_no_model_code():
    code = "import sys, distill.data.templates; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
