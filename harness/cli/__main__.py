"""``python -m harness.cli``: the ``compleak`` command."""

import sys

from harness.cli.main import main

sys.exit(main())
