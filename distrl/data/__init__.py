"""Datasets in Zarr: demonstrations and replay checkpoints share one layout."""
