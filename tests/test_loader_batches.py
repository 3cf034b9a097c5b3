"""What a loader yields, checked in every stage (dmcpfx.batches): not pairs of tensors, empty
batches, and inputs the model cannot take (wrong channels, float64, uint8) are one line each,
naming the inputs next to the example inputs the model was analyzed with."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import dmcpfx
from dmcpfx.accuracy import evaluate
from dmcpfx.batches import model_fails_on, unpack
from dmcpfx.errors import ConfigError
from dmcpfx.search.bn import recalibrate_bn
from dmcpfx.search.evaluation import evaluate_space

X = torch.randn(1, 3, 8, 8)
Y = torch.tensor([1, 3])


@pytest.fixture(scope="module")
def tiny():
    from dmcpfx.demo_models import small_resnet

    torch.manual_seed(0)
    return small_resnet(num_classes=4, width=4).eval()


@pytest.fixture(scope="module")
def space(tiny):
    """One search space for the tests below: each stage fails on its first batch, before any step."""
    return dmcpfx.instrument(copy.deepcopy(tiny), X)


@pytest.mark.parametrize("batch,said", [
    ({"pixel_values": torch.randn(2, 3, 8, 8), "labels": Y}, r"must yield \(inputs, labels\) pairs, got dict"),
    (torch.randn(2, 3, 8, 8), r"pairs, got Tensor"),
    ((np.zeros((2, 3, 8, 8), np.float32), np.array([1, 3])),
     r"must yield tensors \(inputs, labels\), got \(ndarray, ndarray\)"),
    ((torch.randn(0, 3, 8, 8), Y[:0]), r"a batch without examples \(inputs float32 of shape \(0, 3, 8, 8\)\)"),
])
def test_batches_that_are_not_pairs_of_tensors_are_one_line_in_every_stage(tiny, space, batch, said):
    with pytest.raises(ConfigError, match=said):
        unpack(batch)
    with pytest.raises(ConfigError, match=said):
        evaluate(tiny, [batch])
    with pytest.raises(ConfigError, match=said):
        dmcpfx.retrain(copy.deepcopy(tiny), [batch], epochs=1, progress=False)
    with pytest.raises(ConfigError, match=said):
        dmcpfx.search(space, [batch], target=0.7, epochs=1, device="cpu", calib_batches=0, progress=False)


def test_extra_batch_items_are_ignored_by_every_stage(tiny):
    """``(inputs, labels, meta)`` is what search takes; evaluate and retrain take it too."""
    batch = (torch.randn(2, 3, 8, 8), Y, torch.zeros(2))
    assert evaluate(tiny, [batch]) == evaluate(tiny, [batch[:2]])
    dmcpfx.retrain(copy.deepcopy(tiny), [batch], epochs=1, progress=False)


@pytest.mark.parametrize("images,differ", [
    (torch.randn(2, 1, 8, 8), r"differ in dimension 1"),
    (torch.randn(2, 3, 8, 8, dtype=torch.float64), r"differ in dtype"),
    (torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8), r"differ in dtype"),
    (torch.randn(2, 3, 8), r"differ in number of dimensions"),
])
def test_inputs_the_model_cannot_take_name_the_example_inputs(tiny, space, images, differ):
    shown = str(images.dtype).replace("torch.", "")
    pattern = (rf"^{{}}: the model fails on the loader's inputs \({shown} of shape \({images.shape[0]}, .*\)\), "
               rf"which {differ} from the example inputs it was analyzed with \(float32 of shape \(1, 3, 8, 8\)\): ")
    with pytest.raises(ConfigError, match=pattern.format("search")):
        dmcpfx.search(space, [(images, Y)], target=0.7, epochs=1, device="cpu", calib_batches=0, progress=False)
    with pytest.raises(ConfigError, match=pattern.format("evaluate")):
        evaluate_space(space, [(images, Y)], calib_batches=0)
    with pytest.raises(ConfigError, match=pattern.format("BN calibration")):
        recalibrate_bn(space, [(images, Y)], 1, device="cpu")
    first = rf"the model fails on the loader's first batch \(inputs {shown} of shape \({images.shape[0]}, "
    with pytest.raises(ConfigError, match=r"^retrain .*: " + first):
        dmcpfx.retrain(copy.deepcopy(tiny), [(images, Y)], epochs=1, progress=False)
    with pytest.raises(ConfigError, match=r"^evaluate: " + first):
        evaluate(tiny, [(images, Y)])


def test_errors_on_inputs_like_the_example_and_out_of_memory_stay_themselves():
    """Only a mismatch is translated: the model's own bug on example-like inputs, and an OOM, are raised as is."""
    x = torch.randn(4, 3, 8, 8)
    with pytest.raises(RuntimeError, match="the model's own bug"):
        with model_fails_on("search", x, X):  # the batch size alone differs: not the loader's fault
            raise RuntimeError("the model's own bug")
    with pytest.raises(torch.OutOfMemoryError):
        with model_fails_on("retrain", x, None):
            raise torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(ConfigError, match=r"^retrain: .*first batch \(inputs float32 of shape \(4, 3, 8, 8\)\): boom$"):
        with model_fails_on("retrain", x, None):
            raise RuntimeError("boom\nsecond line")
