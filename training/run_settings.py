"""The settings a checkpoint carries: ``run_settings.json`` beside the weights, with the run's ``ModelArgs``
(``--version`` as an absolute path) and ``TrainScope``, so that rebuilding its model (merge, ``--weight``)
needs nothing but the checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from .args import ModelArgs
from .checkpoint import RUN_SETTINGS
from .freeze_policy import TrainScope

logger = logging.getLogger(__name__)


def settings_record(model: ModelArgs, scope: TrainScope) -> dict:
    """{"model": ModelArgs fields, "scope": TrainScope fields} as stored in ``run_settings.json``."""
    record = {
        "model": {f.name: getattr(model, f.name) for f in dataclasses.fields(ModelArgs)},
        "scope": {f.name: getattr(scope, f.name) for f in dataclasses.fields(TrainScope)},
    }
    record["model"]["version"] = os.path.abspath(model.version)
    return record


def find_run_settings(weight: str | os.PathLike) -> Path | None:
    """The ``run_settings.json`` of a checkpoint folder, of one of its tag folders, or beside a weight file."""
    weight = Path(weight)
    for folder in (weight, weight.parent) if weight.is_dir() else (weight.parent,):
        if (folder / RUN_SETTINGS).is_file():
            return folder / RUN_SETTINGS
    return None


def resolve_settings(weight: str | os.PathLike, given: dict) -> tuple[ModelArgs, TrainScope]:
    """The ModelArgs and TrainScope that rebuild the model ``weight`` was trained on.

    ``given``: flags passed on the command line (only those given). With a ``run_settings.json`` they must
    agree with it, except ``--version``, which may name the same folder at another path once the recorded one
    is gone. Without one (a ``zero_to_fp32`` output moved elsewhere, a bare weight file) ``given`` must name
    ``--version`` and the training run's scope flags, whose defaults are assumed otherwise.
    """
    model_fields = {f.name for f in dataclasses.fields(ModelArgs)}
    unknown = set(given) - model_fields - {f.name for f in dataclasses.fields(TrainScope)}
    if unknown:
        raise TypeError(f"resolve_settings: {sorted(unknown)} are not model or scope settings")
    path = find_run_settings(weight)
    if path is None:
        if "version" not in given:
            raise ValueError(
                f"{weight} carries no {RUN_SETTINGS} (train_ds.py writes one into every checkpoint folder): pass --version "
                "and the --lora_* / --train_llm / --train_vision_tower / --freeze_pixel_decoder flags of the training run"
            )
        return (
            ModelArgs(**{k: v for k, v in given.items() if k in model_fields}),
            TrainScope(**{k: v for k, v in given.items() if k not in model_fields}),
        )
    stored = json.loads(path.read_text())
    model, scope = dict(stored["model"]), dict(stored["scope"])
    for name, value in given.items():
        section = model if name in model_fields else scope
        if name == "version":
            if os.path.exists(section[name]) and os.path.realpath(value) != os.path.realpath(section[name]):
                raise ValueError(f"--version {value} disagrees with {path}: the checkpoint was trained from {section[name]}; drop --version")
            if not os.path.exists(section[name]):
                logger.info("%s names %s, which is gone: using --version %s", path, section[name], value)
            section[name] = value
        elif value != section[name]:
            raise ValueError(
                f"--{name} {value} disagrees with {path}, which says the checkpoint was trained with {name}={section[name]}: drop the flag"
            )
    return ModelArgs(**model), TrainScope(**scope)


__all__ = ["RUN_SETTINGS", "find_run_settings", "resolve_settings", "settings_record"]
