"""The served teacher's pure parts: vLLM's prompt_logprobs parsed and mapped onto the loss's labelled positions,
the config rules, and the error for a server that is not there (the server itself:
tests/integration/test_served_teacher.py)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from distill.net import free_port
from distill.teacher.scoring import ServedTeacher, parse_prompt_logprobs, score_key
from distill.teacher.types import TeacherUnavailable
from distill.train.batch_loss import collate
from distill.train.config import KDConfig
from distill.train.data import IGNORE
from distill.train.losses import kd_loss, topk_kd_loss
from distill.train.served import topk_at_labels


def _vllm_choice(teacher_logits: torch.Tensor, ids: list[int], k: int) -> dict:
    """A completions choice as vLLM writes it for prompt ``ids``: ``prompt_logprobs[t]`` is the top-k of the
    distribution of token ``t`` given tokens ``< t`` (the logits at ``t - 1``) plus token ``t`` itself, keys
    as strings."""
    entries: list = [None]
    for t in range(1, len(ids)):
        lp = torch.log_softmax(teacher_logits[t - 1].double(), -1)
        top = lp.topk(k).indices.tolist()
        keep = top + ([ids[t]] if ids[t] not in top else [])
        entries.append({str(i): {"logprob": float(lp[i]), "rank": 1 + top.index(i) if i in top else k + 9,
                                 "decoded_token": f"<{i}>"} for i in reversed(keep)})  # any key order
    return {"index": 0, "text": "x", "prompt_logprobs": entries}


def test_parsing_sorts_each_position_by_logprob_and_keeps_none_at_the_start():
    choice = {"prompt_logprobs": [None, {"7": {"logprob": -2.0, "rank": 2}, "3": {"logprob": -0.5, "rank": 1}},
                                  {"11": -0.1}]}
    assert parse_prompt_logprobs(choice) == [None, ([3, 7], [-0.5, -2.0]), ([11], [-0.1])]
    with pytest.raises(ValueError, match="no prompt_logprobs"):
        parse_prompt_logprobs({"text": "x"})


def test_full_vocab_scores_at_the_labelled_positions_give_the_dense_loss():
    """With k = V the top-k loss is the dense loss exactly; it only is if every position's scores land on the
    label the student predicts there (an off-by-one shift gives another value)."""
    torch.manual_seed(0)
    vocab, n = 12, 9
    ids = torch.randint(0, vocab, (n,)).tolist()
    labels = [IGNORE] * 4 + ids[4:]  # a 4-token prompt, then the answer
    teacher, student = torch.randn(n, vocab), torch.randn(n, vocab)
    positions = parse_prompt_logprobs(_vllm_choice(teacher, ids, vocab))
    top_ids, top_lps = topk_at_labels(positions, labels, vocab + 1)
    assert len(top_ids) == n - 4 and all(len(r) == vocab + 1 and r[-1] == -1 for r in top_ids)

    batch = collate([(ids, labels, top_ids, top_lps)], pad_id=0)
    targets = batch["labels"][0, 1:]
    keep = targets != IGNORE
    got = topk_kd_loss(student[:-1][keep][None], batch["topk_ids"][None], batch["topk_logprobs"][None],
                       targets[keep][None])
    want = kd_loss(student[None, :-1], teacher[None, :-1], targets[None])
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_top_k_keeps_the_labelled_token_and_pads_to_the_width():
    torch.manual_seed(1)
    ids, labels = [1, 2, 3, 4], [IGNORE, IGNORE, 3, 4]
    positions = parse_prompt_logprobs(_vllm_choice(torch.randn(4, 30), ids, 2))
    top_ids, top_lps = topk_at_labels(positions, labels, 3)
    for row, lps, t in zip(top_ids, top_lps, (3, 4)):
        assert t in row and (row[2] == -1) == (lps[2] == float("-inf"))
    with pytest.raises(ValueError, match="3 scored positions for a row of 4"):
        topk_at_labels(positions[:3], labels, 3)


def test_a_served_teacher_takes_top_k_methods_and_on_policy_but_no_full_vocab_divergence():
    kd = KDConfig(enabled=True, teacher="http://127.0.0.1:8000/v1", on_policy=0.5, method="reverse_kl")
    assert kd.served() and not KDConfig(teacher="bundled").served()
    with pytest.raises(ValidationError, match="a served teacher .* gives its top-20 only"):
        KDConfig(enabled=True, teacher="http://127.0.0.1:8000/v1", method="generalized_jsd")
    with pytest.raises(ValidationError, match="holds credentials") as err:  # never written to train_config.yaml
        KDConfig(enabled=True, teacher="http://user:sk-secret@127.0.0.1:8000/v1")
    assert "sk-secret" not in str(err.value)


def test_score_keys_depend_on_model_ids_and_k():
    assert score_key("m", [1, 2], 20) == score_key("m", [1, 2], 20)
    assert len({score_key("m", [1, 2], 20), score_key("m", [1, 2], 5), score_key("n", [1, 2], 20),
                score_key("m", [2, 1], 20)}) == 4


def test_an_unreachable_server_is_one_clear_error_with_the_url_redacted(tmp_path):
    url = f"http://user:hunter2@127.0.0.1:{free_port()}/v1"
    with pytest.raises(TeacherUnavailable) as err:
        ServedTeacher(url, 20, cache_path=tmp_path / "c.sqlite", max_retries=2)
    msg = str(err.value)
    assert msg.startswith("train.kd.teacher: no answer from http://127.0.0.1:") and "after 3 attempts" in msg
    assert "hunter2" not in msg and "eakd teacher serve" in msg


class _NotVllm:
    """An OpenAI-compatible server on 127.0.0.1 that is no vLLM: it lists a model, answers completions without
    prompt_logprobs, 503s the first ``busy`` requests and 400s a prompt_logprobs above 20 (vLLM's default cap)."""

    def __init__(self, busy: int = 0):
        from loopback import LoopbackApp

        self.busy, self.seen = busy, 0
        self.server = LoopbackApp(self._app)

    async def _app(self):
        from aiohttp import web

        async def handle(request):
            self.seen += 1
            if self.seen <= self.busy:
                return web.json_response({"error": "busy"}, status=503)
            if request.path.endswith("/models"):
                return web.json_response({"data": [{"id": "m"}]})
            if (await request.json()).get("prompt_logprobs", 0) > 20:
                return web.json_response({"error": {"message": "Requested prompt logprobs of 50 > 20"}}, status=400)
            return web.json_response({"choices": [{"index": 0, "text": "x", "logprobs": None}]})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    def __enter__(self) -> str:
        return f"http://127.0.0.1:{self.server.start()}/v1"

    def __exit__(self, *exc) -> None:
        self.server.stop()


def test_a_server_without_prompt_logprobs_or_with_a_lower_cap_is_refused_in_one_line(tmp_path):
    from distill.config import ConfigError

    with _NotVllm(busy=2) as url:
        teacher = ServedTeacher(url, 20, cache_path=tmp_path / "c.sqlite")
        assert teacher.model == "m" and teacher.retries == 2  # the 503s were retried
        with pytest.raises(ConfigError, match="returned no prompt_logprobs; served KD needs a vLLM server"):
            teacher.score([[1, 2, 3]])
        with pytest.raises(ConfigError, match="answered 400 .*--max-logprobs >= train.kd.served_top_k"):
            ServedTeacher(url, 50, cache_path=tmp_path / "c.sqlite").score([[1, 2, 3]])
