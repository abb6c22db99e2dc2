"""Images in and pictures out: loading, overlays, boxes from heatmaps and the pointing game."""
