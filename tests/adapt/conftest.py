"""Helpers shared by the adaptation tests."""

import torch


class UnlabelledImages(torch.utils.data.Dataset):
    """Target images as the engine's loaders yield them: masks all ignored (255), every item readable."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        h, w = self.x.shape[-2:]
        return {"x": self.x[i], "y": torch.full((h, w), 255), "index": i, "ok": True, "path": str(i), "error": ""}
