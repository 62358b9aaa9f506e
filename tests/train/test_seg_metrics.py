"""Segmentation metrics against hand-computed confusion matrices."""

import math

import pytest
import torch

from shiftkit.train.seg_metrics import SegMeter, iou_per_class, seg_confusion, seg_metrics


def test_confusion_hand_with_ignore():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 0, 2]]])
    m = seg_confusion(pred, target, 3)
    assert m.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_iou_miou_pixel_accuracy_hand():
    m = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    iou = iou_per_class(m)
    # class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 0 / (1 + 0 - 0) = 0
    assert iou.tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    r = seg_metrics(m, ["a", "b", "c"])
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert r["pixel_accuracy"] == pytest.approx(3 / 5)
    assert r["mean_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert r["iou_b"] == pytest.approx(2 / 3)


def test_absent_class_left_out_of_miou():
    m = torch.tensor([[3, 0, 0], [0, 1, 0], [0, 0, 0]])
    assert math.isnan(iou_per_class(m)[2].item())
    r = seg_metrics(m)
    assert r["miou"] == pytest.approx(1.0)
    assert r["iou_2"] is None


def test_meter_batches_equal_one_shot_and_accepts_logits():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (6, 5, 5), generator=g)
    target[0, 0, :] = 255
    logits = torch.randn(6, 4, 5, 5, generator=g)
    meter = SegMeter(4)
    meter.update(logits[:2], target[:2])
    meter.update(logits[2:].argmax(1), target[2:])
    whole = seg_confusion(logits.argmax(1), target, 4)
    assert torch.equal(meter.confusion, whole)
    assert int(whole.sum()) == 6 * 25 - 5
    assert meter.compute()["confusion_matrix"] == whole.tolist()


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        seg_confusion(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="outside"):
        seg_confusion(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 7]]), 3)
    with pytest.raises(ValueError):
        seg_metrics(torch.eye(2, dtype=torch.long), ["only-one"])
