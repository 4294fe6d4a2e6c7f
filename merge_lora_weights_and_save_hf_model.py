"""Merge trained LoRA weights into the base PixelLM and save a Hugging Face folder.

    python merge_lora_weights_and_save_hf_model.py --weight runs/<exp>/ckpt_model --save_path OUT_DIR [--precision bf16]

--weight takes the DeepSpeed checkpoint folder directly (it carries the run's --version, LoRA and freeze
flags in run_settings.json), or the output of its zero_to_fp32.py (a folder or a single .bin / .safetensors
file), which needs --version and the training run's --lora_* / --train_* flags.
"""

import logging

from training.merge import merge_lora_checkpoint, parse_merge_args


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    out = merge_lora_checkpoint(*parse_merge_args(__doc__))
    print(f"merged model written to {out}")


if __name__ == "__main__":
    main()
