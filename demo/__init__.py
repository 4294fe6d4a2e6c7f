"""The embedded default (``make demo``, ``python -m demo``): synthetic world -> tiny model -> train -> merge ->
evaluate -> chat, and the recipe for models trained from scratch that it needs.

Every stage runs the same command-line tools a user runs on real data, on CPU here and on the GPU
where there is one (``demo.recipe.demo_stages`` lists them):

1. ``python -m dataset.synthetic``   writes the synthetic world in the real datasets' formats;
2. ``python -m model.tiny``          builds a tiny random PixelLM (a 4-layer LLM, ``--llm_layers``) whose
   tokenizer covers the world's text, its config carrying the decoding rules: never name a target twice in one
   answer (``model/target_repeat_ban.py``), keep the answer of 6 whose targets the others share
   (``model/answer_candidates.py``) and withdraw targets whose mask is weak (``model/target_confidence.py``);
3. ``python -m demo.segmentation_pretraining`` gives it what CLIP and LLaVA give the real model: its vision
   tower learns shapes and colours, its decoder learns to segment named targets, expressions by position
   ("the leftmost circle") first (a random LLM cannot yet give the decoder usable prompts);
4. ``deepspeed train_ds.py --train_llm --freeze_pixel_decoder`` trains the whole (random) LLM to read the
   image and the question and to prompt the pretrained decoder (DeepSpeed ZeRO-2, launched as on a GPU
   machine): referring-heavy epochs first (single targets), then a second run from their checkpoint
   (``--weight``) on a MUSE-heavy mix; merged into ``runs/demo/llm_model``;
5. ``deepspeed train_ds.py``          the PixelLM recipe proper from there: LoRA on the LLM, decoder trained too,
   at a lower learning rate; merged into ``runs/demo/hf_model``;
6. ``train_ds.py --eval_only``       evaluates refer val (teacher-forced) and MUSE val, test_less and test_many
   (free generation);
7. ``chat.py``                       answers a few validation questions and saves masks and overlays;
   ``examples/overview.png`` sets them next to the ground truth.

Results: ``runs/demo/metrics.json`` (per split gIoU, cIoU, no_target_acc, count_acc, invented_share; see
docs/evaluation.md), ``runs/demo/learning_curves.png``, ``runs/demo/examples/``.
"""
