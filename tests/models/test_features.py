import numpy as np
import pytest
import torch
from PIL import Image

from shiftkit.errors import ShiftkitError
from shiftkit.models.backbones import SmallCNN
from shiftkit.models.features import FeatureCache, extract_features, model_key, preprocess


@pytest.fixture()
def backbone():
    torch.manual_seed(0)
    return SmallCNN(in_channels=3, width=8)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    imgs = [rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8) for i in range(n - 1)]
    imgs.append(rng.integers(0, 256, (16, 16), dtype=np.uint8))  # gray, 2-D
    return imgs


def test_preprocess_by_hand():
    img = np.array([[[0], [255]], [[51], [102]]], dtype=np.uint8)  # 2x2 gray
    x = preprocess([img], 2, in_channels=3)
    want = torch.tensor([[0.0, 1.0], [0.2, 0.4]])
    assert x.shape == (1, 3, 2, 2)
    for c in range(3):
        torch.testing.assert_close(x[0, c], want)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 255
    torch.testing.assert_close(preprocess([rgb], 2, in_channels=1), torch.full((1, 1, 2, 2), 1 / 3))
    assert preprocess([rgb], (8, 12), 3).shape == (1, 3, 8, 12)


def test_features_match_the_backbone_and_are_cached(backbone, tmp_path):
    imgs = _images(6)
    data = [(im, i % 3) for i, im in enumerate(imgs)]
    fs = extract_features(backbone, data, size=28, batch_size=4, device="cpu", cache_dir=tmp_path, progress=False)
    assert fs.features.shape == (6, backbone.out_channels) and fs.from_cache == 0
    assert fs.labels.tolist() == [0, 1, 2, 0, 1, 2]
    backbone.eval()
    with torch.no_grad():
        direct = backbone.pooled(preprocess(imgs, 28, 3)).numpy()
    np.testing.assert_allclose(fs.features, direct, rtol=1e-4, atol=1e-5)
    again = extract_features(backbone, data, size=28, device="cpu", cache_dir=tmp_path, progress=False)
    assert again.from_cache == 6
    np.testing.assert_array_equal(again.features, fs.features)
    # a different size or changed pixels miss the cache; changed weights change the key
    other = extract_features(backbone, imgs, size=32, device="cpu", cache_dir=tmp_path, progress=False)
    assert other.from_cache == 0 and other.labels is None
    imgs[0] = imgs[0].copy()
    imgs[0][0, 0, 0] ^= 1
    partial = extract_features(backbone, imgs, size=28, device="cpu", cache_dir=tmp_path, progress=False)
    assert partial.from_cache == 5
    k = model_key(backbone, 28)
    with torch.no_grad():
        backbone.stage1[0].weight.add_(1.0)
    assert model_key(backbone, 28) != k


def test_training_mode_is_restored_and_no_cache_mode(backbone, tmp_path):
    backbone.train()
    fs = extract_features(backbone, _images(3), size=28, device="cpu", use_cache=False, cache_dir=tmp_path, progress=False)
    assert backbone.training and fs.from_cache == 0
    assert not any(tmp_path.iterdir())


class _FolderDataset:
    """Duck-typed stand-in for a shiftkit.data Dataset (root, paths(), labels(), task, ds[i])."""

    task = "classification"

    def __init__(self, root, names, labels):
        self.root, self._names, self._labels, self.loads = root, names, labels, 0

    def __len__(self):
        return len(self._names)

    def paths(self):
        return list(self._names)

    def labels(self):
        return list(self._labels)

    def __getitem__(self, i):
        from shiftkit.data import Sample

        self.loads += 1
        return Sample(np.asarray(Image.open(self.root / self._names[i]).convert("RGB")), self._labels[i], self._names[i])


def test_dataset_files_are_keyed_by_content_and_not_decoded_on_hit(backbone, tmp_path):
    root = tmp_path / "ds"
    names = []
    for i, im in enumerate(_images(5, seed=1)[:4]):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        names.append(f"c{i % 2}/{i}.png")
        Image.fromarray(im).save(root / names[-1])
    ds = _FolderDataset(root, names, [0, 1, 0, 1])
    cache = tmp_path / "cache"
    fs = extract_features(backbone, ds, size=28, device="cpu", cache_dir=cache, progress=False)
    assert ds.loads == 4 and fs.paths == names and fs.labels.tolist() == [0, 1, 0, 1]
    assert all(h.startswith("file:") for h in fs.hashes)
    ds2 = _FolderDataset(root, names, [0, 1, 0, 1])
    fs2 = extract_features(backbone, ds2, size=28, device="cpu", cache_dir=cache, progress=False)
    assert ds2.loads == 0 and fs2.from_cache == 4
    np.testing.assert_array_equal(fs.features, fs2.features)


def test_cache_shards_are_merged(tmp_path):
    c = FeatureCache(tmp_path, "k" * 64)
    for i in range(20):
        c.add([f"h{i}"], np.full((1, 3), i, np.float32))
    assert len(list(c.dir.glob("part-*.npz"))) <= 17
    c2 = FeatureCache(tmp_path, "k" * 64)
    assert len(c2) == 20 and c2.get("h7").tolist() == [7, 7, 7]
    # a different key in the same folder prefix is ignored
    assert len(FeatureCache(tmp_path, "k" * 24 + "x" * 40)) == 0


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"size": 0}, {"size": (28,)}])
def test_bad_arguments(backbone, kw, tmp_path):
    with pytest.raises(ShiftkitError):
        extract_features(backbone, _images(2), device="cpu", cache_dir=tmp_path, progress=False, **kw)
    with pytest.raises(ShiftkitError):
        extract_features(torch.nn.Linear(2, 2), _images(2), cache_dir=tmp_path)
    with pytest.raises(ShiftkitError):
        extract_features(backbone, [np.zeros((4, 4, 2), np.uint8)], size=28, device="cpu", cache_dir=tmp_path, progress=False)


def test_dataset_folder_path_through_open_dataset(backbone, tmp_path):
    pytest.importorskip("shiftkit.data.formats")
    root = tmp_path / "folder"
    for i, im in enumerate(_images(4, seed=2)[:3]):
        (root / f"k{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / f"k{i % 2}" / f"{i}.png")
    fs = extract_features(backbone, str(root), size=28, device="cpu", cache_dir=tmp_path / "c", progress=False)
    assert fs.features.shape == (3, backbone.out_channels)
    assert sorted(fs.labels.tolist()) == [0, 0, 1]
