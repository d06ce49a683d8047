"""Small shared helpers (atomic file writes, config handling)."""
