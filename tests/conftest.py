"""Suite-wide settings: CPU-friendly torch defaults for every test."""

import torch

# Denormal floats make CPU convolutions of random-init models orders of magnitude slower.
torch.set_flush_denormal(True)
