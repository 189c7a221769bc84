"""Console commands: thin wrappers over the package."""
