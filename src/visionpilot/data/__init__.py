"""Data: Frame schema, vocabularies, regions, splits, sources, transforms and the datamodule."""
