"""``python -m loglik`` is the ``loglik`` command."""

import sys

from .cli import main

sys.exit(main())
