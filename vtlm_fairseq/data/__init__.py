"""Datasets, corpus readers and the region-feature store."""
