"""A run's plan: everything its training processes read, decided before any training starts
and written to runs/<id>/plan.json last (its presence means the run's data is complete), so
`flywheel train --resume` trains on exactly the same data, stages and settings."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from assistant import models
from storage import write_atomic


@dataclass
class TrainingPlan:
    run_id: str
    adapter_id: str              # the adapter this run publishes (named after the run)
    base_name: str               # the base model: its name, as the server reports it
    base_folder: str             # ... and the folder it is loaded from
    stages: list[str]            # methods trained one after another, e.g. ["sft", "dpo"]
    reason: str                  # why these stages (methods.pick), for the log
    start_from: str | None       # the adapter the run continues, or None: the base model
    start_path: str | None       # ... its folder
    config: dict                 # the run's TrainConfig, as trainer.config.as_dict writes it

    @property
    def base(self) -> models.BaseModel:
        """The base model the run trains: its name and the folder it is loaded from."""
        return models.BaseModel(self.base_name, Path(self.base_folder))

    @property
    def method(self) -> str:
        """The stages as one name: "sft+dpo"."""
        return "+".join(self.stages)

    def save(self, path: Path) -> None:
        """Write plan.json atomically, in the shape runs of earlier versions wrote it."""
        data = asdict(self)
        data["base"] = {"name": data.pop("base_name"), "folder": data.pop("base_folder")}
        write_atomic(path, json.dumps(data, indent=2))

    @classmethod
    def load(cls, path: Path) -> "TrainingPlan":
        """The plan saved at `path` (plan.json, as `save` writes it)."""
        data = json.loads(path.read_text())
        base = data.pop("base")
        return cls(base_name=base["name"], base_folder=base["folder"], **data)
