"""PixelLM: a multimodal chat LLM that answers with text and one pixel mask per named target."""

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_pixellm import PixelLMConfig
from .modeling_pixellm import PixelLMForCausalLM, PixelLMGenerateOutput, PixelLMOutput
from .processing_pixellm import PixelLMImageProcessor

AutoConfig.register(PixelLMConfig.model_type, PixelLMConfig, exist_ok=True)
AutoModelForCausalLM.register(PixelLMConfig, PixelLMForCausalLM, exist_ok=True)

__all__ = ["PixelLMConfig", "PixelLMForCausalLM", "PixelLMGenerateOutput", "PixelLMImageProcessor", "PixelLMOutput"]
