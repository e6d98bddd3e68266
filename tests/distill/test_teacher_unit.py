"""Pure parts of the teacher layer: request keys and the response cache (no engine here)."""

import dataclasses
import multiprocessing as mp

import pytest

from distill.teacher.cache import ResponseCache
from distill.teacher.query import TeacherConfig, TeacherRequest, TeacherResponse


def req(**kw):
    base = dict(messages=[{"role": "user", "content": "hi"}], model="m", style="instruct", template="instruct",
                template_sha="abc")
    return TeacherRequest(**(base | kw))


def test_key_covers_every_field():
    base = req()
    changes = {"messages": [{"role": "user", "content": "hi!"}], "model": "m2", "style": "cot", "template": "t",
               "template_sha": "def", "temperature": 0.5, "top_p": 0.9, "max_tokens": 1, "n": 2, "seed": 1,
               "stop": ["x"], "top_logprobs": 5, "repetition_penalty": 1.2,
               "json_schema": {"type": "object"}}
    assert set(changes) == {f.name for f in dataclasses.fields(TeacherRequest)}
    keys = {base.key()} | {dataclasses.replace(base, **{k: v}).key() for k, v in changes.items()}
    assert len(keys) == len(changes) + 1


def test_key_is_stable_and_order_independent():
    assert req().key() == req().key()
    a = req(messages=[{"role": "user", "content": "x"}])
    b = req(messages=[{"content": "x", "role": "user"}])
    assert a.key() == b.key()


def test_api_key_never_in_request_or_config_dump(monkeypatch):
    monkeypatch.setenv("MY_SECRET_KEY", "sk-very-secret")
    cfg = TeacherConfig(backend="openai", base_url="https://example.invalid/v1", api_key_env="MY_SECRET_KEY")
    assert "sk-very-secret" not in cfg.model_dump_json()
    assert "sk-very-secret" not in req().canonical()


def test_cache_round_trip(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    r = TeacherResponse(key="k1", choices=[], prompt_tokens=3, completion_tokens=4, engine="vllm", model="m")
    cache.put("k1", r.to_dict())
    got = cache.get_many(["k1", "k2"])
    assert list(got) == ["k1"]
    assert TeacherResponse.from_dict(got["k1"]).completion_tokens == 4


def _writer(path, start):
    cache = ResponseCache(path)
    for i in range(start, start + 200):
        cache.put(f"k{i}", {"i": i})
    cache.close()


def test_cache_concurrent_writers(tmp_path):
    path = tmp_path / "c.sqlite"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, s)) for s in (0, 200, 400, 600)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert len(ResponseCache(path)) == 800


def test_cache_setup_retries_an_immediate_busy_answer():
    """SQLite can answer 'database is locked' to the WAL switch at once, without its busy handler, while
    another process opens the same new file (seen in CI); set-up retries it, other errors pass through."""
    import sqlite3

    from distill.teacher.cache import _retry_busy

    class Flaky:
        def __init__(self, fails, msg="database is locked"):
            self.fails, self.msg, self.calls = fails, msg, 0

        def execute(self, sql):
            self.calls += 1
            if self.calls <= self.fails:
                raise sqlite3.OperationalError(self.msg)

    conn = Flaky(3)
    _retry_busy(conn, "PRAGMA journal_mode=WAL")
    assert conn.calls == 4
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        _retry_busy(Flaky(1, "no such table: x"), "SELECT 1")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _retry_busy(Flaky(10**6), "PRAGMA journal_mode=WAL", seconds=0.05)


def test_a_teacher_that_stays_down_ends_the_run_instead_of_trickling_probes(monkeypatch, tmp_path):
    """Every replica refusing connections: after DEAD_STREAK pauses the waiting requests are failed
    unsent (a rerun resends them), not probed one per 30 s pause with all their retries."""
    import distill.teacher.openai_backend as backend
    from distill.teacher.query import TeacherStats, query_teacher
    from distill.teacher.serve import free_port

    monkeypatch.setattr(backend, "DEAD_STREAK", 3)  # pauses 0.5 + 1 + 2 s
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    cfg = TeacherConfig(backend="openai", model="bundled", base_url=dead[0], base_urls=dead[1:], max_retries=5,
                        max_concurrency=4, cache_path=str(tmp_path / "c.sqlite"))
    reqs = [TeacherRequest(messages=[{"role": "user", "content": f"q{i}"}], model="bundled", style="if", template="t",
                           template_sha="x") for i in range(300)]
    stats = TeacherStats()
    out = query_teacher(reqs, cfg, stats)
    assert len(out) == 300 and all(r.error and r.error.startswith("connection") for r in out)
    unsent = [r for r in out if "not sent" in r.error]
    assert len(unsent) > 250, "most requests should be failed without being sent once both replicas are down"
    assert sum(r.attempts for r in out) < 100, "a down teacher was probed request by request"


def test_pool_serves_waiters_by_schedule_rank_not_arrival():
    """A follower released by its leader's answer takes the next slot ahead of later groups' leaders that
    queued earlier; a cancelled waiter leaves the queue without stalling the others."""
    import asyncio

    import openai

    from distill.teacher.openai_backend import _Pool, _Replica
    from distill.teacher.schedule import AdaptiveLimit

    async def scenario() -> list[int]:
        client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="x")  # never called
        replica = _Replica("http://127.0.0.1:9/v1", client, AdaptiveLimit(2))
        pool = _Pool([replica])
        served: list[int] = []
        held = [await pool.acquire(0, 0), await pool.acquire(1, 4)]  # two leaders hold both slots
        assert held == [replica, replica] and replica.inflight == 2

        async def waiter(rank: int) -> None:
            await pool.acquire(None, rank)
            served.append(rank)

        tasks = {rank: asyncio.ensure_future(waiter(rank)) for rank in (8, 12, 16)}  # later leaders queue first
        await asyncio.sleep(0)
        tasks[1] = asyncio.ensure_future(waiter(1))  # then group 0's followers, released by their leader
        tasks[2] = asyncio.ensure_future(waiter(2))
        await asyncio.sleep(0)
        tasks[12].cancel()
        for _ in range(4):
            await pool.release(replica)
            for _ in range(5):
                await asyncio.sleep(0)
        await asyncio.gather(*(t for r, t in tasks.items() if r != 12))
        await client.close()
        assert not pool.waiting
        return served

    assert asyncio.run(scenario()) == [1, 2, 8, 16]
