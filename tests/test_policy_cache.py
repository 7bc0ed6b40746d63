"""The embedded engine's decision cache: the static analysis of which input paths a policy
reads, and a differential check that cached decisions equal uncached ones."""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import policy_support as ps
import pytest
import regorus

from gateway.models import Principal
from gateway.policy.bundle import load_bundle
from gateway.policy.embedded import Evaluator
from gateway.policy.inputpaths import analyse, make_key_fn


def paths_of(src: str) -> tuple[tuple[str, ...], ...] | None:
    engine = regorus.Engine()
    engine.add_policy("a.rego", "package a\n\nimport rego.v1\n\n" + textwrap.dedent(src))
    return analyse(json.loads(engine.get_ast_as_json()))


@pytest.mark.parametrize(
    ("src", "want"),
    [
        ("x := input.a.b\n", (("a", "b"),)),
        ('x := input["a"].b\n', (("a", "b"),)),
        ('x := input.a.b[c] if c := "x"\n', (("a", "b"),)),
        ('x := input[y].z if y := "a"\n', None),  # dynamic first key: whole input
        ('x := object.get(input, "a", 1)\n', None),  # input passed whole to a function
        ("x := [v | some v in input]\n", None),
        ("x := [v | some v in input.q.r]\n", (("q", "r"),)),
        ("import input.act as q\nx := q.k\n", (("act",),)),  # alias covers the whole subtree
        ("f(i) := i.a\nx := f(input.z)\n", (("z",),)),
        ("x := input.a\ny := input.a.b\n", (("a",),)),  # prefix covers the longer path
        ("x := input.roles[0]\n", (("roles",),)),
        ("x := time.now_ns()\n", None),  # non-deterministic
        ("x := crypto.sha256(input.a)\n", None),
        ("x := 1\n", ()),
        ('x if { y := input.a with input as {"a": 1}; y }\n', None),
    ],
)
def test_input_path_analysis(src: str, want: object) -> None:
    assert paths_of(src) == want


def test_shipped_policy_key_ignores_time_and_reads_arguments_for_approvals() -> None:
    engine = load_bundle(ps.POLICY_DIR).build_engine()
    key_fn = make_key_fn(engine.get_ast_as_json())
    assert key_fn is not None
    assert ("action", "kind") in key_fn.paths
    assert not any(p[0] == "context" for p in key_fn.paths)
    # The approval rules (docs/approvals.md) compare argument values (amount above a
    # threshold): the arguments are part of the key, nothing else the call carries is.
    assert ("action", "arguments") in key_fn.paths
    a = ps.tool(ps.FINANCE, "ledger.create_transfer", amount=1)
    b = ps.tool(ps.FINANCE, "ledger.create_transfer", amount=2)
    assert key_fn(a) != key_fn(b)
    assert key_fn(a) == key_fn(ps.tool(ps.FINANCE, "ledger.create_transfer", amount=1))
    assert key_fn(a) != key_fn(ps.tool(ps.AGENT, "ledger.create_transfer", amount=1))
    assert key_fn(a) != key_fn(ps.host_call(ps.FINANCE, "ledger.create_transfer", amount=1))


def test_cached_equals_uncached_on_shipped_policy() -> None:
    bundle = load_bundle(ps.POLICY_DIR)
    cached, plain = Evaluator(bundle), Evaluator(bundle, cache_size=0)
    assert cached.cache_key is not None and plain.cache_key is None
    principals = [
        ps.AGENT,
        ps.FINANCE,
        Principal(id="n", tenant="demo", roles=()),
        Principal(id="x", tenant="acme", roles=("agent", "finance")),
        Principal(id="s", tenant="demo", roles=("security-admin", "agent")),
    ]
    names = [*ps.OPS, "ledger.unknown", "hr.list_salaries"]
    inputs = []
    for principal, name, amount in itertools.product(principals, names, (1, 2)):
        inputs += [
            ps.tool(principal, name, amount=amount),
            ps.host_call(principal, name, amount=amount),
            ps.code_run(principal),
        ]
    inputs.append({"principal": {"id": "q", "tenant": "demo", "roles": ["agent"]}})
    inputs.append({})
    for inp in inputs * 2:
        assert cached.decide(inp) == plain.decide(inp), inp
    assert cached.cache_hits >= len(inputs)  # the second round is all hits, and more


def test_policy_reading_arguments_is_keyed_on_them(tmp_path: Path) -> None:
    root = tmp_path / "p" / "switchboard"
    root.mkdir(parents=True)
    (root / "routing.rego").write_text(
        "package switchboard.routing\n\nimport rego.v1\n\n"
        'decision := {"route": "deny", "reasons": ["too much"]} if {\n'
        "\tinput.action.arguments.amount > 100\n"
        '} else := {"route": "code", "reasons": ["ok"]}\n'
    )
    ev = Evaluator(load_bundle(tmp_path / "p"))
    assert ev.cache_key is not None
    small = ps.host_call(ps.AGENT, "ledger.get_balance", amount=5)
    big = ps.host_call(ps.AGENT, "ledger.get_balance", amount=500)
    for _ in range(2):
        assert ev.decide(small).route == "code"
        assert ev.decide(big).route == "deny"
    assert ev.cache_hits == 2
    huge = ps.host_call(ps.AGENT, "ledger.get_balance", amount=5, blob="x" * 10_000)
    huge["action"]["arguments"]["amount"] = {"v": 5, "pad": "y" * 10_000}
    for _ in range(2):
        assert not ev.decide(huge).error_code
    assert ev.cache_hits == 2  # keys over 8 KiB are not cached


def test_errors_are_not_cached(tmp_path: Path) -> None:
    root = tmp_path / "p" / "switchboard"
    root.mkdir(parents=True)
    (root / "routing.rego").write_text(
        "package switchboard.routing\n\nimport rego.v1\n\n"
        'decision := {"route": "code", "reasons": [sprintf("%d", [input.principal.id + 1])]}\n'
    )
    ev = Evaluator(load_bundle(tmp_path / "p"))
    for _ in range(2):
        assert ev.decide(ps.code_run(ps.AGENT)).error_code == "policy_error"
    assert ev.cache_hits == 0
