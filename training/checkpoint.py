"""Crash-safe DeepSpeed checkpoints: a new tag per save, ``latest`` replaced atomically afterwards.

Layout of ``<run>/ckpt_model`` (and of ``<run>/best_ckpt_model``)::

    latest                 the tag of the last complete checkpoint (written with os.replace)
    run_settings.json      the run's model and scope settings (training.run_settings), for a merge
    global_step<N>/        DeepSpeed's files for that tag
    zero_to_fp32.py        copied in by DeepSpeed

``engine.save_checkpoint`` itself writes ``latest`` by truncating and rewriting it, and a re-save under
an existing tag overwrites files in place; a kill in either moment leaves nothing usable. Here every
save goes to a fresh tag with DeepSpeed's ``latest`` turned off, ``latest`` is switched only after
all ranks finished writing, and the previous tag is deleted only after that switch. Frozen parameters
are not stored (they come from ``--version``); ``client_state`` records the trainable names, the
global step, the best gIoU, every rank's RNG states and the intra-op thread count.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .distributed import DistInfo, all_gather_objects, barrier

logger = logging.getLogger(__name__)

CKPT_DIR = "ckpt_model"
BEST_DIR = "best_ckpt_model"
LATEST = "latest"
BEST_INFO = "best.json"
RUN_SETTINGS = "run_settings.json"
TAG_PREFIX = "global_step"


def tag_for_step(global_step: int) -> str:
    return f"{TAG_PREFIX}{global_step}"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_latest(ckpt_dir: str | os.PathLike) -> str | None:
    """The tag ``ckpt_dir/latest`` names, or None when there is no checkpoint yet."""
    path = Path(ckpt_dir) / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    if not tag or not (Path(ckpt_dir) / tag).is_dir():
        raise FileNotFoundError(f"{path} names the tag {tag!r} but {Path(ckpt_dir) / tag} is missing: the checkpoint folder was edited by hand")
    return tag


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, str]:
    """(checkpoint folder, tag) for a folder holding ``latest`` or for one tag folder inside it."""
    path = Path(path)
    if (path / LATEST).is_file():
        return path, read_latest(path)
    if path.is_dir() and any(path.glob("*model_states.pt")):
        return path.parent, path.name
    raise FileNotFoundError(f"{path} is not a DeepSpeed checkpoint: expected a folder with a '{LATEST}' file or a tag folder with *model_states.pt")


def rng_state() -> dict:
    """This process's python, numpy, torch and accelerator RNG states."""
    from deepspeed.accelerator import get_accelerator

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if get_accelerator().device_name() != "cpu":
        state["accelerator"] = get_accelerator().get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    from deepspeed.accelerator import get_accelerator

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "accelerator" in state and get_accelerator().device_name() != "cpu":
        get_accelerator().set_rng_state(state["accelerator"])


@dataclass
class TrainState:
    """What a run needs beyond DeepSpeed's own state to continue exactly."""

    global_step: int = 0
    best_giou: float = -1.0
    data_signature: dict | None = None
    num_threads: int | None = None  # intra-op threads of the run that wrote the checkpoint (None: not recorded)
    rng: dict | None = None  # this rank's RNG states from a checkpoint, applied just before training resumes

    def restore_rng(self) -> None:
        """Apply the checkpoint's RNG states (once), so the resumed run draws what the original one drew."""
        if self.rng is not None:
            set_rng_state(self.rng)
            self.rng = None

    def client_state(self, trainable: list[str]) -> dict:
        """The dict stored with the checkpoint (all ranks must call this: it gathers their RNG states)."""
        return {
            "global_step": self.global_step,
            "best_giou": self.best_giou,
            "data_signature": self.data_signature,
            "trainable": trainable,
            "num_threads": torch.get_num_threads(),
            "rng": all_gather_objects(rng_state()),
        }


def _tag_dirs(ckpt_dir: Path) -> list[Path]:
    return [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(TAG_PREFIX)]


def save_checkpoint(
    engine, ckpt_dir: str | os.PathLike, state: TrainState, trainable: list[str], settings: dict, dist: DistInfo
) -> str:
    """Save under ``global_step<N>``, switch ``latest`` to it, delete older tags; returns the tag. All ranks call it.

    ``settings`` (``training.run_settings.settings_record``) is written beside as ``run_settings.json``. A step
    that ``latest`` already names is complete and is not written again.
    """
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for_step(state.global_step)
    already_saved = all_gather_objects(dist.is_main and (ckpt_dir / LATEST).is_file() and read_latest(ckpt_dir) == tag)[0]
    if already_saved:
        return tag
    client_state = state.client_state(trainable)
    if dist.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if (ckpt_dir / tag).exists():
            shutil.rmtree(ckpt_dir / tag)  # a save of this tag that was cut short (latest does not name it)
    barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False, exclude_frozen_parameters=True)
    barrier()
    if dist.is_main:
        write_text_atomic(ckpt_dir / RUN_SETTINGS, json.dumps(settings, indent=2))
        write_text_atomic(ckpt_dir / LATEST, tag)
        for old in _tag_dirs(ckpt_dir):
            if old.name != tag:
                shutil.rmtree(old)
        logger.info("saved checkpoint %s", ckpt_dir / tag)
    barrier()
    return tag


def save_best(
    engine, run_dir: str | os.PathLike, state: TrainState, trainable: list[str], settings: dict, metrics: dict, dist: DistInfo
) -> None:
    """Keep this step's weights apart in ``best_ckpt_model`` with ``best.json`` describing them."""
    best_dir = Path(run_dir) / BEST_DIR
    tag = save_checkpoint(engine, best_dir, state, trainable, settings, dist)
    if dist.is_main:
        write_text_atomic(best_dir / BEST_INFO, json.dumps({"tag": tag, "global_step": state.global_step, **metrics}, indent=2))
    barrier()


def load_checkpoint(engine, path: str | os.PathLike, trainable: list[str], dist: DistInfo) -> TrainState:
    """Restore weights, optimizer and LR schedule from ``path``; returns the TrainState (with this rank's RNG states)."""
    ckpt_dir, tag = resolve_checkpoint(path)
    load_path, client_state = engine.load_checkpoint(
        str(ckpt_dir), tag=tag, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None or client_state is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint {ckpt_dir / tag}")
    saved = client_state.get("trainable")
    if saved != trainable:
        missing = sorted(set(trainable) - set(saved or []))
        extra = sorted(set(saved or []) - set(trainable))
        raise ValueError(
            f"{ckpt_dir / tag} was trained with other trainable parameters (missing here: {missing[:5]}, extra: {extra[:5]}): "
            "resume with the same --lora_* flags, --train_vision_tower / --train_llm / --freeze_pixel_decoder and --version"
        )
    state = TrainState(
        global_step=int(client_state["global_step"]),
        best_giou=float(client_state["best_giou"]),
        data_signature=client_state.get("data_signature"),
        num_threads=client_state.get("num_threads"),
    )
    if engine.global_steps != state.global_step:
        raise RuntimeError(f"{ckpt_dir / tag}: DeepSpeed restored step {engine.global_steps} but the run state says {state.global_step}")
    rngs = client_state.get("rng") or []
    if len(rngs) == dist.world_size:
        state.rng = rngs[dist.rank]
    else:
        logger.warning("%s was saved by %d ranks, this run has %d: RNG states are not restored", ckpt_dir / tag, len(rngs), dist.world_size)
    logger.info("resumed from %s at global step %d", ckpt_dir / tag, state.global_step)
    return state
