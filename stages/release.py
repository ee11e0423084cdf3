"""Writing build/release/ (placeholder: being implemented)."""
