"""The evaluate stage's parts; the stage itself, and the names callers import, stay in :mod:`distill.evaluate`.

- ``config``: :class:`~distill.eval.config.EvaluateConfig`, what the stage measures (torch-free).
- ``perplexity``: the perplexity protocol, the text it is measured on, parameter counts.
- ``grading``: answers parsed as the dataset builder parsed the teacher's, graded against the gold; which
  validation rows are asked.
- ``measure``: every metric of one model (:func:`~distill.eval.measure.measure_model`).
- ``report``: the output folder: its check, ``eval.json`` and its companions written atomically, the README table
  and the model-card section.

May import: the shared core (``distill.config``, ``distill.models``, ``distill.io``, ``distill.answers``,
``distill.generation``), ``distill.train`` (``run``, ``card``), ``distill.probes`` and ``distill.lmeval``; never
:mod:`distill.evaluate` (which calls these and re-exports their public names), ``distill.data``, ``compress`` or
``flows``.
"""
