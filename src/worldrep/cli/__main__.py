"""`python -m worldrep.cli`."""

import sys

from . import main

sys.exit(main())
