"""The pipeline's stage plumbing without a teacher: the stage list and its order, the evaluate stage's cache
key and preflight checks, what ``_pipeline_body`` hands each stage flow (stage flows stubbed), and the real
``evaluate_student`` flow on a tiny model through Prefect's cache (completed, cached, rerun on a config change)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.config import ConfigError, load_config
from flows.config import PipelineConfig, preflight


def _cfg(tmp_path: Path, **sections) -> PipelineConfig:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"id": "a", "instruction": "What is 1 plus 1?", "answer": "2"}\n')
    return PipelineConfig.model_validate({"generate": {"seeds": str(seeds)}, **sections})


def test_evaluate_key_follows_the_files_lm_eval_reads(tmp_path, monkeypatch):
    from flows.stage_keys import evaluate_key

    own = tmp_path / "own_tasks"
    own.mkdir()
    (own / "mine.yaml").write_text("task: mine\n")
    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    monkeypatch.setenv("EAKD_DATA_DIR", str(tmp_path / "data"))

    def key(tasks):
        cfg = _cfg(tmp_path, evaluate={"lm_eval": {"tasks": tasks, "include_path": [str(own)]}})
        return evaluate_key(cfg, "train-key", "generate-key", "held-out text")

    first = key(["mine"])
    (own / "mine.yaml").write_text("task: mine\nnum_fewshot: 2\n")  # the user's task file alone
    assert key(["mine"]) != first
    mine_now, gsm = key(["mine"]), key(["eakd_gsm8k"])
    (data / "train.jsonl").write_text('{"question": "2+2?", "answer": "#### 4"}\n')  # the data file alone
    assert key(["mine"]) == mine_now  # a task that does not read it keeps its key
    assert key(["eakd_gsm8k"]) != gsm


def _fake_model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_default_stages_run_evaluate_between_train_and_compress(tmp_path, repo_root):
    cfg = _cfg(tmp_path)
    assert cfg.run.stages == ["generate", "train", "evaluate", "compress"]
    assert cfg.evaluate.baseline and cfg.evaluate.max_examples == 32 and cfg.evaluate.text_path is None
    demo = load_config(PipelineConfig, repo_root / "flows" / "configs" / "demo.yaml")
    assert demo.run.stages == ["generate", "train", "evaluate", "compress"]
    # the demo stays fast on CPU: its 28 held-out items (24 one-line icl answers, 4 cot answers of <= 96 tokens)
    assert demo.evaluate.max_examples <= 32 and demo.evaluate.max_new_tokens <= 128
    with pytest.raises(ConfigError, match="'generate', 'train', 'evaluate' or 'compress'"):
        load_config(PipelineConfig, None, [f"generate.seeds={tmp_path}/seeds.jsonl", "run.stages=[deploy]"])
    with pytest.raises(ConfigError, match="evaluate.max_exampels: unknown key"):
        load_config(PipelineConfig, None, [f"generate.seeds={tmp_path}/seeds.jsonl", "evaluate.max_exampels=3"])


def test_evaluate_key_follows_its_inputs_and_nothing_else(tmp_path):
    from flows.stage_keys import evaluate_key

    cfg = _cfg(tmp_path)
    key = evaluate_key(cfg, "train-key", "generate-key", "held-out text")
    assert key == evaluate_key(_cfg(tmp_path), "train-key", "generate-key", "held-out text")  # stable
    changed = [
        evaluate_key(_cfg(tmp_path, evaluate={"max_examples": 8}), "train-key", "generate-key", "held-out text"),
        evaluate_key(_cfg(tmp_path, evaluate={"baseline": False}), "train-key", "generate-key", "held-out text"),
        evaluate_key(_cfg(tmp_path, evaluate={"max_new_tokens": 64}), "train-key", "generate-key", "held-out text"),
        evaluate_key(cfg, "another-train-key", "generate-key", "held-out text"),  # a new student
        evaluate_key(cfg, "train-key", "another-generate-key", "held-out text"),  # a new validation split
        evaluate_key(cfg, "train-key", "generate-key", "other text"),  # a new perplexity text
    ]
    assert len({key, *changed}) == 1 + len(changed)
    # other stages' settings do not invalidate the evaluation
    assert evaluate_key(_cfg(tmp_path, compress={"chain": False}), "train-key", "generate-key", "held-out text") == key


def test_preflight_checks_the_evaluate_stage(tmp_path):
    model = _fake_model(tmp_path / "student")
    ok = _cfg(tmp_path, run={"stages": ["generate", "evaluate"]}, train={"student": str(model)})
    preflight(ok)
    with pytest.raises(ConfigError, match="evaluate.text_path: file not found: .*nope.txt"):
        preflight(_cfg(tmp_path, run={"stages": ["generate", "evaluate"]}, train={"student": str(model)},
                       evaluate={"text_path": str(tmp_path / "nope.txt")}))
    with pytest.raises(ConfigError, match="'evaluate' scores the generated dataset's validation split"):
        preflight(_cfg(tmp_path, run={"stages": ["evaluate"]}, train={"student": str(model)}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is not a model folder"):
        preflight(_cfg(tmp_path, run={"stages": ["generate", "evaluate"]}, train={"student": str(tmp_path / "empty")}))


@pytest.fixture
def stubbed_flows(monkeypatch):
    """Replace the four stage flows with recorders; returns the list of (stage, args) calls."""
    import prefect.artifacts

    import flows.pipeline as fp

    calls: list[tuple[str, tuple]] = []

    def stub(stage: str, path: str):
        def run(*args):
            calls.append((stage, args))
            return {"path": path, "cached": False, "key": f"{stage}-key"}
        return run

    monkeypatch.setattr(fp, "generate_flow", stub("generate", "/runs/x/dataset"))
    monkeypatch.setattr(fp, "train_flow", stub("train", "/runs/x/student"))
    monkeypatch.setattr(fp, "evaluate_flow", stub("evaluate", "/runs/x/eval"))
    monkeypatch.setattr(fp, "compress_flow", stub("compress", "/runs/x/compressed"))
    monkeypatch.setattr(fp, "_publish", lambda *a, **k: None)
    monkeypatch.setattr(prefect.artifacts, "create_link_artifact", lambda *a, **k: None)
    return calls


def test_pipeline_runs_evaluate_after_train_with_the_base_model(tmp_path, stubbed_flows):
    from flows.pipeline import _pipeline_body

    base = _fake_model(tmp_path / "base")
    cfg = _cfg(tmp_path, train={"student": str(base)})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _pipeline_body(cfg, run_dir, refresh=False)
    assert [stage for stage, _ in stubbed_flows] == ["generate", "train", "evaluate", "compress"]
    ev_args = dict(stubbed_flows)["evaluate"]
    # cfg_json, model, upstream key, base model, dataset, dataset key, run dir, refresh
    assert ev_args[1:] == ("/runs/x/student", "train-key", str(base), "/runs/x/dataset", "generate-key", str(run_dir), False)
    assert dict(stubbed_flows)["compress"][1] == "/runs/x/student"  # compress still starts from the student
    timings = json.loads((run_dir / "timings.json").read_text())
    assert list(timings) == ["generate", "train", "evaluate", "compress"]
    assert all(t["status"] == "completed" for t in timings.values())
    report = json.loads((run_dir / "report.json").read_text())  # no eval/ written by the stubs: no section, no crash
    assert "evaluate" not in report and list(report["stages"]) == list(timings)

    stubbed_flows.clear()
    _pipeline_body(_cfg(tmp_path, train={"student": str(base)}, evaluate={"baseline": False}), run_dir, refresh=True)
    assert dict(stubbed_flows)["evaluate"][3] is None  # no base model to compare with
    assert dict(stubbed_flows)["evaluate"][-1] is True  # --refresh reaches the stage


def test_the_trained_students_model_card_records_its_evaluation(tmp_path, stubbed_flows, monkeypatch):
    import flows.pipeline as fp
    from distill.evaluate import CARD_BEGIN

    student, evaluation = tmp_path / "student", tmp_path / "eval"
    student.mkdir()
    evaluation.mkdir()
    (student / "README.md").write_text("# student\n\nTrained by eakd.\n")
    measured = {"perplexity": {"perplexity": 12.5}, "validation": {"loss": 0.75, "top1_agreement": 0.6, "kl_topk": 0.3},
                "accuracy": {"accuracy": 0.25}}
    ev = {"model": str(student), "dataset": "/runs/x/dataset", "eval_text_source": "held-out text",
          "eakd_version": "test", "created": "now", "base": None, "student": measured}
    (evaluation / "eval.json").write_text(json.dumps(ev))

    def stub(stage, path):
        return lambda *args: {"path": str(path), "cached": False, "key": f"{stage}-key"}

    monkeypatch.setattr(fp, "train_flow", stub("train", student))
    monkeypatch.setattr(fp, "evaluate_flow", stub("evaluate", evaluation))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    base = _fake_model(tmp_path / "base")
    fp._pipeline_body(_cfg(tmp_path, train={"student": str(base)}), run_dir, refresh=False)
    card = (student / "README.md").read_text()
    assert card.startswith("# student\n\nTrained by eakd.") and card.count(CARD_BEGIN) == 1
    assert "| perplexity | 12.5 |" in card and "| task accuracy | 0.25 |" in card
    ev["student"]["accuracy"]["accuracy"] = 0.5  # a later evaluation replaces the section, keeps the rest
    (evaluation / "eval.json").write_text(json.dumps(ev))
    fp._pipeline_body(_cfg(tmp_path, train={"student": str(base)}), run_dir, refresh=False)
    card = (student / "README.md").read_text()
    assert card.count(CARD_BEGIN) == 1 and "| task accuracy | 0.5 |" in card and "0.25" not in card
    assert card.startswith("# student\n\nTrained by eakd.") and not list(student.glob(".README*"))
    assert not (base / "README.md").exists() or CARD_BEGIN not in (base / "README.md").read_text()


def test_without_train_evaluate_measures_train_student_itself(tmp_path, stubbed_flows):
    from flows.pipeline import _pipeline_body

    student = _fake_model(tmp_path / "student")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _pipeline_body(_cfg(tmp_path, run={"stages": ["generate", "evaluate"]}, train={"student": str(student)}), run_dir, False)
    assert [stage for stage, _ in stubbed_flows] == ["generate", "evaluate"]
    _, model, upstream, base, dataset, dataset_key, _, _ = dict(stubbed_flows)["evaluate"]
    assert (model, upstream, base, dataset, dataset_key) == (str(student), None, None, "/runs/x/dataset", "generate-key")
    with pytest.raises(ConfigError, match="'evaluate' needs 'generate'"):
        _pipeline_body(_cfg(tmp_path, run={"stages": ["evaluate"]}, train={"student": str(student)}), run_dir, False)


@pytest.fixture
def prefect_api():
    """Prefect's temporary local API for this test, stopped at its end, after its queued logs and events are
    sent (at interpreter exit Prefect would log into pytest's closed capture stream and to a stopped API)."""
    yield
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    APILogWorker.drain_all(timeout=10)  # send what is queued while the API still answers
    EventsWorker.drain_all(timeout=10)
    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()


def test_evaluate_flow_is_cached_and_reruns_when_its_config_changes(tiny_model, sft_dataset, tmp_path, prefect_api):
    """The real flow and task on Prefect's local API: an unchanged rerun is `cached` and links to the first
    evaluation; a changed evaluate section runs again."""
    from flows.pipeline import evaluate_flow

    text = tmp_path / "heldout.txt"
    text.write_text("The cat sat on the mat. " * 40)
    evaluate = {"text_path": str(text), "window": 16, "max_windows": 2, "max_new_tokens": 4, "dtype": "float32"}

    def run(name: str, **changes) -> dict:
        cfg = _cfg(tmp_path, train={"student": str(tiny_model)}, evaluate=evaluate | changes)
        (tmp_path / name).mkdir()
        return evaluate_flow(cfg.model_dump_json(), str(tiny_model), None, None, str(sft_dataset), None,
                             str(tmp_path / name))

    first = run("run1")
    assert not first["cached"] and (Path(first["path"]) / "eval.json").is_file()
    again = run("run2")
    assert again["cached"] and again["key"] == first["key"] and again["path"] == first["path"]
    assert (tmp_path / "run2" / "eval").is_symlink() and (tmp_path / "run2" / "eval" / "eval.json").is_file()
    changed = run("run3", max_windows=1)
    assert not changed["cached"] and changed["key"] != first["key"]
    ev = json.loads((tmp_path / "run3" / "eval" / "eval.json").read_text())
    assert ev["student"]["perplexity"]["windows"] == 1 and ev["student"]["accuracy"]["accuracy"] is None


def test_stage_flows_keep_library_prints_out_of_the_run_log(prefect_api, caplog):
    """A `datasets` fingerprint (dill disassembles a function into a redirected stdout) inside a flow with the
    stages' setting logs no bytecode; with Prefect's log_prints on (the control) it does, which the demo's log
    showed after every dataset write. One Prefect API for both."""
    import logging

    import pyarrow as pa
    from datasets.fingerprint import Hasher
    from prefect import flow

    from flows import pipeline

    stages = (pipeline.generate_flow, pipeline.train_flow, pipeline.evaluate_flow, pipeline.compress_flow,
              pipeline.pipeline)
    assert {f.log_prints for f in stages} == {pipeline.LOG_PRINTS}

    def logged(log_prints: bool) -> str:
        @flow(name="fingerprint", log_prints=log_prints)
        def fingerprint() -> str:
            return Hasher.hash(pa.table({"a": [1, 2]}))

        caplog.clear()
        with caplog.at_level(logging.INFO):
            fingerprint()
        return caplog.text

    assert "LOAD_GLOBAL" not in logged(pipeline.LOG_PRINTS)
    assert "LOAD_GLOBAL" in logged(True)
