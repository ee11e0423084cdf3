"""Text machinery the stages share: character classes, MinHash, sentence embeddings, KenLM training."""
