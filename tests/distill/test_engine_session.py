"""distill.teacher.engine: which calls share an engine (the engine itself is tested in
tests/integration/test_vllm_inprocess.py)."""

import threading

from distill.teacher import engine
from distill.teacher.types import TeacherConfig


def test_engine_key_holds_what_builds_the_engine_and_not_what_a_job_chooses(bundled_dir, tmp_path):
    cfg = TeacherConfig(backend="vllm", model="bundled", cache_path=str(tmp_path / "a.sqlite"), max_model_len=1024)
    same = cfg.model_copy(update={"cache_path": str(tmp_path / "b.sqlite"), "batch_size": 3, "structured_retries": 5,
                                  "prefix_scheduling": not cfg.prefix_scheduling})
    assert engine.engine_key(same) == engine.engine_key(cfg)
    for change in ({"max_model_len": 512}, {"dtype": "bfloat16"}, {"enforce_eager": not cfg.enforce_eager},
                   {"kv_cache_gib": cfg.kv_cache_gib + 1}):
        assert engine.engine_key(cfg.model_copy(update=change)) != engine.engine_key(cfg), change


def test_sessions_nest_into_the_outermost_and_belong_to_their_thread():
    assert engine._session() is None
    seen = []
    with engine.engine_session():
        outer = engine._session()
        with engine.engine_session():
            assert engine._session() is outer  # the inner block uses (and does not close) the outer's engines
        assert engine._session() is outer
        thread = threading.Thread(target=lambda: seen.append(engine._session()))
        thread.start()
        thread.join()
    assert seen == [None]  # another thread's calls start their own engines
    assert engine._session() is None
