"""A sentence-transformers model on ONNX Runtime: exported once from the installed model, then run without torch.

`exported(model_dir, cache_dir, int8)` writes `model.onnx` (and, with `int8`, `model.int8.onnx`, weights
quantised per channel by ONNX Runtime's dynamic quantisation) under `cache_dir/<model>-<hash of its weights>/`,
once; later calls reuse the files. `OnnxEncoder` tokenises with the model's own `tokenizer.json` (the fast
tokenizer sentence-transformers loads), pads each batch to its longest row after sorting rows by length, and
mean-pools the token states as the model's pooling config says, so fp32 vectors equal sentence-transformers'
(cosine 1.0000 on the shared corpora). Only models with a BERT-style encoder and mean pooling are accepted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXPORT_VERSION = 1  # bump when the export changes, so cached files are rebuilt


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _pooling(model_dir: Path) -> None:
    """Raise unless the model pools by the mean of its token states (what `OnnxEncoder` computes)."""
    config_path = model_dir / "1_Pooling" / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    modes = [key for key, on in config.items() if key.startswith("pooling_mode_") and on]
    if modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"{config_path}: the ONNX backend computes mean pooling only, this model uses {modes or 'none'}")


def weights_hash(model_dir: Path) -> str:
    digest = hashlib.sha256(f"export v{EXPORT_VERSION}".encode())
    for name in ("model.safetensors", "pytorch_model.bin", "config.json", "tokenizer.json"):
        path = model_dir / name
        if path.exists():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def exported(model_dir: Path, cache_dir: Path, int8: bool = False) -> Path:
    """The ONNX file of a local sentence-transformers model (fp32, or int8 weights), exported on first use."""
    _pooling(model_dir)
    folder = cache_dir / f"{model_dir.name}-{weights_hash(model_dir)}"
    fp32, quantised = folder / "model.onnx", folder / "model.int8.onnx"
    if not fp32.exists():
        folder.mkdir(parents=True, exist_ok=True)
        _export(model_dir, fp32)
    if int8 and not quantised.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        partial = quantised.with_suffix(".partial.onnx")
        root = logging.getLogger()
        level, root.level = root.level, logging.ERROR  # its advice to pre-process is for static quantisation
        try:
            quantize_dynamic(fp32, partial, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.setLevel(level)
        partial.replace(quantised)
    return quantised if int8 else fp32


def _export(model_dir: Path, target: Path) -> None:
    """torch -> ONNX of the model's encoder (token states out), with dynamic batch and sequence axes."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()

    class States(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN201
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state

    example = tuple(torch.ones((1, 4), dtype=torch.int64) for _ in INPUTS)
    axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "states")}
    partial = target.with_suffix(".partial.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values: the output is checked by the tests
        torch.onnx.export(States(), example, str(partial), input_names=list(INPUTS), output_names=["states"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    partial.replace(target)


class OnnxEncoder:
    """texts -> mean-pooled token states (not normalised), one ONNX Runtime session on every usable core."""

    def __init__(self, model_dir: Path, onnx_file: Path) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        settings_path = model_dir / "sentence_bert_config.json"
        settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.exists() else {}
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(int(settings.get("max_seq_length", 256)))
        self.tokenizer.no_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = usable_cores()
        self.session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])

    def __call__(self, texts: list[str], batch_size: int) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        lengths = np.array([len(e.ids) for e in encodings])
        out: np.ndarray | None = None
        order = np.argsort(lengths, kind="stable")  # batches of alike lengths: little padding
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            width = int(lengths[rows].max())
            arrays = {name: np.zeros((len(rows), width), dtype=np.int64) for name in INPUTS}
            for k, row in enumerate(rows):
                e = encodings[row]
                arrays["input_ids"][k, :len(e.ids)] = e.ids
                arrays["attention_mask"][k, :len(e.ids)] = e.attention_mask
                arrays["token_type_ids"][k, :len(e.ids)] = e.type_ids
            states = self.session.run(None, arrays)[0]
            mask = arrays["attention_mask"][..., None].astype(np.float32)
            pooled = (states * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            if out is None:
                out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            out[rows] = pooled
        return out if out is not None else np.zeros((0, 1), dtype=np.float32)
