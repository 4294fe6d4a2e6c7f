"""PixelLM training: flags, model setup with LoRA, DeepSpeed config, the train loop, checkpoints, merge.

Entry points: ``training.trainer.train(TrainArgs)`` (behind ``train_ds.py``) and
``training.merge.merge_lora_checkpoint(MergeArgs)`` (behind ``merge_lora_weights_and_save_hf_model.py``).
"""
