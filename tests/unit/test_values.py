"""Values layering is Helm's: checked by rule here, and against the real pinned helm in test_values_helm.py."""

from __future__ import annotations

from typing import Any

import pytest

from deployer.errors import DeployError
from deployer.render.values import apply_set, coalesce, layer_values, merge_maps, typed_value

CHART = {"replicas": 1, "image": {"pullPolicy": "IfNotPresent", "tag": "x"}, "hosts": ["a", "b"], "gone": 1}
INJECTED = {"commit": "c0ffee"}


def final(*files: dict[str, Any], sets: tuple[str, ...] = ()) -> dict[str, Any]:
    named = [(f"values-{i}.yaml", f) for i, f in enumerate(files)]
    return layer_values(defaults=CHART, files=named, sets=list(sets), injected=INJECTED).final


def test_maps_merge_deeply() -> None:
    assert final({"image": {"tag": "y"}})["image"] == {"pullPolicy": "IfNotPresent", "tag": "y"}


def test_lists_are_replaced_not_concatenated() -> None:
    assert final({"hosts": ["c"]})["hosts"] == ["c"]


def test_null_deletes_a_chart_key() -> None:
    values = final({"gone": None, "image": {"tag": None}})
    assert "gone" not in values
    assert values["image"] == {"pullPolicy": "IfNotPresent"}


def test_later_files_win_in_order() -> None:
    assert final({"replicas": 2}, {"replicas": 3})["replicas"] == 3
    assert final({"replicas": 3}, {"replicas": 2})["replicas"] == 2


def test_set_wins_over_files() -> None:
    assert final({"replicas": 3}, sets=("replicas=5",))["replicas"] == 5


def test_scalar_over_map_and_map_over_scalar_user_wins() -> None:
    assert final({"image": "nginx"})["image"] == "nginx"
    assert final({"replicas": {"min": 1}})["replicas"] == {"min": 1}


def test_injected_values_sit_under_their_own_key_and_win() -> None:
    values = final({"replicas": 2})
    assert values["deployer"] == INJECTED
    assert values["replicas"] == 2


def test_inputs_are_not_mutated() -> None:
    layer = {"image": {"tag": "y"}, "hosts": ["z"]}
    final(layer, sets=("hosts[0]=q", "image.tag=w"))
    assert layer == {"image": {"tag": "y"}, "hosts": ["z"]}
    assert CHART["hosts"] == ["a", "b"]


def test_merge_maps_keeps_nulls_for_helm_and_coalesce_removes_them() -> None:
    user = merge_maps({"a": 1, "b": {"c": 1}}, {"a": None, "b": {"c": None}})
    assert user == {"a": None, "b": {"c": None}}
    assert coalesce(user, {"a": 5, "b": {"c": 2, "d": 3}}) == {"b": {"d": 3}}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("0", 0),
        ("-3", -3),
        ("+5", 5),
        ("-0", 0),
        ("012", "012"),
        ("00", "00"),
        ("1.5", "1.5"),
        ("1e3", "1e3"),
        ("0x10", "0x10"),
        ("true", True),
        ("TRUE", True),
        ("False", False),
        ("null", None),
        ("", ""),
        ("9223372036854775808", "9223372036854775808"),
        ("abc", "abc"),
    ],
)
def test_set_values_are_typed_as_helm_types_them(text: str, value: object) -> None:
    assert typed_value(text) == value
    assert type(typed_value(text)) is type(value)


@pytest.mark.parametrize(
    ("exprs", "expected"),
    [
        (["a.b=1"], {"a": {"b": 1}}),
        (["a=1,b=2"], {"a": 1, "b": 2}),
        (["l={x,y}"], {"l": ["x", "y"]}),
        (["l={}"], {"l": [""]}),
        (["x=a\\,b"], {"x": "a,b"}),
        (["x\\.y=1"], {"x.y": 1}),
        (["l[1]=9"], {"l": [None, 9]}),
        (["l[2]=1", "l[0]=x"], {"l": ["x", None, 1]}),
        (["a.l[0].name=n"], {"a": {"l": [{"name": "n"}]}}),
        (["a.b=1", "a=null"], {"a": None}),
    ],
)
def test_set_expressions(exprs: list[str], expected: dict[str, Any]) -> None:
    values: dict[str, Any] = {}
    for expr in exprs:
        apply_set(values, expr)
    assert values == expected


def test_set_index_on_a_list_from_a_values_file_edits_that_list() -> None:
    assert final({"hosts": ["p", "q"]}, sets=("hosts[1]=r",))["hosts"] == ["p", "r"]


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("novalue", "expected KEY=VALUE"),
        ("=1", "expected KEY=VALUE"),
        ("a..b=1", "is not a dotted path"),
        ("l={a,{b}}", "nested lists are not supported"),
        ("l[999999999]=1", "list index 999999999 is too large"),
        ("deployer.image.ref=evil", "reserved"),
    ],
)
def test_bad_set_expressions_are_one_clear_error(expr: str, problem: str) -> None:
    with pytest.raises(DeployError) as info:
        final(sets=(expr,))
    assert problem in str(info.value)
    assert str(info.value).startswith(f"--set {expr}: ")


def test_set_through_a_scalar_is_an_error() -> None:
    with pytest.raises(DeployError) as info:
        final({"x": 3}, sets=("x.y=1",))
    assert str(info.value) == "--set x.y=1: cannot set 'y' inside a int value"
