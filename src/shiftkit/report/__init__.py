"""Pictures people look at instead of reading: grids, charts, segmentation overlays."""
