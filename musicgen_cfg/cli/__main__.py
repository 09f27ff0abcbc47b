"""`python -m musicgen_cfg.cli ARGS`: the console script in a subprocess (reproduce's parallel runs, FSDP launches)."""

import sys

from musicgen_cfg.cli import main

sys.exit(main())
