"""`python -m action`: the entry point `action.yml` runs in the workspace."""

import sys

from action.run import main

sys.exit(main())
