"""Rows of packed units and shared contexts as tensors (loglik.masks): pure, no model."""

from loglik.masks import additive_mask, allowed, layout_rows
from loglik.plan import plan_packed


def test_layout_and_mask_of_a_tree_beside_a_packed_unit():
    # requests 0 and 1 share context (1, 2, 3); request 2 = (9,) -> (10, 11) is packed beside
    # them; request 3 (8 tokens) sets the row width.
    requests = [((1, 2, 3), (4, 5)), ((1, 2, 3), (6, 7, 8)), ((9,), (10, 11)),
                ((20, 21, 22, 23, 24, 25, 26), (27, 28))]
    plan = plan_packed([c for c, _ in requests], [len(t) for _, t in requests], 16)
    (batch,) = plan.batches
    lay = layout_rows(batch.rows, [t for _, t in requests], batch.width)
    assert lay.input_ids.tolist() == [[20, 21, 22, 23, 24, 25, 26, 27],
                                      [1, 2, 3, 4, 6, 7, 9, 10]]
    assert lay.position_ids.tolist() == [list(range(8)), [0, 1, 2, 3, 3, 4, 0, 1]]
    assert lay.order == [3, 0, 1, 2] and lay.lengths == [2, 2, 3, 2]
    assert lay.rows.tolist() == [0, 0] + [1] * 7
    assert lay.cols.tolist() == [6, 7] + [2, 3, 2, 4, 5, 6, 7]   # who predicts each target
    assert lay.targets.tolist() == [27, 28, 4, 5, 6, 7, 8, 10, 11]
    assert allowed(lay)[1].int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],     # branch 0 sees the context and itself
        [1, 1, 1, 0, 1, 0, 0, 0],     # branch 1 does not see branch 0
        [1, 1, 1, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 0],     # the packed unit sees only itself
        [0, 0, 0, 0, 0, 0, 1, 1]]
    # a sliding window of 2 positions: position 4 no longer sees positions 0..2
    assert allowed(lay, 2)[1, 5].int().tolist() == [0, 0, 0, 0, 1, 1, 0, 0]


def test_additive_mask_is_zero_where_allowed_and_dtype_min_elsewhere():
    import torch

    ok = torch.tensor([[[True, False], [True, True]]])                  # (1, 2, 2)
    mask = additive_mask(ok, torch.float32)                             # (1, 1, 2, 2)
    low = torch.finfo(torch.float32).min
    assert mask.shape == (1, 1, 2, 2)
    assert mask[0, 0].tolist() == [[0.0, low], [0.0, 0.0]]


def test_padding_attends_only_to_itself():
    plan = plan_packed([(1, 2, 3), (4,)], [2, 1], 16)
    lay = layout_rows(plan.batches[0].rows, [(5, 6), (7,)], plan.batches[0].width + 2)
    ok = allowed(lay)
    for row in range(ok.shape[0]):
        for q in range(ok.shape[1]):
            if lay.unit_ids[row, q] < 0:                               # a padding query
                assert ok[row, q].nonzero().flatten().tolist() == [q]
