"""Dataset builders, one module per dataset, and the registry the CLI reads."""

import hubtools  # noqa: F401,E402  (Xet off for a local endpoint, before any HF import)
