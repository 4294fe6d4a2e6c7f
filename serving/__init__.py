"""Serving: the predictor, batched answering for many users, robust image loading, lossless mask export
(PNG, COCO RLE JSON) and overlays.

The web page and the HTTP API (``serving.web_app``, ``serving.http_api``, ``serving.server``) import
Gradio and FastAPI and are not imported here.
"""

from .examples import write_model_examples
from .export import ExportTarget, answer_record, load_masks_from_json, mask_bbox, mask_to_rle, rle_to_mask, save_answer
from .image_io import ImageLoadConfig, ImageLoadError, ImageTooLargeError, check_image_limits, load_image, require_rgb_image
from .overlay import PALETTE_HEX, OverlayStyle, as_bool_mask, draw_overlay, target_color, target_color_hex
from .predictor import Answer, ChatSession, ImageEmbedding, PixelLMPredictor, QuestionError, Target
from .request_limits import RequestLimits
from .scheduler import AnswerStream, BatchScheduler, QueueFullError, SchedulerConfig

__all__ = [
    "PALETTE_HEX",
    "Answer",
    "AnswerStream",
    "BatchScheduler",
    "ChatSession",
    "ExportTarget",
    "ImageEmbedding",
    "ImageLoadConfig",
    "ImageLoadError",
    "ImageTooLargeError",
    "OverlayStyle",
    "PixelLMPredictor",
    "QuestionError",
    "QueueFullError",
    "RequestLimits",
    "SchedulerConfig",
    "Target",
    "answer_record",
    "as_bool_mask",
    "check_image_limits",
    "draw_overlay",
    "load_image",
    "load_masks_from_json",
    "mask_bbox",
    "mask_to_rle",
    "require_rgb_image",
    "rle_to_mask",
    "save_answer",
    "target_color",
    "target_color_hex",
    "write_model_examples",
]
