"""Bounds of everything a user hands the trainer: refused before anything is generated, read or
allocated.  One place, so ``train``, ``eval`` and ``search`` (and a search history read back)
hold the same values to the same bounds.  Documented in docs/search.md ("Training data")."""
from __future__ import annotations

MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_THREADS = 1_024
MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy's generators take 0 .. 2^63-1 (and more) alike
MAX_LR = 1e6
MAX_WEIGHT_DECAY = 1e6

MAX_CLASSES = 65_536  # labels must lie in [0, MAX_CLASSES)
MAX_DATA_BYTES = 2 * 1024**3  # the arrays of a .npz, as stored and as float32, each
MAX_NPZ_MEMBERS = 64  # arrays in a .npz (x, y, x_val, y_val are read; others are ignored)

# mnist1d: the generator makes ~4,000 samples/s here (100,000 in ~25 s)
MNIST1D_SAMPLES = (100, 100_000)
MNIST1D_LENGTH = (8, 4_096)
MNIST1D_VALUES = 2**25  # samples x length: 128 MiB of float32
