from __future__ import annotations

import pytest

from consumer.engine.dag import Dag


def test_linear_weights_count_ancestors_or_self() -> None:
    dag = Dag({"c3": ["c2"], "c2": ["c1"], "c1": ["c0"]})  # c0 outside the range
    assert dag.order == ("c3", "c2", "c1")
    assert dag.parents("c1") == ()
    assert dag.ancestor_weights(set(dag.order)) == {"c1": 1, "c2": 2, "c3": 3}


def test_merge_weights_do_not_double_count() -> None:
    #   a - b - d (merge of b and c)
    #    \- c -/
    dag = Dag({"d": ["b", "c"], "c": ["a"], "b": ["a"], "a": []})
    weights = dag.ancestor_weights({"a", "b", "c", "d"})
    assert weights == {"a": 1, "b": 2, "c": 2, "d": 4}
    assert dag.ancestors("c") == {"a", "c"}
    assert dag.ancestors("d", within={"b", "c"}) == {"b", "c"}


def test_weights_within_a_subset() -> None:
    dag = Dag({"d": ["b", "c"], "c": ["a"], "b": ["a"], "a": []})
    assert dag.ancestor_weights({"b", "d"}) == {"b": 1, "d": 2}


def test_order_is_topological_whatever_the_input_order() -> None:
    dag = Dag({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]})  # oldest first
    order = dag.order
    for commit in order:
        for parent in dag.parents(commit):
            assert order.index(parent) > order.index(commit)


def test_from_rev_list_output() -> None:
    dag = Dag.from_rev_list(["d b c", "c a", "b a", "a x", ""])
    assert len(dag) == 4
    assert "x" not in dag
    assert dag.parents("a") == ()


def test_cycle_is_refused() -> None:
    with pytest.raises(ValueError, match="cycle"):
        Dag({"a": ["b"], "b": ["a"]})
