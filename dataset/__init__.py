"""PixelLM data: one loader per data type, the mixture, collate, validation sets and the synthetic world.

Every loader returns a ``dataset.sample.Sample``; ``dataset.collate.Collator`` turns a list of them into
the batch of ``docs/architecture.md``.
"""
