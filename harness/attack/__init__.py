"""The attack stage: collected outputs in, ``attacks/<device>/results.json`` and ``scores.npz`` out (the attacks
themselves are the ``compleak`` library's)."""
