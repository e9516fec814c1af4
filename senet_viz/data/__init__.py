"""Images and stored gates: sources, decoding, ImageNet layouts, the Parquet store."""
