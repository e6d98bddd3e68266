"""The teacher client: every request to the teacher model goes through here.

Entry point: :func:`distill.teacher.query.query_teacher` (the dispatcher). It owns the request/response contracts
(``types``, torch-free), the two backends (``vllm_backend``: in-process vLLM in a child process;
``openai_backend``: any OpenAI-compatible server), batch-API submission (``batch``), the content-addressed response
cache (``cache``), prefix-aware scheduling and token counts (``schedule``), the spending cap (``budget``),
structured outputs (``structured``), the context-window check (``context``) and the local vLLM server (``serve``).

May import: the shared core (``distill.config``, ``distill.models``, ``distill.credentials``, ``distill.logprobs``)
and ``prompts``; never ``distill.data`` or ``distill.train``.
"""
