"""The release: benchmark files in BSA's format, the dataset card and pictures, Croissant metadata."""
