"""Networks: the registry, the curated zoo, weights and model files, preprocessing, the embedded model."""
