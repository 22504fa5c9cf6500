"""The llama.cpp backend's pure parts (no llama.cpp needed): batch layout, GGUF header check."""

from __future__ import annotations

import struct

import pytest

from loglik.backends.gguf_file import read_gguf_header
from loglik.backends.llamacpp_batch import layout, split_units, unit_tokens
from loglik.errors import ModelLoadError


def test_layout_reads_a_shared_context_once_and_flags_only_predicting_positions():
    units = [((5, 6, 7), [(0, (1, 2, 3)), (1, (4,))]), ((9,), [(2, (8, 8))])]
    lay = layout(units)
    #            context x1  branch 0  | ctx  branch 2
    assert lay.tokens.tolist() == [5, 6, 7, 1, 2, 9, 8]
    assert lay.positions.tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert lay.flags.tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert lay.n_seq.tolist() == [2, 2, 2, 1, 1, 1, 1]
    assert lay.seq_ids[:3].tolist() == [[0, 1]] * 3           # the context is in both sequences
    assert lay.seq_ids[3:, 0].tolist() == [0, 0, 2, 2]
    # output rows: 0 = after 7 (predicts 1 and 4), 1 = after 1, 2 = after 2, 3 = after 9,
    # 4 = after 8
    assert lay.rows.tolist() == [0, 1, 2, 0, 3, 4]
    assert lay.targets.tolist() == [1, 2, 3, 4, 8, 8]
    assert (lay.keys, lay.lengths, lay.n_outputs) == ([0, 1, 2], [3, 1, 2], 5)
    assert unit_tokens(units[0]) == 5


def test_split_units_respects_tokens_and_sequences_and_keeps_order():
    unit = ((1, 2, 3), [(i, (4, 5, 6)) for i in range(5)])    # 3 + 5 * 2 = 13 tokens
    groups = split_units([unit], max_tokens=8, max_seqs=2)
    members = [[k for _, branch in g for k, _ in branch] for g in groups]
    assert [k for g in members for k in g] == list(range(5))
    for g in groups:
        assert sum(unit_tokens(u) for u in g) <= 8
        assert sum(len(b) for _, b in g) <= 2
    assert all(u[0] == (1, 2, 3) for g in groups for u in g)  # each piece repeats the context


def _header(version=3, tensors=1, kvs=(("general.architecture", "llama"),),
            dims=(4, 2), kind=0, offset=0) -> bytes:
    def s(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    out = b"GGUF" + struct.pack("<IQQ", version, tensors, len(kvs))
    for key, value in kvs:
        out += s(key) + struct.pack("<I", 8) + s(value)
    for i in range(tensors):
        out += s(f"t{i}") + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", kind, offset)
    return out + b"\0" * (-len(out) % 32)


def test_header_of_a_complete_file(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(_header(kvs=(("general.architecture", "qwen2"),)) + b"\0" * 32)
    h = read_gguf_header(path)
    assert (h.architecture, h.tensor_count, h.version) == ("qwen2", 1, 3)


@pytest.mark.parametrize("data,message", [
    (b"", "not a GGUF file"),
    (b"PK\x03\x04 a zip file", "not a GGUF file"),
    (_header(version=7), "GGUF version 7 is not supported"),
    (_header()[:30], "truncated GGUF file"),
    (_header(), "tensor data ends at byte 160 and the file has 128"),  # 4 x 2 F32 missing
    (_header(tensors=0), "holds no tensors"),
    (_header(kvs=()) + b"\0" * 32, "no general.architecture"),
    (b"GGUF" + struct.pack("<IQQ", 3, 2**40, 1), "corrupt GGUF header"),
], ids=["empty", "zip", "version", "cut-header", "cut-data", "no-tensors", "no-arch", "count"])
def test_bad_files_are_one_clear_error(tmp_path, data, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(ModelLoadError, match=message) as err:
        read_gguf_header(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        read_gguf_header(tmp_path / "none.gguf")
    with pytest.raises(ModelLoadError, match="is a directory"):
        read_gguf_header(tmp_path)


def test_a_missing_gguf_name_is_a_file_not_a_hub_id(tmp_path, monkeypatch):
    """`--model nope.gguf` reaches the GGUF loader's 'not found', not a hub probe."""
    from loglik.hub import check_model_source, is_hub_id

    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("nope.gguf") and not is_hub_id("org/model-Q8_0.GGUF")
    assert is_hub_id("org/model")
    check_model_source("nope.gguf")          # no probe, no error: the loader reports it
