"""Interpolated modified Kneser-Ney n-gram estimation, written as an ARPA file that KenLM loads.

No `lmplz` binary exists offline (building it needs boost and cmake), so the project estimates its small
reference models itself. The method is lmplz's (Heafield et al. 2013), without pruning:

- the highest order keeps raw counts; a lower-order n-gram's count is its number of distinct left
  extensions (its continuation count), except n-grams starting with `<s>`, which cannot be extended to
  the left and keep their raw count;
- three discounts per order (for counts 1, 2 and 3+) come from the counts of counts (Chen & Goodman);
  when a tiny corpus makes them undefined, lmplz's `--discount_fallback` values 0.5, 1, 1.5 are used;
- every probability is interpolated with the next lower order, down to the uniform distribution over the
  vocabulary (which includes `<unk>`). In an interpolated model the backoff weight of a context is exactly
  the mass its discounts freed, so the ARPA file scores unseen n-grams the way the estimate does.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
Gram = tuple[str, ...]


def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> list[Counter[Gram]]:
    """Raw counts of every n-gram, n = 1..order, in sentences padded with `<s>` and `</s>`."""
    counts: list[Counter[Gram]] = [Counter() for _ in range(order)]
    for tokens in sentences:
        padded = (BOS, *tokens, EOS)
        for n in range(1, order + 1):
            counts[n - 1].update(padded[i:i + n] for i in range(len(padded) - n + 1))
    return counts


def adjust_counts(raw: list[Counter[Gram]]) -> list[Counter[Gram]]:
    """Kneser-Ney counts: raw at the highest order and for `<s>`-initial n-grams, else continuation counts."""
    adjusted = [Counter() for _ in raw]
    adjusted[-1] = Counter(raw[-1])
    for n in range(len(raw) - 1):
        continuation = Counter(gram[1:] for gram in raw[n + 1])
        adjusted[n] = Counter({gram: raw[n][gram] if gram[0] == BOS else continuation[gram] for gram in raw[n]})
    return adjusted


def discounts(counts: Iterable[int]) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts for counts 1, 2 and 3+ from the counts of counts."""
    of = Counter(c for c in counts if c <= 4)
    if any(of[k] == 0 for k in (1, 2, 3, 4)):
        return FALLBACK_DISCOUNTS
    y = of[1] / (of[1] + 2 * of[2])
    found = tuple(k - (k + 1) * y * of[k + 1] / of[k] for k in (1, 2, 3))
    return found if all(0 < d < k for d, k in zip(found, (1, 2, 3), strict=True)) else FALLBACK_DISCOUNTS


def estimate(sentences: Iterable[Sequence[str]], order: int) -> tuple[list[dict[Gram, float]],
                                                                       list[dict[Gram, float]]]:
    """Probabilities of every seen n-gram (plus `<unk>`) and the backoff weight of every context, per order."""
    adjusted = adjust_counts(count_ngrams(sentences, order))
    adjusted[0].pop((BOS,), None)  # <s> is only ever a context, never predicted
    vocab_size = len(adjusted[0]) + 1  # + <unk>
    probs: list[dict[Gram, float]] = []
    backoffs: list[dict[Gram, float]] = []
    for counts in adjusted:
        discount = (0.0, *discounts(counts.values()))
        totals: defaultdict[Gram, int] = defaultdict(int)
        freed: defaultdict[Gram, float] = defaultdict(float)
        for gram, count in counts.items():
            totals[gram[:-1]] += count
            freed[gram[:-1]] += discount[min(count, 3)]
        gamma = {context: freed[context] / totals[context] for context in totals}
        lower = probs[-1] if probs else None
        probs.append({gram: (count - discount[min(count, 3)]) / totals[gram[:-1]]
                      + gamma[gram[:-1]] * (lower[gram[1:]] if lower is not None else 1 / vocab_size)
                      for gram, count in counts.items()})
        if lower is None:
            probs[0][(UNK,)] = gamma[()] / vocab_size
        else:
            backoffs.append(gamma)
    backoffs.append({})
    return probs, backoffs


def arpa_text(sentences: Iterable[Sequence[str]], order: int) -> str:
    """An ARPA file (log10 probabilities and backoffs) for the given tokenised sentences."""
    probs, backoffs = estimate(sentences, order)
    probs[0][(BOS,)] = 0.0
    lines = ["\\data\\", *(f"ngram {n}={len(grams)}" for n, grams in enumerate(probs, start=1)), ""]
    for n, (grams, weights) in enumerate(zip(probs, backoffs, strict=True), start=1):
        lines.append(f"\\{n}-grams:")
        for gram in sorted(grams):
            logp = math.log10(grams[gram]) if grams[gram] > 0 else -99.0
            fields = [f"{logp:.7f}", " ".join(gram)]
            if n < order:
                fields.append(f"{math.log10(weights[gram]) if gram in weights else 0.0:.7f}")
            lines.append("\t".join(fields))
        lines.append("")
    lines.append("\\end\\")
    return "\n".join(lines) + "\n"
