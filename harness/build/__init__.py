"""The build stage: data -> train -> compress -> export, for the target and every reference (shadow) model.

- :mod:`harness.build.stage`: the stage (``build_run`` / ``build_into``): plan, cache keys, units, the manifest
- :mod:`harness.build.tf_pipeline`: Keras zoo, training, tfmot compression, TF-Lite export
- :mod:`harness.build.torch_pipeline`: torch zoo, training, pruning / clustering / PT2E, ``.pte``/``.ptl``/``.onnx``
- :mod:`harness.build.artifacts`: ``BuiltArtifact``, artifact ids, build-cache records
- :mod:`harness.build.threat`: ``RUN/threat_model.json`` (written by build and by import)
"""
