"""``python -m server``: the same as the ``dataexec`` command."""

import sys

from server.cli import main

sys.exit(main())
