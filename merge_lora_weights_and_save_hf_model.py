"""Merge trained LoRA weights into the base PixelLM and save a Hugging Face folder.

    python merge_lora_weights_and_save_hf_model.py --version BASE_DIR \
        --weight runs/<exp>/ckpt_model --save_path OUT_DIR [--lora_r 8 ...] [--precision bf16]

--weight takes the DeepSpeed checkpoint folder directly, or the output of its zero_to_fp32.py (a folder
or a single .bin / .safetensors file). Pass the same --lora_* flags as in training.
"""

import logging

from training.args import build_parser
from training.merge import MergeArgs, merge_lora_checkpoint


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    parser = build_parser(MergeArgs, description=__doc__)
    args = MergeArgs(**vars(parser.parse_args()))
    out = merge_lora_checkpoint(args)
    print(f"merged model written to {out}")


if __name__ == "__main__":
    main()
