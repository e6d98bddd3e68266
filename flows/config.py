"""The pipeline config: one section per stage, each a strict pydantic model (see flows/configs/demo.yaml),
and its preflight checks (Prefect-free: a bad input fails before Prefect is imported)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from compress.stage import CompressConfig
from distill.config import ConfigError, StageConfig
from distill.data.dataset import GenerateConfig
from distill.evaluate import EvaluateConfig
from distill.teacher.query import TeacherConfig
from distill.train.run import TrainConfig

Stage = Literal["generate", "train", "evaluate", "compress"]


class RunConfig(StageConfig):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", description="prefix of the run id")
    runs_dir: str = Field("runs", description="where run directories are created")
    stages: list[Stage] = Field(default_factory=lambda: ["generate", "train", "evaluate", "compress"], min_length=1,
                                description="what this run does; they always run in the order generate, train, evaluate, compress")
    shards: int = Field(1, ge=1, le=1024, description="answer the teacher requests in this many Prefect tasks (openai backend), each retried alone, before the dataset is assembled")
    teacher_limit: str | None = Field(None, description="a Prefect global concurrency limit each shard occupies a slot of while it runs, shared by every flow using this teacher (create it: prefect gcl create NAME --limit N)")
    teacher_rate_limit: str | None = Field(None, description="a Prefect rate limit (a global concurrency limit with slot decay) every teacher request of the shards takes a slot of, shared by every flow using this teacher (create it: prefect gcl create NAME --limit BURST --slot-decay-per-second PER_S)")
    task_runner: Literal["threads", "dask"] = Field("threads", description="where the shard tasks run: Prefect's thread pool, or a Dask cluster (prefect-dask)")
    dask_workers: int = Field(2, ge=1, le=256, description="task_runner=dask: worker processes of the local cluster started for the run (bound to 127.0.0.1)")
    dask_address: str | None = Field(None, description="task_runner=dask: scheduler of an existing cluster (tcp://host:8786) instead of a local one")
    incremental: bool = Field(False, description="generate only the seeds the newest earlier run's dataset lacks and append them to it as a new version")


class PipelineConfig(StageConfig):
    run: RunConfig = RunConfig()
    teacher: TeacherConfig = TeacherConfig()
    generate: GenerateConfig
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    compress: CompressConfig = CompressConfig()


def preflight(cfg: PipelineConfig) -> None:
    """Cheap checks of every input before any expensive work (or a Prefect run) starts."""
    from distill.data.dataset import check_task_styles
    from distill.data.seeds import load_seeds
    from distill.data.tasks import load_tasks
    from distill.data.templates import check_templates
    from distill.models import BUNDLED_ALIAS, check_model_dir

    stages = cfg.run.stages
    if "generate" in stages:
        tasks = None
        if cfg.generate.tasks is not None:
            tasks = check_task_styles(load_tasks(cfg.generate.tasks), cfg.generate)
            if cfg.run.shards > 1 and any(t.synthesize for t in tasks.tasks):
                raise ConfigError("run.shards: input synthesis (a task with synthesize > 0) plans its requests round "
                                  "by round; set run.shards=1")
        else:
            load_seeds(cfg.generate.seeds)
        # every template the stage will render (styles, erased/chat demos, judge, bootstrap, synthesis) loads and
        # renders, so a typo in one fails here, not after the teacher has answered everything before it
        check_templates(cfg.generate, tasks)
        if cfg.teacher.backend == "vllm" and cfg.teacher.model != BUNDLED_ALIAS:
            check_model_dir(Path(cfg.teacher.model))
        if cfg.teacher.backend == "openai" and not cfg.teacher.base_url:
            raise ConfigError("teacher.base_url is required for the openai backend (e.g. http://127.0.0.1:8000/v1)")
        if cfg.run.shards > 1 and cfg.teacher.backend != "openai":
            raise ConfigError(f"run.shards={cfg.run.shards} needs teacher.backend=openai (each in-process shard would "
                              "load its own engine); serve the model (eakd teacher serve) or set run.shards=1")
        if cfg.run.shards > 1 and not cfg.teacher.cache:
            raise ConfigError("run.shards: the shards hand their answers to the generate stage through the response "
                              "cache; set teacher.cache=true or run.shards=1")
        if cfg.run.teacher_rate_limit and cfg.run.shards == 1:
            raise ConfigError("run.teacher_rate_limit paces the shard tasks' requests; set run.shards >= 2 (or use "
                              "teacher.rpm / teacher.tpm for one process)")
        if cfg.run.shards > 1 and cfg.generate.bootstrap is not None:
            raise ConfigError("run.shards: bootstrapping plans its requests round by round; set run.shards=1")
    if {"train", "evaluate", "compress"} & set(stages) and cfg.train.student != BUNDLED_ALIAS:
        check_model_dir(Path(cfg.train.student))
    if "evaluate" in stages:
        if "generate" not in stages:
            raise ConfigError("run.stages: 'evaluate' scores the generated dataset's validation split, so it needs "
                              "'generate' in the same run; for an existing dataset use `eakd evaluate CONFIG --model DIR "
                              "--dataset DIR --out DIR`")
        if cfg.evaluate.text_path and not Path(cfg.evaluate.text_path).is_file():
            raise ConfigError(f"evaluate.text_path: file not found: {cfg.evaluate.text_path}")
    if "compress" in stages and cfg.compress.eval.text_path and not Path(cfg.compress.eval.text_path).is_file():
        raise ConfigError(f"compress.eval.text_path: file not found: {cfg.compress.eval.text_path}")
