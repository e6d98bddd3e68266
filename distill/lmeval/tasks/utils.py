"""Document hooks for eakd's shipped lm-eval tasks (referenced from the YAMLs as ``!function utils.<name>``;
lm-eval imports this file by path, so it imports nothing from eakd)."""


def gsm8k_docs(dataset):
    """Give each row its eakd seed id (``gsm8k-<line>``, 1-based, as distill.data.seeds names GSM8K rows) and put the
    file's last rows first: generation takes seeds from the head, so a ``limit`` scores the tail."""
    dataset = dataset.map(lambda doc, i: {"id": f"gsm8k-{i + 1}"}, with_indices=True)
    return dataset.select(range(len(dataset) - 1, -1, -1))


def demo_icl_docs(dataset):
    return dataset.filter(lambda doc: doc["style"] == "icl")


def demo_cot_docs(dataset):
    return dataset.filter(lambda doc: doc["style"] == "cot")
