"""Train a LoRA student with TRL's SFTTrainer or GKDTrainer (lambda = 0) and time the training loop.

The peer half of ``bench/distill_trl.py``; runs inside the TRL venv (see ``setup_trl.sh``) and imports
nothing from eakd. It reads a JSON spec and writes a JSON result.

Spec: ``{"mode": "sft" | "gkd", "model": DIR, "teacher": DIR (gkd), "rows": [messages, ...], "batch_size",
"steps", "lr", "warmup_steps", "max_length", "seed", "beta" (gkd), "lora": {"r", "alpha", "dropout",
"target_modules"}}``. Rows are fed in the given order (``train_sampling_strategy="sequential"``), so the
caller decides the batches: ``batch_size`` consecutive rows make one optimizer step.

* ``sft``: ``SFTTrainer`` on conversational prompt-completion rows (``prompt`` = every message but the last,
  ``completion`` = the final assistant message), tokenized by TRL through the chat template, loss on the
  completion only (``completion_only_loss``; TRL 1.16's ``assistant_only_loss`` refuses SmolLM2's chat
  template, which has no ``{% generation %}`` markers and which TRL cannot patch); no packing, no gradient
  checkpointing.
* ``gkd``: ``trl.experimental.gkd.GKDTrainer`` with ``lmbda=0`` (every batch is the dataset's own answer,
  no student sampling), ``seq_kd=False``, generalized JSD with ``beta`` on the assistant tokens, the
  teacher loaded here in fp32 and run under no-grad by the trainer.

Both: fp32 on CPU, LoRA via ``peft_config``, cosine schedule after ``warmup_steps`` of linear warmup,
gradient clipping at 1.0, no evaluation, no checkpoints (``save_strategy="no"``), no hub, ``report_to``
none. ``seconds`` spans ``on_train_begin`` .. ``on_train_end`` (the training loop only, not loading or
data preparation). ``tokens`` is transformers' ``num_input_tokens_seen`` with ``"non_padding"``: the
``attention_mask`` sum of every batch the loop trained on — the quantity eakd's ``metrics.json`` counts.
``peak_rss_mib`` is this process's ``ru_maxrss`` at the end (loading included).

Run: ``VENV/bin/python bench/peers/trl_train.py SPEC.json RESULT.json``
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def fifth_means(losses: list[float]) -> tuple[float, float]:
    """Mean loss over the first and the last fifth of the steps (eakd's ``loss_first``/``loss_last``)."""
    n = max(1, len(losses) // 5)
    return sum(losses[:n]) / n, sum(losses[-n:]) / n


def main() -> int:
    spec_path, result_path = sys.argv[1], sys.argv[2]
    spec = json.load(open(spec_path))
    from importlib.metadata import version

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed

    class LoopClock(TrainerCallback):
        """Times the training loop and keeps each step's loss and running token count."""

        def __init__(self):
            self.start = self.end = 0.0
            self.logs: list[dict] = []

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.end = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.logs.append({"step": state.global_step, "loss": logs["loss"],
                                  "tokens_seen": state.num_input_tokens_seen})

    set_seed(spec["seed"])  # before the trainer builds the LoRA adapters
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"], local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lora = spec["lora"]
    peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=lora["target_modules"], task_type="CAUSAL_LM")
    rows = spec["rows"]
    if spec["mode"] == "sft":
        data = Dataset.from_dict({"prompt": [m[:-1] for m in rows], "completion": [m[-1:] for m in rows]})
    else:  # GKD's collator renders the prompt from `messages` itself
        data = Dataset.from_dict({"messages": rows})
    out_dir = tempfile.mkdtemp(prefix="trl-bench-")
    common = dict(output_dir=out_dir, max_steps=spec["steps"], per_device_train_batch_size=spec["batch_size"],
                  gradient_accumulation_steps=1, learning_rate=spec["lr"], lr_scheduler_type="cosine",
                  warmup_steps=spec["warmup_steps"], weight_decay=0.0, max_grad_norm=1.0,
                  max_length=spec["max_length"], seed=spec["seed"], data_seed=spec["seed"],
                  train_sampling_strategy="sequential", include_num_input_tokens_seen="non_padding",
                  bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
                  logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
                  dataloader_num_workers=0, disable_tqdm=True)
    clock = LoopClock()
    if spec["mode"] == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=model, args=SFTConfig(**common, completion_only_loss=True, packing=False),
                             train_dataset=data, processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[clock])
        tool = "trl.SFTTrainer"
    elif spec["mode"] == "gkd":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        teacher = AutoModelForCausalLM.from_pretrained(spec["teacher"], dtype=torch.float32, local_files_only=True)
        trainer = GKDTrainer(model=model, teacher_model=teacher,
                             args=GKDConfig(**common, lmbda=0.0, beta=spec["beta"], seq_kd=False),
                             train_dataset=data, processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[clock])
        tool = "trl.experimental.gkd.GKDTrainer"
    else:
        raise SystemExit(f"spec mode must be 'sft' or 'gkd', got {spec['mode']!r}")

    trainer.train()
    shutil.rmtree(out_dir, ignore_errors=True)  # save_strategy="no": nothing was meant to be kept there
    seconds = clock.end - clock.start
    tokens = int(trainer.state.num_input_tokens_seen)
    seen = [0] + [int(log["tokens_seen"]) for log in clock.logs]
    losses = [float(log["loss"]) for log in clock.logs]
    first, last = fifth_means(losses) if losses else (None, None)
    result = {
        "tool": tool, "mode": spec["mode"], "trl": version("trl"), "peft": version("peft"),
        "transformers": version("transformers"), "torch": torch.__version__,
        "steps": int(trainer.state.global_step), "seconds": round(seconds, 3), "tokens": tokens,
        "tokens_per_s": round(tokens / max(1e-9, seconds), 1),
        "step_tokens": [b - a for a, b in zip(seen, seen[1:])], "losses": losses,
        "loss_first": first, "loss_last": last,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
    }
    with open(result_path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k not in ("step_tokens", "losses")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
