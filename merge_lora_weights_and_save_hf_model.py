"""Merge trained LoRA weights into the base PixelLM and save a Hugging Face folder.

    python merge_lora_weights_and_save_hf_model.py --weight runs/<exp>/ckpt_model --save_path OUT_DIR [--precision bf16]

--weight takes the DeepSpeed checkpoint folder directly (it carries the run's --version, LoRA and freeze
flags in run_settings.json), or the output of its zero_to_fp32.py (a folder or a single .bin / .safetensors
file), which needs --version and the training run's --lora_* / --train_* flags.
"""

import dataclasses
import logging

from training.merge import MergeArgs, build_merge_parser, merge_lora_checkpoint


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    parsed = vars(build_merge_parser(__doc__).parse_args())
    names = {f.name for f in dataclasses.fields(MergeArgs)}
    out = merge_lora_checkpoint(MergeArgs(**{k: v for k, v in parsed.items() if k in names}), {k: v for k, v in parsed.items() if k not in names})
    print(f"merged model written to {out}")


if __name__ == "__main__":
    main()
