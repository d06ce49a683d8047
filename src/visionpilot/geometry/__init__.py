"""Camera model, frames, rigs, 3D boxes and projections: pure functions over numpy arrays."""
