"""``python -m npllm`` runs the CLI (see ``npllm.cli``)."""

import sys

from .cli import main

sys.exit(main())
