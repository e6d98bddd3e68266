"""The pipeline config: one section per stage, each a strict pydantic model (see flows/configs/demo.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.stage import CompressConfig
from distill.config import StageConfig
from distill.dataset import GenerateConfig
from distill.teacher import TeacherConfig
from distill.train import TrainConfig

Stage = Literal["generate", "train", "compress"]


class RunConfig(StageConfig):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", description="prefix of the run id")
    runs_dir: str = Field("runs", description="where run directories are created")
    stages: list[Stage] = Field(default_factory=lambda: ["generate", "train", "compress"], min_length=1)
    incremental: bool = Field(False, description="generate only the seeds the newest earlier run's dataset lacks and append them to it as a new version")


class PipelineConfig(StageConfig):
    run: RunConfig = RunConfig()
    teacher: TeacherConfig = TeacherConfig()
    generate: GenerateConfig
    train: TrainConfig = TrainConfig()
    compress: CompressConfig = CompressConfig()
