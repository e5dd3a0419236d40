"""``python -m medadapt`` is the ``medadapt`` command."""

import sys

from .cli import main

sys.exit(main())
