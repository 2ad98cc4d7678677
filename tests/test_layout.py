"""The history graph's lanes: branches split into a second lane and merge back."""

from __future__ import annotations

from dashboard.history.layout import layout
from dashboard.target import adapter as alembic_adapter


def test_a_linear_history_stays_in_one_lane(script_tree):
    script_tree.linear(4)
    rows = layout(alembic_adapter.load_graph(script_tree.path))
    assert [row.lane for row in rows] == [0, 0, 0, 0]
    assert rows[0].top == () and rows[0].bottom == ((0, 0),)
    assert rows[-1].bottom == ()  # the base has no parent to draw to


def test_a_branch_and_merge_use_a_second_lane_between_them(script_tree):
    script_tree.add_table("a1", None, "customer")
    script_tree.add_table("b2", "a1", "product")
    script_tree.add_table("c3", "b2", "orders")
    script_tree.add_table("d4", "b2", "address")
    script_tree.add("e5", ("c3", "d4"), "merge")
    graph = alembic_adapter.load_graph(script_tree.path)

    rows = {row.revision_id: row for row in layout(graph)}

    merge = rows["e5"]
    assert merge.lane == 0 and set(merge.bottom) == {(0, 0), (0, 1)}
    branch_lanes = {rows["c3"].lane, rows["d4"].lane}
    assert branch_lanes == {0, 1}
    branch_point = rows["b2"]
    assert branch_point.lane == 0 and set(branch_point.top) == {(0, 0), (1, 0)}
    assert branch_point.width == 2 and rows["a1"].width == 1


def test_two_heads_start_in_their_own_lanes(script_tree):
    script_tree.add_table("a1", None, "customer")
    script_tree.add_table("b2", "a1", "product")
    script_tree.add_table("c3", "a1", "address")
    rows = layout(alembic_adapter.load_graph(script_tree.path))
    heads = [row for row in rows if row.revision_id in ("b2", "c3")]
    assert sorted(row.lane for row in heads) == [0, 1]
    assert all(row.top == () or all(a != row.lane for a, _ in row.top) for row in heads)
