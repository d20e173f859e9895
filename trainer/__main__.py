"""``python -m vid2pair.trainer train|eval ...`` (also ``torchrun --nproc_per_node N -m vid2pair.trainer
train ...``)."""

import sys

from vid2pair.trainer.cli import main

sys.exit(main())
