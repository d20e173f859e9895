"""vid2pair's bundled trainer: WebDataset loader, tiny and FramePainter (SVD) models, DDP training
loop, evaluation. Entry points: ``vid2pair train`` / ``vid2pair eval`` (:mod:`trainer.cli`); see
docs/trainer.md."""
