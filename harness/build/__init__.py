"""The build stage: data -> train -> compress -> export, for the target and every reference (shadow) model.

- :mod:`harness.build.stage`: the stage (``build_run`` / ``build_into``): plan, cache keys, units, the manifest
- :mod:`harness.build.tf_pipeline`: Keras zoo, training, tfmot compression, TF-Lite export
- :mod:`harness.build.torch_pipeline`: the torch path over the variants, with its cache of trained and compressed
  models; its parts: :mod:`~harness.build.torch_zoo` (architectures), :mod:`~harness.build.torch_train` (training),
  :mod:`~harness.build.torch_compress` (pruning / clustering / PT2E), :mod:`~harness.build.torch_export`
  (``.pte``/``.ptl``/``.onnx``)
- :mod:`harness.build.artifacts`: ``BuiltArtifact``, artifact ids, the verified build caches both builders keep
- :mod:`harness.build.runtime`: what a unit's bytes depend on besides its inputs (``[build]`` threads, op
  determinism, seeds), applied the same wherever the unit runs, and the ``build`` record of every artifact
- :mod:`harness.build.threat`: ``RUN/threat_model.json`` (written by build and by import)
"""
