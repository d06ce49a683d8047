"""Drawing frames, labels and predictions (previews, prediction images, BEV panels)."""
