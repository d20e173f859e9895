"""``python -m trainer train|eval ...`` (also ``torchrun --nproc_per_node N -m trainer train ...``)."""
import sys

from trainer.cli import main

sys.exit(main())
