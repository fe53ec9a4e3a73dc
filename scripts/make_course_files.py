"""Write the course notebook's model files from the weights ece662 ships.

    python scripts/make_course_files.py           # (re)write them
    python scripts/make_course_files.py --check   # exit 1 if they differ from what would be written

The course notebook loads ``os.path.join('ece662', 'models', f'{mode}.model')`` with
``mode = 'torch'`` or ``'tensorflow'``.  Both files hold the weights of
``ece662/models/default_convnet.npz`` and are made here, without torch or Keras:

* ``ece662/models/torch.model``      -- a PyTorch state_dict (``torch.save``'s zip format, keys
  ``conv1.weight`` ... ``fc.bias``); real torch reads it with ``torch.load(path, weights_only=True)``;
* ``ece662/models/tensorflow.model`` -- a Keras 3 ``.keras`` file of the same network (NHWC).

Run this again whenever the shipped ``.npz`` changes; a test fails until you do.
"""
import argparse
import os
import sys
import tempfile

from ece662.io import load_model
from ece662.formats.keras_format import save_keras
from ece662.formats.torch_format import save_torch_state_dict

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ece662", "models")
NAMES = ("torch.model", "tensorflow.model")


def write_course_files(folder=MODELS, npz=os.path.join(MODELS, "default_convnet.npz")):
    """Write ``torch.model`` and ``tensorflow.model`` into ``folder``; return their paths."""
    model = load_model(npz)
    state = model.state_dict()
    pruned = [k for k in state if k.endswith(("_orig", "_mask"))]
    if pruned:
        raise ValueError(f"{npz} holds a pruned model ({pruned[:2]}...); the course files are dense "
                         f"state_dicts: ship a dense model, or fold the masks in with prune.remove first")
    torch_path, keras_path = (os.path.join(folder, n) for n in NAMES)
    save_torch_state_dict(state, torch_path, archive_name="torch")
    # save_keras insists on the .keras name real Keras reads; the course calls the file tensorflow.model
    save_keras(model, keras_path + ".keras")
    os.replace(keras_path + ".keras", keras_path)
    return torch_path, keras_path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = ap.parse_args(argv)
    if not args.check:
        for path in write_course_files():
            print("wrote", os.path.relpath(path))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        write_course_files(tmp)
        stale = [n for n in NAMES if not os.path.isfile(os.path.join(MODELS, n)) or
                 open(os.path.join(MODELS, n), "rb").read() != open(os.path.join(tmp, n), "rb").read()]
    for n in stale:
        print(f"ece662/models/{n} does not match ece662/models/default_convnet.npz; "
              f"run python scripts/make_course_files.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
