"""Deep Compression (Han, Mao & Dally, ICLR 2016): the pruned model really gets smaller.

Pruning alone leaves a model at its dense size on disk (a mask is a mask; the zeros are saved).  The paper's
three stages turn it into a small file, each stage here in its own readable file:

1. **pruning** (``ece662.pruning``), then sparse storage: the survivors and their relative positions
   (:mod:`~ece662.compress.sparse_index`; 8-bit indices for conv layers, 5-bit for fully connected ones);
2. **trained quantization**: per layer, k-means on the survivors (:mod:`~ece662.compress.kmeans`, linear
   initialisation) to ``2**bits`` shared values, then the centroids fine-tuned with the summed gradients of
   their weights (:mod:`~ece662.compress.sharing`, through the ``Trainer``, masks held); the plain
   comparison is symmetric per-channel int8 (:mod:`~ece662.compress.int8`);
3. **Huffman coding** (Huffman, 1952) of the weight indices and of the positions
   (:mod:`~ece662.compress.huffman`, canonical codes whose lengths are stored in the file).

:mod:`~ece662.compress.file` writes and reads the result (``save_model(model, path, compress=True)``,
``load_model(path)``); :mod:`~ece662.compress.table` measures each stage, layer by layer, for the table of
``python -m ece662 compress``.

A few calls::

    from ece662 import load_model, save_model
    from ece662.compress import share_weights, finetune_centroids
    net = load_model('pruned-90')
    shared = share_weights(net, bits=4)                    # k-means per layer, weights = centroids
    finetune_centroids(net, shared, X_train, y_train)      # the paper's Fig. 3 (uint8 NHWC images)
    save_model(net, 'pruned-90-4bit.npz', compress=True)   # about 2.8 kB of numbers
    load_model('pruned-90-4bit.npz')                       # the same weights, bit for bit, with the masks

This part stands on floor 3 (``ARCHITECTURE.md``): it uses layers, pruning, formats and training, and
``ece662.io`` above it picks its reader.  ``huffman.py``, ``sparse_index.py`` and ``kmeans.py`` import
nothing of the package.
"""
from ece662.compress.file import is_compressed_file, load_compressed, save_compressed
from ece662.compress.int8 import quantize_int8
from ece662.compress.sharing import CentroidSGD, SharedWeights, centroid_gradients, finetune_centroids, share_weights

__all__ = ["CentroidSGD", "SharedWeights", "centroid_gradients", "finetune_centroids", "is_compressed_file", "load_compressed",
           "quantize_int8", "save_compressed", "share_weights"]
