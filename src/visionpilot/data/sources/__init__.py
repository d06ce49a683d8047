"""Dataset sources, one file (or folder) per format."""
