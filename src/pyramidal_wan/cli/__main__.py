"""`python -m pyramidal_wan.cli ...` (what `accelerate launch -m` runs)."""

import sys

from pyramidal_wan.cli import main

sys.exit(main())
