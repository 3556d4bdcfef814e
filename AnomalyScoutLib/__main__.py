"""``python -m AnomalyScoutLib`` is the same as the ``anomalyscout`` command."""

import sys

from AnomalyScoutLib.cli import main

sys.exit(main())
