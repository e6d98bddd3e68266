"""Data-parallel training: hand the train stage to ``accelerate launch`` with the same config.

``train.processes: N`` (N > 1) makes :func:`distill.train.run.train_student` call :func:`launch_training`,
which writes the resolved train config beside the output folder and runs::

    python -m accelerate.commands.launch --multi_gpu --num_processes N --num_machines 1 \\
        --main_process_ip 127.0.0.1 --main_process_port PORT -m distill.train.launch CONFIG DATASET OUT

``accelerate`` is the launcher only (it starts the N processes through torchrun and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address); each process runs the same compact loop
of :mod:`distill.train.loop`, which reads those variables, joins a ``torch.distributed`` process group
(NCCL on CUDA, one GPU per process; gloo on CPU) and all-reduces the gradients once per optimizer
step. The loop stays ours rather than ``Accelerator.prepare``'s DDP wrapper because its loss projects
only the assistant positions through the LM head — it calls the model's body and head directly, and a
DDP wrapper only syncs gradients for calls through its own ``forward``. Any other launcher that sets
the same variables (``torchrun``, a cluster's job script) works too.

Multi-machine training is ``accelerate launch`` run by hand on every machine with ``--num_machines``
and ``--machine_rank`` and ``-m distill.train.launch CONFIG DATASET OUT``; it is not wrapped here.

Run: ``eakd train CONFIG train.processes=2`` (or ``run.stages`` of the pipeline with the same key).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from distill.config import ConfigError, dump_config, load_config
from distill.net import free_port
from distill.train.config import TrainConfig
from distill.train.loop import run_training

log = logging.getLogger(__name__)

ERROR_SUFFIX = ".launch-error"  # a worker's ConfigError text, read back by the launching process


def launch_training(cfg: TrainConfig, dataset_dir: str | Path, out_dir: str | Path) -> Path:
    """Run :func:`distill.train.loop.run_training` in ``cfg.processes`` processes via ``accelerate launch``;
    returns ``out_dir`` once rank 0 has saved the student there."""
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ConfigError(f"train.processes={cfg.processes} hands training to `accelerate launch`; "
                          "install it (pip install accelerate) or set train.processes=1") from None
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg_file = out.with_name(out.name + ".launch.yaml")
    error_file = out.with_name(out.name + ERROR_SUFFIX)
    error_file.unlink(missing_ok=True)
    dump_config(cfg, cfg_file)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(cfg.processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
           "-m", "distill.train.launch", str(cfg_file), str(Path(dataset_dir).resolve()), str(out)]
    log.info("handing training to accelerate launch: %d processes", cfg.processes)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                                    os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, env=env, check=False)
    if error_file.is_file():  # a worker refused the input: the same error the single-process path gives
        msg = error_file.read_text()
        error_file.unlink()
        raise ConfigError(msg)
    if proc.returncode != 0:
        raise RuntimeError(f"accelerate launch with {cfg.processes} processes exited with {proc.returncode}; "
                           "see the workers' log above")
    if not (out / "metrics.json").is_file():
        raise RuntimeError(f"accelerate launch finished but {out} holds no trained student")
    cfg_file.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """One training process: ``python -m distill.train.launch CONFIG DATASET OUT`` (started by the launcher)."""
    config, dataset_dir, out_dir = list(sys.argv[1:] if argv is None else argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s")
    try:
        run_training(load_config(TrainConfig, config), dataset_dir, out_dir)
    except ConfigError as exc:
        if rank == 0:
            Path(out_dir).with_name(Path(out_dir).name + ERROR_SUFFIX).write_text(str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
