"""ece662: pruning small CNNs on CINIC-10 with hand-written NumPy + Numba layers.

Install for use:              pip install -e .
Install for the test suite:   pip install -e ".[test]"
Also run the torch oracle:    pip install -e ".[test,oracle]"
"""
from setuptools import find_packages, setup

setup(
    name="ece662",
    version="0.1.0",
    description="From-scratch NumPy + Numba CNN layers and pruning for the CINIC-10 course assignment",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ece662", "ece662.*"]),
    package_data={"ece662": ["models/*.npz", "models/*.md", "models/*.model", "models/*.json"]},
    install_requires=[
        "numpy>=1.24",
        "numba>=0.59",       # the jitted kernels (cache=True; NUMBA_DISABLE_JIT=1 still runs them)
        "matplotlib>=3.7",   # plots; brings Pillow, which decodes the CINIC-10 PNGs
        "tqdm>=4.60",        # progress bars for decoding 270,000 PNGs and for training: a well-kept,
                             # dependency-free library that handles terminals and notebooks alike
        "filelock>=3.12",    # the PNG cache is built under a lock: a well-kept cross-platform file lock
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "h5py>=3",
                 # the notebook tests execute notebooks/Pruning.ipynb and Pruning_solutions.ipynb; ipywidgets:
                 # tqdm.auto's notebook bars
                 # (without it tqdm.auto warns "IProgress not found" in every notebook that trains)
                 "nbclient>=0.7", "nbformat>=5", "ipykernel>=6", "ipywidgets>=8"],
        # an optional outside reference for the tests and the benchmarks; never imported by the library.
        # 2.13.0 is the CPU build that lies on the course machines' disk (other specs download gigabytes)
        # onnx and onnxruntime: the ONNX tests read/write graphs and check logits against onnxruntime,
        # the strongest CPU engine here; both stay test-only (onnxruntime is never imported by ece662)
        # keras (3.x, run on the torch backend; no TensorFlow) checks that real Keras reads the course's
        # ece662/models/tensorflow.model
        "oracle": ["torch==2.13.0", "onnx>=1.14", "onnxruntime>=1.16", "keras>=3,<4"],
        # mode='tensorflow' of load_model reads Keras .keras / .h5 files with h5py (no Keras needed)
        "tensorflow": ["h5py>=3"],
        # load_model(path, mode='onnx') and save_model(model, 'x.onnx'): the onnx package parses and
        # checks the protobuf graph (hand-parsing protobuf would be more code than the rest of the reader)
        "onnx": ["onnx>=1.14"],
        # to open the assignment notebook: jupyter notebook notebooks/Pruning.ipynb
        "notebook": ["notebook>=7", "ipywidgets>=8"],
    },
    entry_points={"console_scripts": ["ece662=ece662.cli:main"]},
)
