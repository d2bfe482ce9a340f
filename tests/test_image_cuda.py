"""The image protocols' CUDA path: bfloat16 autocast, channels-last tensors and stacked training on a GPU.

The ``full`` protocol trains this way (``amp``, ``channels_last``, ``stack``), and none of it runs on a
CPU, so these tests are skipped where CUDA is not available (CI); ``bench/device_check.sh`` runs them on a
GPU machine. They check what the GPU path must keep from the CPU one: networks learn the same task to the
same accuracy, stacked training is one-by-one training up to bfloat16 rounding (and leaves unused
operations untouched), and the ground truth ranks a degenerate cell last.
"""

from __future__ import annotations

import pytest
import torch

from hcdc.image.groundtruth import image_ground_truth
from hcdc.image.protocol import ImageProtocol
from hcdc.image.training import score_architecture, train_architecture, train_networks
from image_toys import CONV, CONV2, NONE, toy_images

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = "cuda"
FP32 = ImageProtocol(C=4, N=1, epochs=6, batch_size=16, seeds=(0,), num_archs=3, ipc=4)
GPU = FP32.with_(amp=True, channels_last=True)  # the full protocol's tricks


@pytest.fixture(scope="module")
def data():
    return toy_images(classes=3, train=30, val=20)


def test_bfloat16_channels_last_training_learns_as_cpu_training_does(data):
    x, y, xv, yv = data.normalized("train"), data.y_train, data.normalized("val"), data.y_val
    cpu = score_architecture(CONV, train_architecture(CONV, x, y, FP32, seed=0), xv, yv, FP32)
    params = train_architecture(CONV, x, y, GPU, seed=0, device=CUDA)
    assert all(p.device.type == CUDA and torch.isfinite(p).all() for p in params.values())
    before = score_architecture(CONV, train_architecture(CONV, x, y, GPU, seed=0, epochs=0, device=CUDA), xv, yv, GPU)
    after = score_architecture(CONV, params, xv, yv, GPU)
    assert after["loss"] < before["loss"] - 0.3 and after["acc"] > 0.6, (before, after)
    assert abs(after["acc"] - cpu["acc"]) <= 0.15 and abs(after["loss"] - cpu["loss"]) <= 0.3, (after, cpu)


def test_stacked_cuda_training_is_one_by_one_cuda_training_up_to_bfloat16_rounding(data):
    x, y, xv, yv = data.normalized("train"), data.y_train, data.normalized("val"), data.y_val
    jobs = [(CONV, 0), (CONV2, 1), (NONE, 2), (CONV, 3)]
    stacked = train_networks(jobs, x, y, GPU.with_(stack=4), device=CUDA)
    alone = train_networks(jobs, x, y, GPU, device=CUDA)
    for (arch, seed), p, q in zip(jobs, stacked, alone):
        init = train_architecture(arch, x, y, GPU, seed, epochs=0, device=CUDA)
        assert p.keys() == q.keys()
        for k in p:
            assert float((p[k] - q[k]).abs().max()) < 0.05, (arch.to_str(), k)
            if torch.equal(q[k], init[k]):  # untouched one by one (unused operation): untouched in the stack
                assert torch.equal(p[k], init[k]), k
        a, b = score_architecture(arch, p, xv, yv, GPU), score_architecture(arch, q, xv, yv, GPU)
        assert abs(a["acc"] - b["acc"]) <= 0.1 and abs(a["loss"] - b["loss"]) <= 0.1, (arch.to_str(), a, b)


def test_ground_truth_on_cuda_stacked_ranks_the_constant_network_last(data, tmp_path):
    archs = [CONV, NONE, CONV2]
    protocol = GPU.with_(seeds=(0, 1), stack=4)
    truth = image_ground_truth(data, archs, protocol, cache=tmp_path, progress=False, device=CUDA)
    assert truth.computed == 3 and torch.isfinite(truth.val_acc).all() and torch.isfinite(truth.val_loss).all()
    assert int(truth.val_acc.argmin()) == 1 and truth.val_acc[0] > 0.6 and truth.val_acc[2] > 0.6, truth.val_acc
    again = image_ground_truth(data, archs, protocol, cache=tmp_path, progress=False, device=CUDA)
    assert again.computed == 0 and torch.equal(again.val_acc, truth.val_acc)  # cached per device
