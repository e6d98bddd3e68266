"""The generate stage: building the distillation dataset from seeds or a task file with the teacher.

Entry point: :func:`distill.data.dataset.generate_dataset`; its config is :class:`distill.data.config.GenerateConfig`
(torch-free). It owns seeds and task files (``seeds``, ``tasks``), demo selection (``demos``), the templates a run
renders (``templates``), Self-Instruct bootstrapping (``selfinstruct``), input synthesis (``synth``), replay of
general instructions (``replay``), filters, novelty and the LLM judge (``filters``, ``novelty``, ``judge``),
dataset versions (``versions``), the dry run (``dryrun``) and the dataset card (``card``).

May import: the shared core (``distill.config``, ``distill.answers``, ``distill.credentials``, ...), the teacher
client (``distill.teacher``) and ``prompts`` (``replay`` reads the IF suite of ``distill.probes``,
function-local); never ``distill.train``.
"""
