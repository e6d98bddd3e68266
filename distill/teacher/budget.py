"""A run's spending cap on the teacher: ``teacher.max_tokens_total`` and/or ``teacher.max_cost_usd``.

Written by hand because the limit has to sit inside eakd's own dispatch loops (the async HTTP sender
and the vLLM batch loop); no client library offers a run-wide cap that reserves before sending.

Before a request goes out, its worst case is reserved: estimated prompt tokens plus ``n * max_tokens``
completion tokens (priced when prices are configured). A request whose worst case no longer fits is
not sent. When an answer arrives the reservation is replaced by the real usage. So the tokens paid in
a run never pass the cap, except by the error of the prompt estimate (~4 characters per token).

Only tokens paid in this run count: answers from the response cache are free, so a run stopped by
the cap resumes by re-running the same command with a higher cap (or none).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


def worst_case(r, structured_retries: int = 0, tokenizer=None) -> tuple[int, int]:
    """(prompt tokens, most completion tokens) a :class:`~distill.teacher.query.TeacherRequest` can cost.

    The prompt is counted exactly with ``tokenizer``'s chat template when one is given, else estimated
    (~4 characters per token). A structured request sampled at temperature > 0 may be asked again:
    its re-asks are included."""
    from distill.teacher.schedule import chat_token_count, estimate_tokens

    asks = 1 + (structured_retries if r.json_schema is not None and r.temperature > 0 else 0)
    completion = r.max_tokens * r.n
    prompt = estimate_tokens(r.messages, r.max_tokens, r.n) - completion
    if tokenizer is not None:
        try:
            prompt = chat_token_count(tokenizer, r.messages)
        except Exception:  # noqa: BLE001 - a template quirk only costs precision here
            pass
    return prompt * asks, completion * asks


@dataclass
class Budget:
    max_tokens: int | None = None  # prompt + completion tokens paid in this run
    max_cost_usd: float | None = None
    price_prompt_per_mtok: float = 0.0
    price_completion_per_mtok: float = 0.0
    spent_prompt: int = 0
    spent_completion: int = 0
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    refused: int = 0  # requests not sent because their worst case did not fit
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def from_config(cls, cfg) -> Budget | None:
        """The cap a :class:`~distill.teacher.query.TeacherConfig` asks for (None when it sets none)."""
        if cfg.max_tokens_total is None and cfg.max_cost_usd is None:
            return None
        return cls(max_tokens=cfg.max_tokens_total, max_cost_usd=cfg.max_cost_usd,
                   price_prompt_per_mtok=cfg.price_prompt_per_mtok or 0.0,
                   price_completion_per_mtok=cfg.price_completion_per_mtok or 0.0)

    def cost(self, prompt: int, completion: int) -> float:
        return (prompt * self.price_prompt_per_mtok + completion * self.price_completion_per_mtok) / 1e6

    @property
    def spent_tokens(self) -> int:
        return self.spent_prompt + self.spent_completion

    @property
    def spent_cost(self) -> float:
        return self.cost(self.spent_prompt, self.spent_completion)

    def try_reserve(self, prompt_est: int, completion_max: int) -> bool:
        """Reserve a request's worst case; False (and nothing reserved) when it would pass the cap now.

        A refusal is final only when nothing is reserved (:meth:`idle`): answers in flight usually use
        less than their worst case and give the difference back."""
        tokens, cost = prompt_est + completion_max, self.cost(prompt_est, completion_max)
        with self._lock:
            if self.max_tokens is not None and self.spent_tokens + self.reserved_tokens + tokens > self.max_tokens:
                return False
            if self.max_cost_usd is not None and self.spent_cost + self.reserved_cost + cost > self.max_cost_usd + 1e-12:
                return False
            self.reserved_tokens += tokens
            self.reserved_cost += cost
            return True

    def idle(self) -> bool:
        """Nothing reserved: no answer in flight could free room for a refused request."""
        with self._lock:
            return self.reserved_tokens == 0 and abs(self.reserved_cost) < 1e-12

    def settle(self, prompt_est: int, completion_max: int, prompt: int, completion: int) -> None:
        """Replace a reservation by what the answer really used (0, 0 for a request that failed)."""
        with self._lock:
            self.reserved_tokens -= prompt_est + completion_max
            self.reserved_cost -= self.cost(prompt_est, completion_max)
            self.spent_prompt += prompt
            self.spent_completion += completion

    def describe(self) -> str:
        caps = []
        if self.max_tokens is not None:
            caps.append(f"{self.spent_tokens} of max_tokens_total={self.max_tokens} tokens")
        if self.max_cost_usd is not None:
            caps.append(f"${self.spent_cost:.4f} of max_cost_usd={self.max_cost_usd}")
        return "spent " + " and ".join(caps)

    def to_dict(self) -> dict:
        return {"max_tokens_total": self.max_tokens, "max_cost_usd": self.max_cost_usd,
                "spent_tokens": self.spent_tokens, "spent_cost_usd": round(self.spent_cost, 6),
                "requests_refused": self.refused}
