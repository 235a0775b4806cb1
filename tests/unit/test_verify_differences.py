"""How verify tells two documents apart: per path, and kind by kind as the store keeps them."""

from __future__ import annotations

from projections.verify import Difference, differences, same


def test_differences_name_each_path_and_tell_kinds_apart() -> None:
    stored = {
        "_id": 1,
        "n": 5,
        "f": 1.0,
        "b": True,
        "sub": {"x": 1, "extra": 2},
        "lines": [{"q": 1}],
    }
    replayed = {"_id": 1, "n": 6, "f": 1, "b": 1, "sub": {"x": 1}, "lines": [{"q": 2}], "gone": 0}
    assert differences(stored, replayed) == [
        "n 5 != 6", "f 1.0 != 1", "b True != 1", "sub.extra 2 != (absent)", "lines.0.q 1 != 2",
        "gone (absent) != 0",
    ]  # fmt: skip
    assert same({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]})
    assert not same({"a": None}, {})


def test_long_values_are_cut_and_write_model_differences_say_so() -> None:
    [change] = differences({"lines": list(range(40))}, {"lines": [1]})
    assert change == "lines [40 items] != [1]"
    assert str(Difference("products", "p1", "priceCents 5 != 6", write_model=True)) == (
        "write model: products/p1: priceCents 5 != 6"
    )
