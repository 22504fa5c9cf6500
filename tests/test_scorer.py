"""The scorer talks to backends only through the protocol: capabilities decide the paths."""

from __future__ import annotations

import math

import pytest

from loglik import Scorer
from loglik.backends.base import (CAPABILITIES, DISTRIBUTIONS, PACKED_ROWS, SHARED_CONTEXT,
                                  TORCH_MODEL, Backend, DistributionSource, PackedScoring,
                                  TorchModel, capabilities_of, supports)
from loglik.backends.fake import FakeBackend, WordTokenizer
from loglik.types import Detail

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran"]


class PackingFake(FakeBackend):
    """The fake table model that also declares packed rows / shared contexts and records the
    batches it is handed; each request is scored alone, so numbers cannot change."""

    def __init__(self, *args, capabilities=(PACKED_ROWS, SHARED_CONTEXT), **kw):
        super().__init__(*args, **kw)
        self.capabilities = frozenset(capabilities) | {DISTRIBUTIONS}
        self.packed_batches = []

    def score_packed(self, batch, requests, detail=Detail(), batch_tokens=None):
        self.packed_batches.append(batch)
        members = [i for row in batch.rows for unit in row for i in unit.members]
        return dict(zip(members, self.score([requests[i] for i in members], detail)))


@pytest.fixture()
def tok():
    return WordTokenizer(WORDS)


PAIRS = [("the cat", " sat on the mat"), ("the cat", " ran"), ("the dog", " sat"),
         ("the dog", " ran on the mat")]


def _scores(backend, tok, **kw):
    return [s.logprob for s in Scorer(backend, tok, **kw).score_many(PAIRS)]


def test_a_backend_without_capabilities_gets_plain_batches(tok):
    plain = FakeBackend(len(tok))
    assert capabilities_of(plain) == {DISTRIBUTIONS}
    assert not supports(plain, PACKED_ROWS)
    got = _scores(plain, tok)
    # uniform over V: every response token costs log V nats
    assert got == pytest.approx([-n * math.log(len(tok)) for n in (4, 1, 1, 4)], abs=1e-12)


def test_declared_capabilities_route_shared_contexts_to_score_packed(tok):
    packing = PackingFake(len(tok))
    got = _scores(packing, tok)
    assert packing.packed_batches, "a backend declaring packed rows gets packed batches"
    shared = [u for b in packing.packed_batches for row in b.rows for u in row
              if len(u.members) > 1]
    assert shared, "two prompts, two responses each: shared-context units"
    assert got == pytest.approx(_scores(FakeBackend(len(tok)), tok), abs=1e-12)


def test_scorer_options_and_capabilities_both_gate_packing(tok):
    only_pack = PackingFake(len(tok), capabilities=(PACKED_ROWS,))
    _scores(only_pack, tok)
    assert all(len(u.members) == 1 for b in only_pack.packed_batches for row in b.rows
               for u in row), "no shared_context capability: no shared units"
    off = PackingFake(len(tok))
    _scores(off, tok, pack=False, share_context=False)
    assert off.packed_batches == []


def test_supports_rejects_unknown_names_and_protocols_are_checkable(tok):
    with pytest.raises(ValueError, match="unknown capability"):
        supports(FakeBackend(3), "telepathy")
    assert set(CAPABILITIES) == {PACKED_ROWS, SHARED_CONTEXT, DISTRIBUTIONS, TORCH_MODEL}
    fake = PackingFake(len(tok))
    assert isinstance(fake, Backend) and isinstance(fake, PackedScoring)
    assert isinstance(fake, DistributionSource) and not isinstance(fake, TorchModel)


def test_hf_backend_declares_what_its_self_checks_allow(llama_scorer):
    backend = llama_scorer.backend
    assert capabilities_of(backend) == {PACKED_ROWS, SHARED_CONTEXT, DISTRIBUTIONS, TORCH_MODEL}
    assert isinstance(backend, Backend) and isinstance(backend, PackedScoring)
    assert isinstance(backend, DistributionSource) and isinstance(backend, TorchModel)
    assert backend.tolerance == 1e-4


def test_from_pretrained_remembers_self_check_verdicts(tiny_model_dir, tmp_path, monkeypatch):
    """The second load of a folder reads the verdicts instead of running the checks; a
    changed file checks again."""
    import os
    import shutil

    from loglik.backends.hf import backend as hf_backend

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    tiny_model_dir = str(folder)
    monkeypatch.setenv("LOGLIK_CACHE_DIR", str(tmp_path / "cache"))
    runs = []
    real = hf_backend.HFBackend._run_self_checks
    monkeypatch.setattr(hf_backend.HFBackend, "_run_self_checks",
                        lambda self: (runs.append(1), real(self))[1])
    first = Scorer.from_pretrained(tiny_model_dir)
    second = Scorer.from_pretrained(tiny_model_dir)
    assert len(runs) == 1
    assert second.backend.verdicts == first.backend.verdicts
    assert second.score("the", " cat").logprob == first.score("the", " cat").logprob
    config = folder / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    Scorer.from_pretrained(tiny_model_dir)          # a changed file: checked again
    assert len(runs) == 2
    monkeypatch.setenv("LOGLIK_CACHE_DIR", "")      # off: checks every time
    Scorer.from_pretrained(tiny_model_dir)
    Scorer.from_pretrained(tiny_model_dir)
    assert len(runs) == 4
