"""`python -m blazen_trio`: the `blazen-trio` command."""

import sys

from .cli import main

sys.exit(main())
