"""Running networks over image sets: batched runs, and many processes under torchrun."""
