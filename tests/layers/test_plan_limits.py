"""What the plan refuses before it runs: activations beyond a budget, and weights that are finite
as stored but not as the network computes them (issue 25).  No optional package needed."""
import json
import os
import re
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from helpers import REPO
from ece662.layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, LeakyReLU, Linear, ReLU,
                           Sequential)
from ece662.layers import plan
from ece662.models import default_convnet


def images(n=2):
    return np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32)


# ============================================================================ activation budget
def oversized_nets():
    """A conv with padding 3000 (a 6032x6032 padded input) and one with 20,000 1x1 filters (20 M values
    per image), each before a global pool: (net, what, shape of the activation)."""
    def net(conv):
        return Sequential(conv, ReLU(), AdaptiveAvgPool2d(1), Flatten(), Linear(conv.out_channels, 2, seed=1))
    return [(net(Conv2d(3, 1, 3, padding=3000, seed=0)), "a zero-padded input", "(N, 3, 6032, 6032)"),
            (net(Conv2d(3, 20_000, 1, seed=0)), "an output", "(N, 20000, 32, 32)")]


def oversized_message(what, shape):
    return (rf"0 \(Conv2d\) would make {what} of shape {re.escape(shape)}: .* values per input, "
            rf"more than the 16,777,216 .*MAX_ACTIVATION_VALUES")


def test_an_activation_over_the_budget_is_refused_when_the_plan_is_built():
    """check_input_shape and the plan refuse both networks, naming the layer, the activation and
    the budget, without allocating anything the size of that activation."""
    for net, what, shape in oversized_nets():
        tracemalloc.start()
        try:
            for call in (lambda: plan.check_input_shape(net, (3, 32, 32)), lambda: net.eval().plan((3, 32, 32))):
                with pytest.raises(ValueError, match=oversized_message(what, shape)):
                    call()
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 64 * 2 ** 20, f"refusing allocated {peak / 2 ** 20:.0f} MB"


CHILD = """
import json, resource
import numpy as np
import test_plan_limits as t
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))   # 1 GiB more
x = np.zeros((10, 3, 32, 32), np.float32)
out = []
for net, what, shape in t.oversized_nets():
    for training in (False, True):
        net.train(training)
        try:
            net(x)
            out.append([what, "ok", ""])
        except BaseException as e:
            out.append([what, type(e).__name__, str(e)])
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_a_forward_pass_over_the_budget_is_refused_under_a_memory_limit():
    """Both networks given 10 images, in eval and training mode, in a child process allowed 1 GiB
    more than it starts with: a ValueError each (before the fix: gigabytes of numpy allocations and
    a MemoryError traceback).  The check runs before any kernel is chosen, so kernels= does not matter."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, here, os.path.join(REPO, "tests")]))
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, f"the child crashed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 4
    shapes = {what: shape for _, what, shape in oversized_nets()}
    for what, kind, text in results:
        assert kind == "ValueError", f"{what}: {kind}: {text[:300]}"
        assert re.search(oversized_message(what, shapes[what]), text), text


def test_networks_within_the_budget_still_run():
    """The course CNN, and a conv whose padded input is just under the budget, run as before."""
    net = default_convnet(seed=0).eval()
    assert net(images(2)).shape == (2, 10)
    # (32 + 2p)^2 <= 2**24 = 4096^2 up to p = 2032: the largest padding of a 1-channel 32x32 input
    ok = Sequential(Conv2d(1, 1, 3, padding=2032, seed=0), AdaptiveAvgPool2d(1), Flatten())
    assert plan.first_oversized(ok, (1, 32, 32)) is None
    assert plan.first_oversized(Sequential(Conv2d(1, 1, 3, padding=2033, seed=0)), (1, 32, 32))[2] == \
        "zero-padded input"


# ============================================================================ finite computation
def conv_bn_net():
    return Sequential(Conv2d(3, 4, 3, seed=0), BatchNorm2d(4), LeakyReLU(0.1), AdaptiveAvgPool2d(1),
                      Flatten(), Linear(4, 2, seed=1)).eval()


@pytest.mark.parametrize("damage, message", [
    ("negative running_var", r"layer '1' \(BatchNorm2d\): running_var holds 1 negative"),
    ("variance just below 0", r"layer '1' \(BatchNorm2d\): running_var holds 1 negative"),
    ("fold overflows", r"layer '1' \(BatchNorm2d\): folded into '0', the weights holds 27 NaN or infinite"),
    ("scale overflows", r"layer '1' \(BatchNorm2d\): its scale .* holds 1 NaN or infinite"),
    ("inf weight", r"layer '5' \(Linear\): weight holds 1 NaN or infinite"),
    ("slope set to 1e308", r"layer '2' \(LeakyReLU\): negative_slope 1e\+308 is not finite as float32"),
])
def test_weights_that_are_not_finite_as_computed_are_refused(damage, message):
    """check_finite_computation refuses what a forward pass would turn into NaN logits: a negative
    running variance, a batch norm whose fold into the conv overflows float32, an infinite weight,
    a LeakyReLU slope beyond float32; each message names the source and the layer."""
    net = conv_bn_net()
    bn = net[1]
    if damage == "negative running_var":
        bn.running_var = np.array([1, 1, -0.5, 1], np.float32)
    elif damage == "variance just below 0":  # var + eps == 0: a division by zero
        bn.running_var = np.array([1, 1, 1, -1e-5], np.float32)
    elif damage == "fold overflows":        # 1e20 and 1e20 are finite, their product is not in float32
        net[0].weight = np.full((4, 3, 3, 3), 1e20, np.float32)
        bn.weight = np.array([1, 1, 1e20, 1], np.float32)
    elif damage == "scale overflows":
        bn.weight = np.array([1, 1, 1e38, 1], np.float32)
        bn.running_var = np.array([1, 1, 0, 1], np.float32)
        bn.eps = 1e-30
    elif damage == "inf weight":
        net[5].weight[0, 1] = np.inf
    else:
        net[2].negative_slope = 1e308
    with pytest.raises(ValueError, match=r"net\.npz: " + message):
        plan.check_finite_computation(net, "net.npz")


def test_a_healthy_model_passes_the_finite_check():
    """The course CNN, a pruned one and a conv + batch norm network pass unchanged."""
    import ece662.pruning as prune
    net = default_convnet(seed=0)
    prune.ln_structured(net.conv1, "weight", amount=0.5, n=2, dim=0)
    for model in (net, conv_bn_net()):
        plan.check_finite_computation(model, "net.npz")


@pytest.mark.parametrize("make, match", [
    (lambda: LeakyReLU(1e308), "not a finite float32"),
    (lambda: LeakyReLU(float("nan")), "not a finite float32"),
    (lambda: BatchNorm2d(3, eps=float("nan")), "eps > 0"),
    (lambda: BatchNorm2d(3, eps=float("inf")), "eps > 0"),
])
def test_layers_refuse_non_finite_arguments(make, match):
    """A LeakyReLU slope or a batch norm eps that is NaN or beyond float32 is refused when the layer is made."""
    with pytest.raises(ValueError, match=match):
        make()


# ============================================================================ layers around given weights
def test_from_weights_builds_a_layer_without_drawing_random_weights():
    """Conv2d.from_weights and Linear.from_weights compute with the given arrays (no copy of
    float32 ones) and allocate next to nothing: no random initialisation first."""
    w = np.random.default_rng(0).standard_normal((64, 32, 3, 3)).astype(np.float32)
    b = np.arange(64, dtype=np.float32)
    tracemalloc.start()
    conv = Conv2d.from_weights(w, b, stride=2, padding=1)
    fc = Linear.from_weights(w.reshape(64, -1), b)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < w.nbytes // 4, peak
    assert conv.weight is w and fc.weight.base is w
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == \
        (32, 64, (3, 3), 2, 1)
    ref = Conv2d(32, 64, 3, stride=2, padding=1)
    ref.weight, ref.bias = w, b
    x = np.random.default_rng(1).standard_normal((2, 32, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(conv(x), ref(x))
    assert Conv2d.from_weights(w).bias is None
    with pytest.raises(ValueError, match=r"bias of shape \(64,\)"):
        Conv2d.from_weights(w, np.zeros(3))
    with pytest.raises(ValueError, match="stride"):
        Conv2d.from_weights(w, stride=0)
