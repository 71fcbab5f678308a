"""``python -m claudemesh_gateway.devbroker``: same as ``claudemesh-gateway dev-broker``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
