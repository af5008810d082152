"""perchead: single-image 3D head reconstruction and editing with 3D Gaussians (PercHead, CVPR 2026)."""

import os as _os

# PyTorch and numba's kernels each run an OpenMP thread pool. With the default "active" wait policy an idle
# pool spins on its cores, which starves the other pool (and everything else) on small machines: measured
# on 2 cores under load, the CPU rasterizer's forward+backward went from 0.2-3.5 s to a steady 0.2-0.3 s with
# "passive". It only takes effect if perchead is imported before torch (the CLI always is); an explicit
# OMP_WAIT_POLICY in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
