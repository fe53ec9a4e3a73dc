"""CINIC-10 on disk and in memory, below the course's ``ece662.data_utils`` (which keeps the course's import path).

* ``images``   -- the ten classes, CINIC-10's mean and std, and the input scalings (``normalize_images``)
* ``find``     -- where the data is (``find_data``): the path, ``$ECE662_DATA``, ``datasets/``, ``../shared/datasets``
* ``npz``      -- splits from an ``.npz`` archive, every header checked before its data is read
* ``tree``     -- the CINIC-10 PNG layout, through a keyed, locked, self-repairing uint8 cache
* ``download`` -- the official archive: resumable download, checks, safe unpack (``python -m ece662.data.download``)
"""
