"""Shared pytest configuration: fixture modules made available to every test module.

``tests/`` has no ``__init__.py``, so pytest puts it on ``sys.path`` before importing this file and the plugin
names below resolve as top-level modules.
"""

pytest_plugins = [
    "build_fixtures",  # tiny_run
    "sshd_fixtures",  # sshd_server
    "hostile_fixtures",  # TreeState, cli_refuses, copy_run (issue 11)
    "results_fixtures",  # attacked_run: a synthetic run through the real attack stage (gate, export, action tests)
]
