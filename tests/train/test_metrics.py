import pytest

from shiftkit.train.metrics import classification_metrics, confusion_matrix, save_confusion_png


def test_metrics_hand_computed():
    y = [0, 0, 0, 1, 1, 2]
    p = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["precision_b"] == pytest.approx(1 / 2) and m["recall_b"] == pytest.approx(1 / 2)
    assert m["precision_c"] == pytest.approx(1 / 2) and m["f1_c"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert m["support_a"] == 3


def test_metrics_bad_input_and_absent_class():
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 2)
    m = classification_metrics([0, 0], [0, 1], ["a", "b"])
    assert m["balanced_accuracy"] == pytest.approx(0.5)  # class b absent from y_true: not averaged
    assert m["recall_b"] == 0.0 and m["precision_b"] == 0.0


def test_confusion_png(tmp_path):
    p = save_confusion_png([[3, 1], [0, 4]], ["x", "y"], tmp_path / "f" / "c.png", "t")
    assert p.read_bytes()[:4] == b"\x89PNG"
