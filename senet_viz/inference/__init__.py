"""Running networks over image sets: batched runs (run, with RunOptions), their decode pipeline and pixel cache,
their precision policy, and many processes under torchrun (shards, distributed)."""
