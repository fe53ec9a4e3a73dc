"""ece662: pruning small CNNs on CINIC-10, from scratch in NumPy + Numba.

One vocabulary for shapes, used by every docstring, kernel and test (NCHW, as in torch):

    x    : (N, C, H, W)      a batch of N images / feature maps with C channels
    w    : (F, C, HH, WW)    F conv filters of size HH x WW
    b    : (F,)              one bias per filter
    out  : (N, F, H', W')    H' = 1 + (H + 2*pad - HH) // stride   (ece662.layers.conv_output_size)
    linear weight : (out_features, in_features)

Arrays are float32.  Images on disk are uint8 (N, H, W, 3) and become normalised float32
NCHW batch by batch (``ece662.data_utils``).  A pruned parameter ``weight`` has ``weight_orig``,
a boolean ``weight_mask`` of the same shape, and ``weight = weight_orig * weight_mask``
(``ece662.pruning``, with torch.nn.utils.prune's names).

Where to start: ``ece662.layers.reference`` (the spec of every op), ``ece662.pruning.masks``
(how masks are chosen), and ARCHITECTURE.md (the floors of the package and a reading order).
"""
from ece662.io import load_model, save_model
from ece662.models import default_convnet

__version__ = "0.1.0"
__all__ = ["default_convnet", "load_model", "save_model", "__version__"]
