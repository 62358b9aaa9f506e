import torch

from shiftkit.train.loaders import (
    ImageTensors,
    balanced_class_weights,
    balanced_weights,
    batch_order,
    collate,
    open_any,
)


def test_batch_order_is_a_pure_function():
    a = batch_order(20, 4, seed=0, epoch=3)
    assert a == batch_order(20, 4, seed=0, epoch=3)
    assert a != batch_order(20, 4, seed=0, epoch=4)
    assert a != batch_order(20, 4, seed=1, epoch=3)
    assert sorted(i for b in a for i in b) == list(range(20))
    assert batch_order(10, 4, 0, 0) and all(len(b) == 4 for b in batch_order(10, 4, 0, 0))  # drop_last
    assert sum(len(b) for b in batch_order(10, 4, 0, 0, drop_last=False)) == 10


def test_batch_order_shards_for_ddp_are_disjoint():
    r0 = batch_order(32, 4, 0, 0, rank=0, world_size=2)
    r1 = batch_order(32, 4, 0, 0, rank=1, world_size=2)
    assert len(r0) == len(r1) == 4
    assert not set(map(tuple, r0)) & set(map(tuple, r1))


def test_balanced_sampling_draws_classes_evenly():
    labels = [0] * 90 + [1] * 10
    w = balanced_weights(labels, 2)
    draws = [i for e in range(20) for b in batch_order(100, 10, 0, e, weights=w) for i in b]
    share = sum(labels[i] for i in draws) / len(draws)
    assert 0.4 < share < 0.6


def test_balanced_class_weights_by_hand():
    """w_c = N / (C n_c): 6 images, 3 classes with 3 / 2 / 1 images; an absent class counts as one image."""
    w = balanced_class_weights([0, 0, 0, 1, 1, 2], 3)
    assert torch.allclose(w, torch.tensor([6 / 9, 6 / 6, 6 / 3]))
    assert torch.allclose(balanced_class_weights(torch.tensor([0, 0, 1, 1]), 3), torch.tensor([4 / 6, 4 / 6, 4 / 3]))


def test_image_tensors_and_collate_drop_bad(tiny):
    (tiny["source"] / "left" / "zero.png").write_bytes(b"")
    ds = open_any(tiny["source"], task="classification")
    t = ImageTensors(ds, (12, 10), 3)
    items = [t[i] for i in range(len(t))]
    bad = [it for it in items if not it["ok"]]
    assert len(bad) == 1 and bad[0]["path"] == "left/zero.png" and "zero-byte" in bad[0]["error"]
    b = collate(items[:3] + bad)
    assert b["x"].shape == (3, 3, 12, 10) and b["x"].dtype == torch.float32
    assert 0.0 <= float(b["x"].min()) and float(b["x"].max()) <= 1.0
    assert b["bad"] == [("left/zero.png", bad[0]["error"])]
    assert b["y"].tolist() == [it["y"] for it in items[:3]]
