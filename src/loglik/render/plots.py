"""Plots of a :class:`loglik.comparison.Comparison` (matplotlib, imported only when plotting).

:func:`plot_comparison` draws two panels into one PNG:

1. the distribution of per-example differences ``logprob_a − logprob_b`` for one pair, with
   the mean and its bootstrap interval (the interval of the total divided by the number of
   examples) marked;
2. the per-token log-prob trace of one example under every model: cumulative log-prob against
   the character offset where each token ends, so models with different tokenizers share an
   axis.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, require


def token_end_offsets(tokenizer: Any, token_ids: list[int], text: str) -> list[int]:
    """Character offset in ``text`` where each token ends (decoding growing prefixes).

    A decoder that drops a leading space of the first token (SentencePiece) is corrected by
    aligning the full decode with ``text``'s end.
    """
    if not token_ids:
        return []
    shift = len(text) - len(tokenizer.decode(token_ids))
    return [max(0, min(len(text), len(tokenizer.decode(token_ids[:k + 1])) + shift))
            for k in range(len(token_ids))]


def plot_comparison(comparison: Any, path: str, *, pair: int = 0, example: int | None = None,
                    dpi: int = 110) -> str:
    """Write the two-panel comparison figure to ``path`` (PNG) and return the path.

    Args:
        comparison: what :func:`loglik.compare` returned.
        path: output image file (the format follows the extension).
        pair: which pair of ``comparison.pairs`` the histogram shows.
        example: the index of the example whose token trace is drawn (default: the one with
            the largest absolute difference in that pair).
    """
    import numpy as np

    require("matplotlib", extra="plot", feature="--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not 0 <= pair < len(comparison.pairs):
        raise ConfigError(f"pair {pair} does not exist; there are {len(comparison.pairs)} pairs")
    p = comparison.pairs[pair]
    n = len(comparison.examples)
    if example is None:
        example = p.largest[0]["index"] if p.largest else 0
    if not 0 <= example < n:
        raise ConfigError(f"example {example} does not exist; there are {n} examples "
                          f"(0 to {n - 1})")
    diffs = np.asarray(p.diffs)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))

    ax1.hist(diffs, bins=min(40, max(5, n // 3)), color="#8da0cb", edgecolor="white")
    ax1.axvline(0, color="black", lw=0.8)
    ax1.axvline(p.diff_mean, color="#d95f02", lw=2, label=f"mean {p.diff_mean:+.3f}")
    ax1.axvspan(p.ci_low / n, p.ci_high / n, color="#d95f02", alpha=0.2,
                label=f"{p.confidence:.0%} CI of the mean [{p.ci_low / n:+.3f}, "
                f"{p.ci_high / n:+.3f}]")
    ax1.set_xlabel(f"log Pr({p.a}) − log Pr({p.b}) per example (nats)")
    ax1.set_ylabel("examples")
    ax1.set_title(f"{p.a} − {p.b}: total {p.diff_total:+.2f} nats, "
                  f"{p.a} wins {p.win_rate_a:.0%}", fontsize=10)
    ax1.legend(fontsize=8)

    ex = comparison.examples[example]
    for name, scores, tok in zip(comparison.names, comparison.scores, comparison.tokenizers):
        s = scores[example]
        ends = token_end_offsets(tok, s.token_ids, _scored_text(s, ex))
        cum = np.cumsum(s.token_logprobs) if s.token_logprobs else np.zeros(0)
        ax2.step([0, *ends], [0.0, *cum], where="post", label=f"{name} ({s.logprob:.2f})")
        ax2.plot(ends, cum, "o", ms=3, color=ax2.lines[-1].get_color())
    ax2.set_xlabel("characters of the response")
    ax2.set_ylabel("cumulative log-prob (nats)")
    snippet = ex.response.replace("\n", "⏎")[:40]
    ax2.set_title(f"example {example}{'' if ex.id is None else f' (id {ex.id})'}: "
                  f"{snippet!r}", fontsize=10)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _scored_text(score: Any, example: Any) -> str:
    """The response text the score counts (whitespace moved from the prompt included)."""
    moved = example.prompt[len(example.prompt.rstrip()):]
    text = moved + example.response
    return text if len(text) == score.num_chars else example.response
