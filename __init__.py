"""vid2pair: raw video -> training pairs for interactive image-editing models.

The repository's top-level folders are this package's subpackages (``pyproject.toml`` maps them):

* :mod:`vid2pair.core`     errors, items, seeding, devices, the model-weight registry, the stage
  contract and the typed config spec (imports nothing else of vid2pair);
* :mod:`vid2pair.stages`   one module per stage, each a pure core plus its declaration;
* :mod:`vid2pair.pipeline` the pipeline list, runners, I/O, CLI, QC;
* :mod:`vid2pair.trainer`  the bundled trainer;
* :mod:`vid2pair.jobs`     entry points for Ray clusters;
* ``vid2pair/configs``     the presets (package data).
"""

__version__ = "0.1.0"
