"""The collect stage: every artifact of a run on a device, raw outputs stored as the runtime produced them.

- :mod:`harness.collect.stage`: ``collect_run`` (one device) and ``collect_pending``
- :mod:`harness.collect.guard`: device outputs checked against the manifest, ``queries.npz`` validation, the lock
- :mod:`harness.collect.fanout`: one collect unit per device of an audit, on the execution layer
"""
