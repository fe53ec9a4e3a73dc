"""Hand-written layers (NCHW float32) with Numba kernels and plain-loop reference twins.

* ``modules``    -- Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Linear, ReLU, LeakyReLU,
  Flatten, Dropout, Dropout2d, BatchNorm2d, BatchNorm1d, Sequential
* ``plan``       -- how an eval-mode network runs: live channels, fusion, kernel choice
* ``functional`` -- the fast ops the layers call (checks + allocation + a kernel)
* ``kernels``    -- the Numba loops themselves, numbered versions
* ``reference``  -- the plain-loop NumPy spec of every op
* ``shapes``     -- the one output-size formula
"""
from ece662.layers.modules import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout,
                                   Dropout2d, Flatten, LAYER_TYPES, LeakyReLU, Linear, MaxPool2d, Module, ReLU,
                                   Sequential, from_spec)
from ece662.layers.shapes import conv_output_size

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "Dropout", "Dropout2d",
           "Flatten", "LAYER_TYPES", "LeakyReLU", "Linear", "MaxPool2d", "Module", "ReLU", "Sequential", "from_spec",
           "conv_output_size"]
