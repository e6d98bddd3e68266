"""The run's spending cap (pure bookkeeping; the dispatch loops are covered by the integration tests)."""

import pytest
from pydantic import ValidationError

from distill.teacher.budget import Budget
from distill.teacher.query import TeacherConfig, TeacherRequest


def test_no_cap_means_no_budget():
    assert Budget.from_config(TeacherConfig()) is None


def test_token_cap_reserves_the_worst_case_and_settles_on_real_usage():
    b = Budget(max_tokens=100)
    assert b.try_reserve(20, 30) and b.try_reserve(20, 30)  # 100 reserved
    assert not b.try_reserve(1, 0) and not b.idle()  # full while both are in flight
    b.settle(20, 30, 18, 12)  # the answer used 30 of its 50
    assert b.spent_tokens == 30 and b.reserved_tokens == 50
    assert b.try_reserve(10, 10)  # the difference came back
    b.settle(20, 30, 0, 0)  # a request that failed costs nothing
    b.settle(10, 10, 10, 10)
    assert b.idle() and b.spent_tokens == 50 and b.to_dict()["spent_tokens"] == 50


def test_cost_cap_prices_prompt_and_completion_separately():
    cfg = TeacherConfig(backend="openai", base_url="http://127.0.0.1:1/v1", price_prompt_per_mtok=1.0,
                        price_completion_per_mtok=10.0, max_cost_usd=0.001)
    b = Budget.from_config(cfg)
    assert b.cost(100, 50) == pytest.approx((100 * 1.0 + 50 * 10.0) / 1e6)
    assert b.try_reserve(100, 50)  # $0.0006
    assert not b.try_reserve(100, 50)  # another $0.0006 would pass $0.001
    b.settle(100, 50, 100, 10)  # $0.0002 spent
    assert b.try_reserve(100, 50)
    assert "max_cost_usd=0.001" in b.describe() and b.spent_cost == pytest.approx(0.0002)


def test_a_request_larger_than_the_cap_is_refused_when_idle():
    b = Budget(max_tokens=10)
    assert not b.try_reserve(5, 16) and b.idle()


def test_cost_cap_without_prices_is_a_config_error():
    with pytest.raises(ValidationError, match="max_cost_usd needs prices"):
        TeacherConfig(max_cost_usd=5.0)


def test_default_repetition_penalty_keeps_old_cache_keys():
    base = dict(messages=[{"role": "user", "content": "hi"}], model="m", style="instruct", template="t", template_sha="s")
    r = TeacherRequest(**base)
    assert "repetition_penalty" not in r.canonical()
    assert TeacherRequest(**base, repetition_penalty=1.1).key() != r.key()
