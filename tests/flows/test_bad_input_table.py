"""Issue 8's bad-input table, through the real ``eakd`` CLI.

Each row feeds one bad input to one command (``generate --dry-run`` / ``--out``, ``train``, ``evaluate``,
``compress``, ``run``) and checks the contract: a non-zero exit (2 for bad input, 1 for a teacher that cannot be used),
exactly one ``error:`` line on stderr and nothing after it, no traceback, the line names the file / line /
field (``where``) and says what to do (``fix``), and every file already in the workspace — earlier
outputs included (a dataset, a trained student, a run folder, a published compression step) — is
byte-identical afterwards, with nothing new written beyond what the row allows.

The app runs in-process (typer's ``CliRunner``): one interpreter start instead of one per row keeps the
table under a minute on 2 cores; ``tests/flows/test_cli.py`` covers the same contract through a real
subprocess. No row needs a teacher: the unreachable URL is a closed port, 401/404 come from the fault
proxy (``tests/faultproxy.py``) with no upstream behind it; the same refusals from a real vLLM server are
in ``test_teacher_refusals_on_a_real_server`` (integration).
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

pytestmark = [pytest.mark.reliability]

SEEDS = [
    {"id": "add-1", "task": "arithmetic", "instruction": "What is 2 plus 3?", "answer": "5"},
    {"id": "add-2", "task": "arithmetic", "instruction": "What is 4 plus 4?", "answer": "8"},
    {"id": "add-3", "task": "arithmetic", "instruction": "What is 7 plus 1?", "answer": "8"},
    {"id": "cap-1", "task": "capitals", "instruction": "What is the capital of France?", "answer": "Paris"},
    {"id": "cap-2", "task": "capitals", "instruction": "What is the capital of Japan?", "answer": "Tokyo"},
    {"id": "cap-3", "task": "capitals", "instruction": "What is the capital of Italy?", "answer": "Rome"},
]
EVAL_TEXT = " ".join(
    ["Knowledge distillation trains a small student model on the outputs of a large teacher model.",
     "The student learns to imitate the teacher's answers, and sometimes its reasoning as well.",
     "Compression then makes the student smaller still by pruning, factorizing or quantizing weights."] * 12)
# The workspace every row starts from: openai backend at a closed port (a dry run never calls it; a row
# that got past its check would fail loudly on the connection instead of silently succeeding).
BASE_CONFIG = """\
run: {name: t, runs_dir: <ws>/runs, stages: [generate, train, compress]}
teacher: {backend: openai, model: m, base_url: "http://127.0.0.1:9/v1", max_retries: 0, cache_path: <cache>}
generate:
  seeds: <ws>/seeds.jsonl
  styles: [icl, cot, instruct]
  num_demos: 2
  sampling: {max_tokens: 64}
train: {student: <tiny>, lora: {r: 4, alpha: 8}, max_steps: 1, device: cpu}
compress:
  steps: [{method: rtn_int8}]
  eval: {text_path: <ws>/eval.txt, window: 32, max_windows: 2}
"""
# Earlier outputs a failed command must leave exactly as they were.
EARLIER = {
    "earlier/dataset/stats.json": '{"format": "eakd-dataset/v1", "rows": {"train": 3}}\n',
    "earlier/dataset/dataset_dict.json": '{"splits": ["train", "validation", "removed"]}\n',
    "earlier/dataset/sentinel.txt": "generated yesterday\n",
    "earlier/student/metrics.json": '{"train_loss": 1.23}\n',
    "earlier/student/model.safetensors": "not really weights, but they must survive\n",
    "earlier/eval/eval.json": '{"format": "eakd-eval/v1"}\n',
    "runs/t-earlier/report.md": "# an earlier run\n",
    "runs/t-earlier/config.yaml": "run: {name: t}\n",
    "compressed/01-magnitude/metrics.json": '{"gate": "passed"}\n',
    "compressed/01-magnitude/sentinel.txt": "published by an earlier compress run\n",
}
LONG_SEED = {"id": "long", "instruction": "Summarise this text: " + "the teacher answers every question at length " * 60}


def _jsonl(rows: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


@dataclass
class Row:
    cmd: list[str]  # argv after `eakd`; <ws> <cfg> <tiny> <proxy> are filled in
    code: int  # expected exit code
    where: str  # the error line names the file / line / field
    fix: str  # ... and says what to do
    files: dict[str, str] = field(default_factory=dict)  # extra inputs in the workspace (relative path -> text)
    setup: tuple[str, ...] = ()  # extra inputs built by a function (see SETUPS)
    new_ok: tuple[str, ...] = ()  # paths the command may add to the workspace
    env: dict[str, str] = field(default_factory=dict)
    proxy: dict | None = None  # FaultProxy kwargs: the row talks to it at <proxy>


def _sft_dataset(ws: Path, tiny: Path) -> None:
    from datasets import Dataset, DatasetDict

    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(4)]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(ws / "sft_ds"))


def _kd_dataset(ws: Path, tiny: Path) -> None:
    """Teacher token ids from a different vocabulary: they do not decode to the teacher's text."""
    from datasets import Dataset, DatasetDict

    from distill.logprobs import pack_topk

    rows = [{"id": str(i), "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
             "teacher_token_ids": [900 + i, 901, 2],
             "teacher_logprobs": json.dumps(pack_topk([[900 + i], [901], [2]], [[0.0], [0.0], [0.0]]))} for i in range(3)]
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(ws / "kd_ds"))


def _fitted_tiny(ws: Path, tiny: Path) -> None:
    """The tiny model after 30 steps on EVAL_TEXT: better than chance on it, so pruning 90% of its
    weights must raise perplexity (a random model's is ~uniform already, and compression cannot worsen it
    reliably). ~2 s, against ~10-40 s for compressing the 135M teacher on a busy CPU."""
    import torch

    from distill.models import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    model, tok = load_causal_lm(tiny), load_tokenizer(tiny)
    ids = tok(EVAL_TEXT, return_tensors="pt").input_ids[:, :256]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(ws / "fitted_tiny", safe_serialization=True)
    tok.save_pretrained(ws / "fitted_tiny")


def _val_dataset(ws: Path, tiny: Path) -> None:
    from datasets import Dataset, DatasetDict

    rows = [{"id": "0", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}]
    DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(rows)}).save_to_disk(str(ws / "val_ds"))


SETUPS = {"sft_ds": _sft_dataset, "kd_ds": _kd_dataset, "fitted_tiny": _fitted_tiny, "val_ds": _val_dataset}

DRY = ["generate", "<cfg>", "--dry-run"]
TEMPLATE = DRY + ["generate.styles=[instruct]"]
NEW_DS = ["--out", "<ws>/new_ds"]
TRAIN = ["train", "<cfg>", "--out", "<ws>/student"]
COMPRESS = ["compress", "<cfg>", "--model", "<tiny>", "--out", "<ws>/compressed"]
EVALUATE = ["evaluate", "<cfg>", "--model", "<tiny>"]

ROWS = {
    # --- seed files (generate --dry-run: no teacher) -----------------------------------------------------
    "malformed_jsonl_line": Row(
        DRY + ["generate.seeds=<ws>/bad.jsonl"], 2, "<ws>/bad.jsonl:3: not valid JSON", "fix or remove the line",
        files={"bad.jsonl": _jsonl(SEEDS[:2] + ['{"id": "x", "instruction": "unterminated'])}),
    "seed_missing_instruction": Row(
        DRY + ["generate.seeds=<ws>/bad.jsonl"], 2, "<ws>/bad.jsonl:2: seed 'no-text'",
        "needs a non-empty 'instruction' or 'question'",
        files={"bad.jsonl": _jsonl([SEEDS[0], {"id": "no-text", "answer": "5"}])}),
    "seed_missing_id": Row(
        DRY + ["generate.seeds=<ws>/bad.jsonl"], 2, "<ws>/bad.jsonl:2: seed has no 'id'", "every seed needs a unique string id",
        files={"bad.jsonl": _jsonl([SEEDS[0], {"instruction": "What is 1 plus 1?"}])}),
    "duplicate_seed_ids": Row(
        DRY + ["generate.seeds=<ws>/bad.jsonl"], 2, "<ws>/bad.jsonl: duplicate seed id 'add-1' (rows 1 and 3)",
        "ids must be unique", files={"bad.jsonl": _jsonl(SEEDS[:2] + [SEEDS[0]])}),
    "empty_seed_file": Row(
        DRY + ["generate.seeds=<ws>/empty.jsonl"], 2, "<ws>/empty.jsonl: no seed rows found",
        "add at least one JSON object per line", files={"empty.jsonl": "\n\n"}),
    "seed_not_an_object": Row(
        DRY + ["generate.seeds=<ws>/bad.jsonl"], 2, "<ws>/bad.jsonl:1: a seed must be a JSON object, got list",
        "must be a JSON object", files={"bad.jsonl": _jsonl(["[1, 2]"])}),
    "seed_demos_malformed": Row(
        DRY + ["generate.seeds=<ws>/bad.jsonl"], 2, "<ws>/bad.jsonl:1: seed 'd': 'demos'",
        "must be a list of {input, output} objects",
        files={"bad.jsonl": _jsonl([{"id": "d", "instruction": "x", "demos": [{"input": "only"}]}])}),
    "seed_file_not_found": Row(
        DRY + ["generate.seeds=<ws>/no/such.jsonl"], 2, "seed file not found: <ws>/no/such.jsonl",
        "set generate.seeds to a JSONL file"),
    # --- the config ------------------------------------------------------------------------------------
    "unknown_config_key_override": Row(
        ["run", "<cfg>", "train.learning_rate=1"], 2, "<cfg>: train.learning_rate: unknown key",
        "remove it or check the spelling"),
    "unknown_config_key_in_file": Row(
        ["generate", "<ws>/typo.yaml", "--dry-run"], 2, "<ws>/typo.yaml: generate.num_demo: unknown key",
        "remove it or check the spelling", files={"typo.yaml": "generate: {seeds: <ws>/seeds.jsonl, num_demo: 3}\n"}),
    "wrong_type": Row(
        TRAIN + ["--dataset", "<ws>/sft_ds", "train.epochs=many"], 2, "<cfg>: train.epochs: Input should be a valid integer",
        "should be a valid integer", setup=("sft_ds",)),
    "out_of_range_value": Row(
        DRY + ["generate.validation_fraction=1.5"], 2, "<cfg>: generate.validation_fraction: Input should be less than 1",
        "should be less than 1"),
    "not_one_of_the_choices": Row(
        DRY + ["teacher.backend=tgi"], 2, "<cfg>: teacher.backend:", "Input should be 'vllm' or 'openai'"),
    "override_without_equals": Row(
        DRY + ["generate.limit"], 2, "override 'generate.limit'", "must look like key.sub=value"),
    "config_file_not_found": Row(
        ["run", "<ws>/no_such.yaml"], 2, "config file not found: <ws>/no_such.yaml", "pass a YAML file"),
    "inconsistent_fields": Row(
        DRY + ["generate.self_consistency.enabled=true"], 2, "<cfg>: generate: Value error, self_consistency.enabled",
        "needs sampling.n >= 2"),
    "cost_cap_without_prices": Row(
        DRY + ["teacher.max_cost_usd=5"], 2, "<cfg>: teacher: Value error, max_cost_usd needs prices",
        "set price_prompt_per_mtok"),
    "run_stage_unknown": Row(
        ["run", "<cfg>", "run.stages=[deploy]"], 2, "<cfg>: run.stages.0:", "Input should be 'generate', 'train', 'evaluate' or 'compress'"),
    "contamination_eval_file_missing": Row(
        ["generate", "<cfg>", "generate.filters.contamination.eval_paths=[<ws>/no_eval.jsonl]"] + NEW_DS, 2,
        "generate.filters.contamination.eval_paths: <ws>/no_eval.jsonl not found", "give JSONL or text files"),
    # --- templates -------------------------------------------------------------------------------------
    "missing_template": Row(
        TEMPLATE + ["generate.templates.instruct=<ws>/nope.jinja"], 2, "generate.templates.instruct: template '<ws>/nope.jinja' not found",
        "use one of icl, cot, instruct"),
    "template_syntax_error": Row(
        ["run", "<cfg>", "generate.templates.cot=<ws>/broken.jinja"], 2,
        "generate.templates.cot: <ws>/broken.jinja:3: template syntax error", "fix the Jinja syntax on that line",
        files={"broken.jinja": "{% block user %}\nQuestion:\n{{ instruction }\n{% endblock %}\n"}),
    "undefined_template_variable": Row(
        TEMPLATE + ["generate.templates.instruct=<ws>/undefined.jinja"], 2,
        "generate.templates: <ws>/undefined.jinja:3: undefined variable: 'question' is undefined",
        "use one of demos, input, instruction, task",
        files={"undefined.jinja": "{% block user %}\nAnswer briefly.\n{{ question }}\n{% endblock %}\n"}),
    "template_without_user_block": Row(
        TEMPLATE + ["generate.templates.instruct=<ws>/noblock.jinja"], 2, "<ws>/noblock.jinja: template must define",
        "{% block user %}", files={"noblock.jinja": "Answer: {{ instruction }}\n"}),
    "template_include_refused": Row(
        TEMPLATE + ["generate.templates.instruct=<ws>/include.jinja"], 2, "<ws>/include.jinja:1: {% include %} is not allowed",
        "paste the shared part into it", files={"include.jinja": "{% block user %}{% include 'secrets.txt' %}{% endblock %}\n"}),
    # --- the teacher's context (vllm backend: teacher.max_model_len) -----------------------------------------
    "prompt_longer_than_context_dry_run": Row(
        DRY + ["generate.seeds=<ws>/long.jsonl", "teacher.backend=vllm", "teacher.model=bundled", "teacher.max_model_len=128",
               "generate.styles=[instruct]", "generate.sampling.max_tokens=16"], 2,
        "<ws>/long.jsonl:2: seed 'long' (instruct prompt):", "raise teacher.max_model_len",
        files={"long.jsonl": _jsonl([SEEDS[0], LONG_SEED])}),
    "prompt_longer_than_context_run": Row(
        ["generate", "<cfg>", "generate.seeds=<ws>/long.jsonl", "teacher.backend=vllm", "teacher.model=bundled",
         "teacher.max_model_len=128", "generate.styles=[instruct]", "generate.sampling.max_tokens=16"] + NEW_DS, 2,
        "<ws>/long.jsonl:2: seed 'long' (instruct prompt):", "or shorten or drop the seed",
        files={"long.jsonl": _jsonl([SEEDS[0], LONG_SEED])}),
    # --- the teacher endpoint (openai backend) -----------------------------------------------------------
    "unreachable_base_url": Row(
        ["generate", "<cfg>", "generate.limit=2"] + NEW_DS, 1,
        "teacher.base_url: could not reach the teacher at http://127.0.0.1:9/v1", "start the server"),
    "wrong_api_key_401": Row(
        ["generate", "<cfg>", "teacher.base_url=<proxy>", "generate.limit=2"] + NEW_DS, 1,
        "answered 401 (wrong or missing API key)", "check teacher.base_url, teacher.model and $OPENAI_API_KEY",
        env={"OPENAI_API_KEY": "sk-wrong-key-0123456789abcdef"}, proxy={"api_key": "sk-right-key-fedcba9876543210"}),
    "model_not_served_404": Row(
        ["generate", "<cfg>", "teacher.base_url=<proxy>", "teacher.model=no-such-model", "generate.limit=2"] + NEW_DS, 1,
        "answered 404 (model or URL not found) for model 'no-such-model'", "check teacher.base_url, teacher.model",
        proxy={"rate": 1.0, "faults": ("404",)}),
    "api_key_not_set": Row(
        ["generate", "<cfg>", "teacher.base_url=https://teacher.invalid/v1", "teacher.api_key_env=EAKD_BAD_INPUT_TEST_KEY"]
        + NEW_DS, 2, "teacher.api_key_env: environment variable EAKD_BAD_INPUT_TEST_KEY is not set", "export it"),
    # --- output folders ------------------------------------------------------------------------------------
    "generate_out_holds_a_dataset": Row(
        ["generate", "<cfg>", "--out", "<ws>/earlier/dataset"], 2, "<ws>/earlier/dataset already holds a dataset",
        "remove it or choose another output folder"),
    "generate_without_out": Row(["generate", "<cfg>"], 2, "--out is required", "unless --dry-run"),
    "train_out_holds_a_student": Row(
        ["train", "<cfg>", "--dataset", "<ws>/sft_ds", "--out", "<ws>/earlier/student"], 2,
        "<ws>/earlier/student already holds a trained student", "remove it or choose another output folder",
        setup=("sft_ds",)),
    # --- train -----------------------------------------------------------------------------------------
    "train_dataset_not_a_dataset": Row(
        TRAIN + ["--dataset", "<ws>/seeds.jsonl"], 2, "<ws>/seeds.jsonl is not an eakd dataset", "run `eakd generate` first"),
    "tokenizer_mismatch_logit_kd": Row(
        TRAIN + ["--dataset", "<ws>/kd_ds", "train.kd.enabled=true"], 2,
        "train.kd: the student's tokenizer does not match the teacher's", "use sequence-level KD (train.kd.enabled=false)",
        setup=("kd_ds",)),
    "logit_kd_without_teacher_logprobs": Row(
        TRAIN + ["--dataset", "<ws>/sft_ds", "train.kd.enabled=true"], 2,
        "train.kd.enabled: <ws>/sft_ds split 'train' lacks teacher token ids/top-k logprobs",
        "generate with teacher.backend=vllm and generate.sampling.top_logprobs=K", setup=("sft_ds",)),
    "student_path_not_a_model": Row(
        TRAIN + ["--dataset", "<ws>/sft_ds", "train.student=<ws>/not_a_model"], 2,
        "<ws>/not_a_model is not a model folder: config.json is missing", "point at a folder with config.json",
        files={"not_a_model/README.md": "notes, not a model\n"}, setup=("sft_ds",)),
    "pickled_weights_folder": Row(
        ["run", "<cfg>", "train.student=<ws>/pickled"], 2, "<ws>/pickled holds pickled weights (pytorch_model.bin)",
        "Convert with `save_pretrained(..., safe_serialization=True)`",
        files={"pickled/config.json": "{}\n", "pickled/pytorch_model.bin": "\x80\x04 a pickle\n"}),
    # --- evaluate ----------------------------------------------------------------------------------------
    "evaluate_dataset_not_a_dataset": Row(
        EVALUATE + ["--dataset", "<ws>/seeds.jsonl", "--out", "<ws>/eval"], 2, "<ws>/seeds.jsonl is not an eakd dataset",
        "run `eakd generate` first"),
    "evaluate_dataset_without_validation": Row(
        EVALUATE + ["--dataset", "<ws>/sft_ds", "--out", "<ws>/eval"], 2, "<ws>/sft_ds has no validation split",
        "generate with generate.validation_fraction > 0", setup=("sft_ds",)),
    "evaluate_out_holds_an_evaluation": Row(
        EVALUATE + ["--dataset", "<ws>/sft_ds", "--out", "<ws>/earlier/eval"], 2,
        "<ws>/earlier/eval already holds an evaluation", "remove it or choose another output folder", setup=("sft_ds",)),
    "evaluate_model_missing": Row(
        ["evaluate", "<cfg>", "--model", "<ws>/no_model", "--dataset", "<ws>/val_ds", "--out", "<ws>/eval"], 2,
        "model path <ws>/no_model does not exist", "use 'bundled' or run `eakd models fetch`", setup=("val_ds",)),
    "evaluate_text_path_missing": Row(
        ["run", "<cfg>", "run.stages=[generate, evaluate]", "evaluate.text_path=<ws>/no_eval.txt"], 2,
        "evaluate.text_path: file not found: <ws>/no_eval.txt", "file not found"),
    "lm_eval_unknown_task": Row(
        EVALUATE + ["--dataset", "<ws>/val_ds", "--out", "<ws>/eval", "--lm-eval", "hellaswag"], 2,
        "evaluate.lm_eval.tasks: unknown lm-eval task 'hellaswag'",
        "add your own task YAMLs with evaluate.lm_eval.include_path", setup=("val_ds",)),
    "lm_eval_task_folder_missing": Row(
        EVALUATE + ["--dataset", "<ws>/val_ds", "--out", "<ws>/eval", "evaluate.lm_eval.include_path=<ws>/my_tasks",
                    "--lm-eval", "my_task"], 2,
        "evaluate.lm_eval.include_path: <ws>/my_tasks does not exist", "point it at a folder", setup=("val_ds",)),
    "evaluate_without_generate": Row(
        ["run", "<cfg>", "run.stages=[evaluate]"], 2, "run.stages: 'evaluate' scores the generated dataset's validation "
        "split", "use `eakd evaluate CONFIG --model DIR --dataset DIR --out DIR`"),
    # --- compress ----------------------------------------------------------------------------------------
    "pickle_file_as_weights": Row(
        ["compress", "<cfg>", "--model", "<ws>/weights.pkl", "--out", "<ws>/compressed"], 2,
        "model path <ws>/weights.pkl is a pickled weights file", "point at a model folder with config.json and *.safetensors",
        files={"weights.pkl": "\x80\x04 a pickle\n"}),
    "model_path_missing": Row(
        ["compress", "<cfg>", "--model", "<ws>/no_model", "--out", "<ws>/compressed"], 2,
        "model path <ws>/no_model does not exist", "use 'bundled' or run `eakd models fetch`"),
    "compression_ratio_out_of_range": Row(
        COMPRESS + ["compress.steps=[{method: svd, rank_ratio: 1.5}]"], 2, "<cfg>: compress.steps.0.rank_ratio:",
        "Input should be less than or equal to 1"),
    "sparsity_out_of_range": Row(
        COMPRESS + ["compress.steps=[{method: wanda, sparsity: 1.0}]"], 2, "<cfg>: compress.steps.0.sparsity:",
        "Input should be less than 1"),
    "nm_pattern_impossible": Row(
        COMPRESS + ["compress.steps=[{method: magnitude, nm: '4:2'}]"], 2, "compress step magnitude: nm",
        "must be N:M with 0 < N < M"),
    "quantization_not_last": Row(
        COMPRESS + ["compress.steps=[{method: rtn}, {method: magnitude}]"], 2, "compress.steps[0] (rtn)",
        "must be the last step"),
    "quality_gate_failed": Row(
        ["compress", "<cfg>", "--model", "<ws>/fitted_tiny", "--out", "<ws>/compressed",
         "compress.steps=[{method: magnitude, sparsity: 0.9, max_ppl_increase: 0.05}]"], 2,
        "quality gate: step 1 (01-magnitude) raised perplexity", "Loosen the gate", setup=("fitted_tiny",),
        new_ok=("compressed/summary.json",)),  # the stop is recorded; the earlier 01-magnitude is not replaced
}

_MISSING = object()


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` -> its bytes (None for a folder)."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _fill(text: str, subs: dict[str, str]) -> str:
    for key, value in subs.items():
        text = text.replace(key, value)
    return text


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input_is_one_line_names_where_and_fix_and_loses_nothing(name, tmp_path, tiny_model, monkeypatch,
                                                                       reliability):
    row = ROWS[name]
    ws = tmp_path / "ws"
    subs = {"<ws>": str(ws), "<cfg>": str(ws / "config.yaml"), "<tiny>": str(tiny_model),
            "<cache>": str(tmp_path / "cache" / "teacher.sqlite")}
    files = {"config.yaml": BASE_CONFIG, "seeds.jsonl": _jsonl(SEEDS), "eval.txt": EVAL_TEXT, **EARLIER, **row.files}
    for rel, text in files.items():
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_fill(text, subs))
    for name_ in row.setup:
        SETUPS[name_](ws, tiny_model)
    before = _tree(ws)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the CLI installs its redacting hook

    env = {"OPENAI_API_KEY": None, "EAKD_SECRETS_FILE": None, **row.env}
    if row.proxy is not None:
        from faultproxy import FaultProxy

        with FaultProxy("http://127.0.0.1:9", **{"rate": 0.0, **row.proxy}) as proxy:
            subs["<proxy>"] = proxy.base_url
            result = CliRunner().invoke(app, [_fill(a, subs) for a in row.cmd], env=env)
    else:
        result = CliRunner().invoke(app, [_fill(a, subs) for a in row.cmd], env=env)
    reliability["bad_inputs_tried"] += 1

    crash = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
    assert result.exception is None or isinstance(result.exception, SystemExit), crash
    shown = result.stderr[-3000:]
    assert result.exit_code == row.code, shown
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], shown  # one line, and nothing of it spills onto the next
    assert "Traceback" not in result.stderr + result.stdout
    line = errors[0]
    assert _fill(row.where, subs) in line, line
    assert _fill(row.fix, subs) in line, line
    for secret in row.env.values():  # a key the user gave never comes back in an error
        assert secret not in result.stderr + result.stdout

    after = _tree(ws)
    changed = sorted(k for k, v in before.items() if after.get(k, _MISSING) != v)
    assert not changed, f"changed or removed by a failed command: {changed}"
    added = sorted(set(after) - set(before) - set(row.new_ok))
    assert not added, f"written by a failed command: {added}"


@pytest.mark.integration
@pytest.mark.parametrize("case", ["401", "404"])
def test_teacher_refusals_on_a_real_server(case, vllm_server, tmp_path, tiny_model, monkeypatch, reliability):
    """The same refusals from vLLM's OpenAI server: an unknown model name (404), and a key the endpoint
    rejects (401: the fault proxy checks the key in front of the real server; the right key gets through)."""
    from faultproxy import FaultProxy

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "seeds.jsonl").write_text(_jsonl(SEEDS))
    (ws / "config.yaml").write_text(_fill(BASE_CONFIG, {"<ws>": str(ws), "<tiny>": str(tiny_model),
                                                        "<cache>": str(tmp_path / "cache.sqlite")}))
    for rel, text in EARLIER.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    before = _tree(ws)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    args = ["generate", str(ws / "config.yaml"), "generate.limit=1", "generate.styles=[instruct]",
            "generate.sampling.max_tokens=8", "--out", str(ws / "new_ds")]
    wrong, right = "sk-wrong-key-0123456789abcdef", "sk-right-key-fedcba9876543210"
    with FaultProxy(vllm_server.removesuffix("/v1"), rate=0.0, api_key=right) as proxy:
        if case == "401":
            args += [f"teacher.base_url={proxy.base_url}", "teacher.model=bundled"]
            env = {"OPENAI_API_KEY": wrong, "EAKD_SECRETS_FILE": None}
            where, fix = "answered 401 (wrong or missing API key)", "$OPENAI_API_KEY"
        else:
            args += [f"teacher.base_url={vllm_server}", "teacher.model=no-such-model"]
            env = {"OPENAI_API_KEY": None, "EAKD_SECRETS_FILE": None}
            where, fix = "answered 404 (model or URL not found) for model 'no-such-model'", "check teacher.base_url, teacher.model"
        result = CliRunner().invoke(app, args, env=env)
        reliability["bad_inputs_tried"] += 1
        assert result.exit_code == 1, result.stderr[-3000:]
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and where in errors[0] and fix in errors[0], result.stderr[-3000:]
        assert "Traceback" not in result.stderr and wrong not in result.stderr + result.stdout
        after = _tree(ws)
        assert all(after.get(k, _MISSING) == v for k, v in before.items()) and set(after) == set(before)
        if case == "401":  # control: the proxy lets the right key through to the real server
            ok = CliRunner().invoke(app, args, env={"OPENAI_API_KEY": right, "EAKD_SECRETS_FILE": None})
            assert ok.exit_code == 0, ok.stderr[-3000:]
            assert (ws / "new_ds" / "stats.json").is_file() and proxy.counts["answered"] >= 1
