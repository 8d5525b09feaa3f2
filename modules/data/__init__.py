"""Data: image listing, sizes, buckets, captions, the training datasets, the latent and text-embedding caches."""
