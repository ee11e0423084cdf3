"""A static-embedding prefilter distilled on this machine from a sentence-transformers model (no hub download).

Each vocabulary token's vector is the model's own sentence embedding of that token alone (`[CLS] t [SEP]`,
mean-pooled, as the model pools a sentence); a text's vector is the mean of its tokens' vectors. That costs a
tokeniser pass and a table lookup per row instead of a transformer pass, and ranks paraphrases close enough
to the model's cosine to find the model's pairs at a lower threshold: `embeddings.pairs_of` takes the pairs
this encoder scores at `threshold - margin` as candidates and scores only their rows with the model itself
(recall against the model measured in docs/dedup.md). The table (30,522 x 384 float32 for MiniLM, 45 MiB) is
computed once with the model's ONNX export and kept next to it in the cache directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TABLE_VERSION = 1  # bump when the distillation changes, so cached tables are rebuilt
_BATCH = 1024  # vocabulary tokens run through the model at once


def token_table(model_dir: Path, cache_dir: Path) -> np.ndarray:
    """(vocabulary, dim) float32: the model's embedding of each token alone, made once and cached."""
    from bsa.text.onnx_encoder import exported, weights_hash

    path = cache_dir / f"{model_dir.name}-{weights_hash(model_dir)}" / f"static-v{TABLE_VERSION}.npy"
    if path.exists():
        return np.load(path)
    onnx_file = exported(model_dir, cache_dir)
    table = _distil(model_dir, onnx_file)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, table)
    partial.replace(path)
    return table


def _distil(model_dir: Path, onnx_file: Path) -> np.ndarray:
    import onnxruntime
    from tokenizers import Tokenizer

    from bsa.text.onnx_encoder import usable_cores

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise ValueError(f"{model_dir}: the static prefilter needs a BERT-style tokenizer with [CLS] and [SEP]")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = usable_cores()
    session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    size = tokenizer.get_vocab_size()
    parts = []
    for start in range(0, size, _BATCH):
        ids = np.arange(start, min(start + _BATCH, size), dtype=np.int64)
        input_ids = np.stack([np.full(len(ids), cls), ids, np.full(len(ids), sep)], axis=1)
        ones = np.ones_like(input_ids)
        states = session.run(None, {"input_ids": input_ids, "attention_mask": ones,
                                    "token_type_ids": np.zeros_like(input_ids)})[0]
        parts.append(states.mean(axis=1))  # the model's mean pooling over its three tokens
    return np.concatenate(parts).astype(np.float32)


class StaticEncoder:
    """texts -> the mean of their tokens' distilled vectors (not normalised); a text without tokens is zeros."""

    def __init__(self, model_dir: Path, cache_dir: Path) -> None:
        from tokenizers import Tokenizer

        self.table = token_table(model_dir, cache_dir)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()

    def __call__(self, texts: list[str], batch_size: int = 0) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64, count=int(lengths.sum()))
        out = np.zeros((len(texts), self.table.shape[1]), dtype=np.float32)
        filled = lengths > 0
        if filled.any():
            starts = (np.cumsum(lengths) - lengths)[filled]
            out[filled] = np.add.reduceat(self.table[ids], starts, axis=0) / lengths[filled, None]
        return out
