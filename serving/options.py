"""The options of ``chat.py`` and ``app.py`` as dataclasses, checked against the model folder.

Each field is a flag (``cli``: its default and help text are declared here, once); the scripts parse their
flags into ``ChatOptions`` / ``ServeOptions`` and make one call (``serving.terminal_chat.run_chat``,
``serving.server.run_server``). ``check()`` raises
``OptionsError`` with the fix for values that cannot work; the original PixelLM's flags that this
implementation does not need are checked against the folder's ``config.json``, never silently ignored.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from cli import flag
from model.configuration_pixellm import PixelLMConfig
from model.loading import check_architecture
from model.precision import PRECISIONS, default_precision
from model.processing_pixellm import ALPHA_MODES

from .image_io import ImageLoadConfig
from .request_limits import RequestLimits
from .scheduler import SchedulerConfig


class OptionsError(ValueError):
    """An option value that cannot work; the message names the flag and the fix."""


ALPHA_HELP = ("images with an alpha channel: composite onto white, or drop the alpha as the original PixelLM did "
              "(default: the folder's preprocessor_config.json; converted releases say drop)")


@dataclass
class ModelOptions:
    """The model to serve and how to run it."""

    version: str = flag("", "merged model folder (config.json, weights, tokenizer, preprocessor)", required=True)
    device: str | None = flag(None, "cpu, cuda, cuda:1, mps, ... (default: cuda when a GPU is visible, else cpu)")
    precision: str | None = flag(None, "default: bf16 on CUDA, fp32 elsewhere", choices=sorted(PRECISIONS))
    alpha: str | None = flag(None, ALPHA_HELP, choices=list(ALPHA_MODES))

    def __post_init__(self) -> None:
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.precision = self.precision or default_precision(self.device)

    def check_folder(self) -> PixelLMConfig:
        """The folder's config; ``OptionsError`` when there is no config.json."""
        if not (Path(self.version) / "config.json").is_file():
            raise OptionsError(f"--version {self.version}: no config.json there; pass a merged model folder")
        return PixelLMConfig.from_pretrained(self.version)


@dataclass
class ChatOptions(ModelOptions):
    """chat.py's flags (docs/serving.md): out_dir, image, query, max_new_tokens, model_max_length, and the
    original's flags, which must agree with the folder (image_size, seg_token_num, image_feature_scale_num,
    conv_type), need CUDA (load_in_8bit, load_in_4bit) or are ignored with a note (vision_tower)."""

    out_dir: str = flag("./vis_output", "where masks, overlays and JSON go", flag=("--vis_save_path", "--out_dir"))
    image: str | None = flag(None, "image to load first; with --query, the one-shot mode")
    query: str | None = flag(None, "one question: answer it, save the files and exit")
    max_new_tokens: int = flag(512, "answer length limit")
    model_max_length: int | None = flag(None, "cap the context (prompt + answer) below the model's own limit")
    image_size: int | None = flag(None, "must equal the folder's preprocessor image_size (the CLIP input)")
    conv_type: str = flag("llava_v1", "chat template; only llava_v1 exists")
    load_in_8bit: bool = flag(False, "8-bit LLM via bitsandbytes (CUDA only)")
    load_in_4bit: bool = flag(False, "4-bit LLM via bitsandbytes (CUDA only)")
    seg_token_num: int | None = flag(None, "checked against the folder's config.json")
    image_feature_scale_num: int | None = flag(None, "checked against the folder's config.json")
    vision_tower: str | None = flag(None, "ignored: the vision tower is part of the folder", flag=("--vision-tower", "--vision_tower"))

    @property
    def quantization(self) -> str | None:
        return "8bit" if self.load_in_8bit else "4bit" if self.load_in_4bit else None

    @property
    def image_load_config(self) -> ImageLoadConfig:
        return ImageLoadConfig(alpha=self.alpha)

    def check(self) -> list[str]:
        """Raise ``OptionsError`` for values that contradict the folder or each other; return notes to print."""
        config = self.check_folder()
        try:
            check_architecture(config, self.version, seg_token_num=self.seg_token_num, image_feature_scale_num=self.image_feature_scale_num)
        except ValueError as err:
            raise OptionsError(str(err)) from err
        if self.image_size is not None and self.image_size != config.image_size:
            raise OptionsError(
                f"--image_size {self.image_size}: this model has no separate SAM input; its CLIP input size is fixed by the "
                f"folder at {config.image_size}. Drop the flag."
            )
        if self.conv_type != "llava_v1":
            raise OptionsError(f"--conv_type {self.conv_type}: only llava_v1 is implemented (model/conversation.py)")
        if self.load_in_8bit and self.load_in_4bit:
            raise OptionsError("--load_in_8bit and --load_in_4bit exclude each other")
        if self.quantization and not self.device.startswith("cuda"):
            raise OptionsError(f"--load_in_8bit/--load_in_4bit need a CUDA GPU (bitsandbytes); the device is {self.device}. Use --precision bf16 instead")
        if self.query is not None and self.image is None:
            raise OptionsError("--query needs --image")
        if self.max_new_tokens < 1:
            raise OptionsError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.vision_tower:
            return [f"note: --vision-tower {self.vision_tower} is ignored; the vision tower is loaded from {self.version}"]
        return []


@dataclass
class ServeOptions(ModelOptions):
    """app.py's flags (docs/serving.md): where to listen, the batching, the request limits, what the API
    keeps for follow-up questions, the page's examples and output folder."""

    host: str = flag("127.0.0.1", "0.0.0.0 to serve other machines")
    port: int = flag(7860, "port of the page and the API")
    max_batch_size: int = flag(8, "questions answered together in one batch; 1 turns batching off")
    max_queue: int = flag(256, "questions allowed to wait; more are refused with 503")
    concurrency: int = flag(16, "questions of the web page handed to the model at once")
    max_new_tokens: int = flag(512, "answer length limit (API clients may ask for less)")
    max_upload_mb: float = flag(10.0, "largest accepted upload")
    max_pixels: int = flag(25_000_000, "largest accepted width*height (decompression-bomb guard)")
    max_question_chars: int = flag(2000, "longest accepted question")
    max_conversations: int = flag(256, "API conversations kept for follow-ups (least recently used dropped)")
    max_images: int = flag(64, "API images kept for new conversations by image_id")
    idle_minutes: float = flag(30.0, "API conversations and images unused this long are dropped")
    examples_dir: str | None = flag(None, "folder of example images (default: the model folder's examples, else drawings)")
    output_dir: str | None = flag(None, "where the page writes answers' files (default: pixellm_app in the temp folder)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.output_dir = self.output_dir or str(Path(tempfile.gettempdir()) / "pixellm_app")

    @property
    def limits(self) -> RequestLimits:
        return RequestLimits(self.max_new_tokens, self.max_upload_mb, self.max_pixels, self.max_question_chars, self.alpha)

    @property
    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(max_batch_size=self.max_batch_size, max_queue=self.max_queue)

    def check(self) -> None:
        """Raise ``OptionsError`` for values that cannot work."""
        self.check_folder()
        if not 0 <= self.port <= 65535:
            raise OptionsError(f"--port must be 0..65535, got {self.port}")
        positive = ["max_batch_size", "max_queue", "concurrency", "max_new_tokens", "max_upload_mb", "max_pixels",
                    "max_question_chars", "max_conversations", "max_images", "idle_minutes"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise OptionsError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.examples_dir is not None and not Path(self.examples_dir).is_dir():
            raise OptionsError(f"--examples_dir {self.examples_dir} is not a folder")
