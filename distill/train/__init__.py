"""The train stage: distilling the student from the dataset.

Entry point: :func:`distill.train.run.train_student`; its config is :class:`distill.train.config.TrainConfig`
(torch-free). It owns row encoding (``data``; ``encode``: a dataset's splits -> rows for the configured loss),
the training loop (``loop``: one run as named phases; ``batches``: length-grouped and on-policy batches;
``batch_loss``: a micro-batch's loss terms; ``distributed``: the process group; ``outputs``: the saved student),
the KD losses (``losses``, ``xtok_losses``), rows scored by a served teacher (``served``), cross-tokenizer
alignment and training (``xtok_align``, ``xtok_train``), checkpoints (``checkpoint``), multi-process launch
(``launch``), Born-Again generations (``born_again``) and the student's card (``card``).

May import: the shared core (``distill.config``, ``distill.models``, ``distill.io``, ``distill.logprobs``, ...);
never ``distill.data``, and of ``distill.teacher`` only ``scoring`` (a served teacher's HTTP client, which
imports nothing of ``distill.train``).
"""
