"""Hand-written layers (NCHW float32) with Numba kernels and plain-loop reference twins.

From the bottom: ``shapes`` (the one output-size formula), ``reference`` (the plain-loop NumPy spec of every
op), ``kernels`` (the Numba loops, numbered versions), ``checks`` (input checks with errors a student can act
on), ``functional`` (check, pad, allocate, call a kernel), ``kernels_sparse`` (the unstructured-sparse conv)
and ``kernels_train`` (the training conv), ``kernel_choice`` (which kernel one conv runs, and why),
``module`` (``Module``, the base of every layer), ``modules`` (Conv2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Linear, ReLU, LeakyReLU, Flatten, Dropout,
Dropout2d, BatchNorm2d, BatchNorm1d), ``plan`` (how an eval network runs: live channels, fusion, kernels) and
``sequential`` (``Sequential``, ``from_spec``).  ``README.md`` here walks through them.
"""
from ece662.layers.module import Module
from ece662.layers.modules import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout,
                                   Dropout2d, Flatten, LeakyReLU, Linear, MaxPool2d, ReLU)
from ece662.layers.sequential import LAYER_TYPES, Sequential, from_spec
from ece662.layers.shapes import conv_output_size

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "Dropout", "Dropout2d",
           "Flatten", "LAYER_TYPES", "LeakyReLU", "Linear", "MaxPool2d", "Module", "ReLU", "Sequential", "from_spec",
           "conv_output_size"]
