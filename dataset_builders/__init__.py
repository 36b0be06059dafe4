"""Dataset builders, one module per dataset, and the registry the CLI reads."""
