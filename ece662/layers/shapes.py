"""Output-size arithmetic shared by every implementation and every test.

One helper, one formula: a window of size ``k`` slid with ``stride`` over an
axis of length ``n`` padded by ``pad`` zeros on each side fits

    n' = 1 + (n + 2*pad - k) // stride

times.  Conv2d and MaxPool2d both use it; so do the tests.
"""


def conv_output_size(n, k, stride=1, pad=0):
    """Number of window positions along one spatial axis.

    Parameters
    ----------
    n : int
        Input length along the axis (H or W).
    k : int
        Window (kernel) length along the axis (HH or WW).
    stride : int
        Step between windows.
    pad : int
        Zeros added on each side.

    Returns
    -------
    int
        ``1 + (n + 2*pad - k) // stride``.

    Raises
    ------
    ValueError
        If the window does not fit into the padded input even once.

    Examples
    --------
    >>> conv_output_size(32, 5)          # conv1 of the default network
    28
    >>> conv_output_size(28, 2, stride=2)
    14
    >>> conv_output_size(7, 3, stride=2, pad=1)
    4
    """
    if n + 2 * pad < k:
        raise ValueError(
            f"a window of size {k} does not fit an input of size {n} padded by {pad} "
            f"(padded size {n + 2 * pad}); use a smaller kernel or more padding"
        )
    return 1 + (n + 2 * pad - k) // stride
