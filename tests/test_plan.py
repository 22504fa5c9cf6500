"""The planner: token-budget batches, shared-context units and packed rows (pure, no torch)."""

from types import SimpleNamespace

import pytest

from loglik.plan import (Unit, default_batch_tokens, group_units, pack_units, plan_batches,
                         plan_packed)


def test_plan_batches_by_token_budget_longest_first():
    plan = plan_batches([3, 10, 4, 9, 0], 20)
    assert [b.indices for b in plan.batches] == [(1, 3), (2, 0)]
    assert [b.width for b in plan.batches] == [10, 4]
    assert plan.real_tokens == 26 and plan.padded_tokens == 28
    assert plan.padding_waste == pytest.approx(2 / 28)


def test_identical_contexts_form_one_unit():
    contexts = [(1, 2, 3), (7,), (1, 2, 3), (1, 2, 3)]
    units = group_units(contexts, [2, 3, 1, 4], max_unit_tokens=100)
    assert [(u.context, u.members, u.branch_lengths) for u in units] == [
        ((1, 2, 3), (0, 2, 3), (1, 0, 3)), ((7,), (1,), (2,))]
    assert [u.length for u in units] == [3 + 1 + 0 + 3, 1 + 2]


def test_no_sharing_gives_one_unit_per_request():
    units = group_units([(1, 2), (1, 2)], [2, 2], max_unit_tokens=100, share=False)
    assert [u.members for u in units] == [(0,), (1,)]


def test_requests_without_targets_are_left_out():
    assert [u.members for u in group_units([(1,), (1,)], [0, 2], max_unit_tokens=9)] == [(1,)]


def test_a_group_too_long_for_one_unit_repeats_its_context():
    # context 4 + branches of 3 each: 4+3+3 = 10 fits, a third branch would make 13 > 10
    units = group_units([(1, 2, 3, 4)] * 3, [4, 4, 4], max_unit_tokens=10)
    assert [u.members for u in units] == [(0, 1), (2,)]
    assert all(u.context == (1, 2, 3, 4) for u in units)


def test_packing_fills_rows_up_to_the_longest_unit():
    units = [Unit((1,), (0,), (7,)), Unit((1, 2), (1,), (2,)), Unit((3,), (2,), (3,)),
             Unit((5,), (3,), (1,))]                      # lengths 8, 4, 4, 2
    batches = pack_units(units, 16)
    # width 8: [0] fills a row; 1 and 2 share the second; two rows of 8 use the budget,
    # so unit 3 starts the next batch (width 2).
    assert [[[u.members[0] for u in row] for row in b.rows] for b in batches] == [
        [[0], [1, 2]], [[3]]]
    assert [b.width for b in batches] == [8, 2]
    assert [b.padded_tokens for b in batches] == [16, 2]


def test_packing_respects_the_budget_and_never_widens_rows():
    units = [Unit((1,), (i,), (n - 1,)) for i, n in enumerate([8, 4, 4, 2, 2])]
    batches = pack_units(units, 16)
    assert [[[u.members[0] for u in row] for row in b.rows] for b in batches] == [
        [[0], [1, 2]], [[3], [4]]]
    assert [b.width for b in batches] == [8, 2]
    for b in batches:
        assert b.padded_tokens <= 16
        assert all(sum(u.length for u in row) <= b.width for row in b.rows)


def test_pack_false_is_plain_sorted_batching():
    units = [Unit((1,), (i,), (n - 1,)) for i, n in enumerate([8, 4, 4])]
    batches = pack_units(units, 16, pack=False)
    assert [[len(row) for row in b.rows] for b in batches] == [[1, 1], [1]]
    assert batches[0].simple and batches[1].simple


def test_a_unit_longer_than_the_budget_gets_a_batch_of_its_own():
    units = [Unit((1,) * 30, (0,), (0,)), Unit((2,), (1,), (3,))]
    batches = pack_units(units, 16)
    assert [b.width for b in batches] == [30, 4]


def test_plan_packed_counts_the_tokens_sharing_saves():
    # 4 choices after one 10-token context, targets of 3 tokens: alone 4 x (10 + 2) = 48
    # tokens; shared 10 + 4 x 2 = 18.
    plan = plan_packed([tuple(range(10))] * 4, [3] * 4, 1024)
    assert plan.request_tokens == 48 and plan.real_tokens == 18
    assert plan.sharing_saved == pytest.approx(1 - 18 / 48)
    assert plan.padded_tokens == 18 and plan.padding_waste == 0.0
    assert not plan.batches[0].simple


def test_max_batch_size_caps_rows():
    plan = plan_packed([(i,) for i in range(5)], [4] * 5, 1000, share=False, pack=False,
                       max_batch_size=2)
    assert [len(b.rows) for b in plan.batches] == [2, 2, 1]


def test_short_units_fill_the_gaps_left_in_earlier_batches():
    # lengths 10, 7, 6, 3 with a budget of 20: batch 1 = rows [10], [7] (room 3); 6 starts
    # batch 2; 3 goes back into the room beside 7 instead of padding a new row.
    units = [Unit((1,), (i,), (n - 1,)) for i, n in enumerate([10, 7, 6, 3])]
    batches = pack_units(units, 20)
    assert [[[u.members[0] for u in row] for row in b.rows] for b in batches] == [
        [[0], [1, 3]], [[2]]]
    assert sum(b.padded_tokens for b in batches) == 26      # 26 real tokens: no padding


def test_default_batch_tokens_follow_the_device():
    def on(device):
        return SimpleNamespace(device=device)

    assert default_batch_tokens(on(SimpleNamespace(type="cpu"))) == 2048    # a torch.device
    assert default_batch_tokens(on(SimpleNamespace(type="cuda"))) == 8192
    assert default_batch_tokens(on("cuda:1")) == 8192
    assert default_batch_tokens(on("mps")) == 8192
    assert default_batch_tokens(on("cpu")) == 2048
    assert default_batch_tokens(object()) == 2048
