package switchboard.routing_test

import rego.v1

import data.switchboard.routing

# ---------------------------------------------------------------------------------------------
# Inputs shaped exactly as the gateway builds them (gateway/policy/inputs.py build_input).

agent := {"id": "agent-1", "tenant": "demo", "roles": ["agent"]}

finance := {"id": "finance-1", "tenant": "demo", "roles": ["agent", "finance"]}

outsider := {"id": "x-1", "tenant": "acme", "roles": ["agent", "finance"]}

nobody := {"id": "guest", "tenant": "demo", "roles": []}

ops := {
	"ledger.get_balance": {"name": "ledger.get_balance", "backend": "ledger", "tags": ["accounts"], "method": "GET", "path": "/accounts/{account}/balance"},
	"ledger.list_accounts": {"name": "ledger.list_accounts", "backend": "ledger", "tags": [], "method": "GET", "path": "/accounts"},
	# The catalog forgot the tag here: data.json still pins create_transfer as a payment.
	"ledger.create_transfer": {"name": "ledger.create_transfer", "backend": "ledger", "tags": [], "method": "POST", "path": "/transfers"},
	"workspace.send_email": {"name": "workspace.send_email", "backend": "workspace", "tags": ["mail"], "method": "POST", "path": "/emails"},
	"workspace.share_document": {"name": "workspace.share_document", "backend": "workspace", "tags": ["acl"], "method": "POST", "path": "/docs/{id}/share"},
	"hr.list_salaries": {"name": "hr.list_salaries", "backend": "hr", "tags": [], "method": "GET", "path": "/salaries"},
	"ledger.audit_log": {"name": "ledger.audit_log", "backend": "ledger", "tags": ["compliance"], "method": "GET", "path": "/audit"},
}

call(principal, kind, name) := {
	"principal": principal,
	"action": {"kind": kind, "operation": name, "arguments": {}},
	"operation": object.get(ops, name, {}),
	"context": {"time_ns": 1, "labels": {}},
}

code_run(principal) := {
	"principal": principal,
	"action": {"kind": "code", "operation": "", "source_sha256": "ab12"},
	"operation": {},
	"context": {"time_ns": 1, "labels": {}},
}

# ---------------------------------------------------------------------------------------------
# The routing table: [name, input, route, a substring every listed reason set must contain].

cases := [
	["read as host call", call(agent, "host_call", "ledger.get_balance"), "code", "allowed from code"],
	["read as tool", call(agent, "tool", "ledger.list_accounts"), "tool", "allowed as a tool"],
	["code run by agent", code_run(agent), "code", "code run allowed"],
	["code run without agent role", code_run(nobody), "deny", "needs the role agent for code actions"],
	["tool without agent role", call(nobody, "tool", "ledger.get_balance"), "deny", "needs the role agent for tool actions"],
	["transfer from code (agent)", call(agent, "host_call", "ledger.create_transfer"), "deny", "ledger.create_transfer is a dedicated tool: call it with tool_call, not from code"],
	["transfer from code (finance)", call(finance, "host_call", "ledger.create_transfer"), "deny", "call it with tool_call"],
	["transfer tool without finance", call(agent, "tool", "ledger.create_transfer"), "deny", "requires the role finance"],
	["transfer tool with finance", call(finance, "tool", "ledger.create_transfer"), "tool", "allowed as a dedicated tool"],
	["acl write needs security-admin", call(finance, "tool", "workspace.share_document"), "deny", "requires the role security-admin"],
	["acl write from code", call(agent, "host_call", "workspace.share_document"), "deny", "is a dedicated tool"],
	["compliance tag without grant", call(finance, "tool", "ledger.audit_log"), "deny", "no role is granted"],
	["email from code", call(agent, "host_call", "workspace.send_email"), "code", "allowed from code"],
	["unknown operation as tool", call(finance, "tool", "ledger.drop_tables"), "deny", "unknown operation \"ledger.drop_tables\""],
	["unknown operation from code", call(agent, "host_call", "nope.nothing"), "deny", "unknown operation"],
	["backend outside tenant", call(agent, "host_call", "hr.list_salaries"), "deny", "tenant \"demo\" may not use backend \"hr\""],
	["unknown tenant", call(outsider, "tool", "ledger.create_transfer"), "deny", "unknown tenant \"acme\""],
	["unknown tenant code run", code_run(outsider), "deny", "unknown tenant"],
	["unknown kind", call(agent, "shell", "ledger.get_balance"), "deny", "unknown action kind \"shell\""],
	["empty input", {}, "deny", "unknown"],
]

failures contains name if {
	some [name, case_input, want_route, want_reason] in cases
	d := routing.decision with input as case_input
	not matches(d, want_route, want_reason)
}

matches(d, want_route, want_reason) if {
	d.route == want_route
	some reason in d.reasons
	contains(reason, want_reason)
}

test_routing_table if {
	print("failing cases:", failures)
	count(failures) == 0
}

test_every_case_has_a_distinct_name if count({c[0] | some c in cases}) == count(cases)

# ---------------------------------------------------------------------------------------------
# Individual properties.

test_deny_lists_every_reason if {
	d := routing.decision with input as call(outsider, "host_call", "ledger.create_transfer")
	d.route == "deny"
	count(d.reasons) >= 2
}

test_mismatched_operation_denied if {
	i := json.patch(call(agent, "host_call", "ledger.get_balance"), [{"op": "replace", "path": "/action/operation", "value": "ledger.list_accounts"}])
	d := routing.decision with input as i
	d.route == "deny"
	some r in d.reasons
	contains(r, "catalog resolved")
}

test_limits_default_for_agent if {
	d := routing.decision with input as code_run(agent)
	d.limits == {"timeout_ms": 5000, "memory_mb": 256, "max_host_calls": 50, "max_output_bytes": 65536}
}

test_limits_raised_for_finance if {
	d := routing.decision with input as code_run(finance)
	d.limits.timeout_ms == 10000
	d.limits.max_host_calls == 200
	d.limits.memory_mb == 256
}

test_limits_come_from_data if {
	d := routing.decision with input as code_run(agent)
		with data.switchboard.limits as {"default": {"timeout_ms": 1, "memory_mb": 2, "max_host_calls": 3, "max_output_bytes": 4}, "roles": {}}
	d.limits == {"timeout_ms": 1, "memory_mb": 2, "max_host_calls": 3, "max_output_bytes": 4}
}

test_compliance_tool_obligations if {
	d := routing.decision with input as call(finance, "tool", "ledger.create_transfer")
	"idempotency.required" in d.obligations
	"audit.full" in d.obligations
}

# ---------------------------------------------------------------------------------------------
# Validation: the policy, not the gateway's Python, says which calls get strict argument checks.
# [name, input, validation]

validation_cases := [
	["compliance tool with grant", call(finance, "tool", "ledger.create_transfer"), "strict"],
	["acl tool (denied: no grant) still says strict", call(finance, "tool", "workspace.share_document"), "strict"],
	["catalog tag alone makes it strict", call(finance, "tool", "ledger.audit_log"), "strict"],
	["plain tool", call(agent, "tool", "ledger.list_accounts"), "standard"],
	["plain host call", call(agent, "host_call", "ledger.get_balance"), "standard"],
	["compliance op from code (denied)", call(finance, "host_call", "ledger.create_transfer"), "standard"],
	["code run", code_run(agent), "standard"],
	["empty input", {}, "standard"],
]

validation_failures contains [name, got] if {
	some [name, case_input, want] in validation_cases
	got := object.get(routing.decision, "validation", "<missing>") with input as case_input
	got != want
}

test_validation_table if {
	print("failing validation cases:", validation_failures)
	count(validation_failures) == 0
}

test_validation_follows_the_obligations_data if {
	d := routing.decision with input as call(finance, "tool", "ledger.create_transfer")
		with data.switchboard.obligations as {"compliance_tool": ["audit.full"]}
	d.validation == "standard"
	e := routing.decision with input as call(finance, "tool", "ledger.create_transfer")
	e.validation == "strict"
	"schema.strict" in e.obligations
}

test_plain_calls_have_no_obligations if {
	d := routing.decision with input as call(agent, "host_call", "ledger.get_balance")
	d.obligations == []
}

test_mask_covers_payment_accounts if {
	d := routing.decision with input as call(finance, "tool", "ledger.create_transfer")
	"action.arguments.**.from_account" in d.mask
	"action.arguments.**.to_account" in d.mask
	"action.arguments.**.card_number" in d.mask
}

test_mask_always_has_card_numbers if {
	d := routing.decision with input as call(agent, "host_call", "workspace.send_email")
	"action.arguments.**.card_number" in d.mask
	not "action.arguments.**.from_account" in d.mask
}

# The shipped masks reach any depth ("**": gateway/maskpath.py), not only top-level keys.
test_mask_always_reaches_any_depth if {
	d := routing.decision with input as call(agent, "tool", "ledger.list_accounts")
	every name in ["card_number", "cvv", "iban", "password", "token"] {
		concat(".", ["action.arguments.**", name]) in d.mask
	}
	every p in data.switchboard.mask.always {
		startswith(p, "action.arguments.**.")
	}
}

test_tenant_backends_from_data if {
	d := routing.decision with input as call(agent, "host_call", "hr.list_salaries")
		with data.switchboard.tenants as {"demo": {"backends": ["*"]}}
	d.route == "code"
}

test_grants_from_data if {
	d := routing.decision with input as call(agent, "tool", "ledger.create_transfer")
		with data.switchboard.grants as {"payments": ["agent"]}
	d.route == "tool"
}

test_catalog_tag_alone_makes_compliance if {
	i := json.patch(call(agent, "host_call", "ledger.get_balance"), [{"op": "replace", "path": "/operation/tags", "value": ["payments"]}])
	d := routing.decision with input as i
	d.route == "deny"
}

test_decision_always_defined if {
	every i in [{}, {"action": 1}, {"principal": "x", "action": {"kind": "tool"}}] {
		routing.decision.route == "deny" with input as i
	}
}

# Without its data the policy has no decision (limits come only from data.json): the gateway
# then reports NOT_SERVING and denies everything with "policy_unavailable", never a stale allow.
test_no_decision_without_data if {
	not routing.decision with data.switchboard as {}
	not routing.decision with input as code_run(agent) with data.switchboard as {}
}

# With its data there is a decision even for an input about nothing (the gateway's load probe).
test_decision_defined_for_the_probe_input if {
	d := routing.decision with input as {"principal": {}, "action": {}, "operation": {}, "context": {}}
	d.route == "deny"
}

# ---------------------------------------------------------------------------------------------
# Discovery (`advertise`): one evaluation over the whole catalog per role set, as the gateway
# builds it (gateway/pipeline.py Pipeline.discovery): principal without id, every operation.

secadmin := {"id": "sec-1", "tenant": "demo", "roles": ["agent", "security-admin"]}

catalog := [o | some o in ops]

discovery_input(p) := {"principal": {"tenant": p.tenant, "roles": p.roles}, "operations": catalog}

discover(p) := d if {
	d := routing.advertise with input as discovery_input(p)
}

plain_demo_ops := {"ledger.get_balance", "ledger.list_accounts", "workspace.send_email"}

# [name, principal, dedicated tools advertised, operations callable from code]
advertise_cases := [
	["finance sees the payment tool", finance, {"ledger.create_transfer"}, plain_demo_ops],
	["agent sees no dedicated tool", agent, set(), plain_demo_ops],
	["security-admin sees the acl tool", secadmin, {"workspace.share_document"}, plain_demo_ops],
	["no roles: nothing", nobody, set(), set()],
	["unknown tenant: nothing", outsider, set(), set()],
]

advertise_failures contains name if {
	some [name, p, want_tools, want_code] in advertise_cases
	d := discover(p)
	not advertise_matches(d, want_tools, want_code)
}

advertise_matches(d, want_tools, want_code) if {
	d.tools == want_tools
	d.code == want_code
}

test_advertise_table if {
	print("failing advertise cases:", advertise_failures)
	count(advertise_failures) == 0
}

# `advertise` and `decision` never disagree: a dedicated tool is exactly an operation the
# principal may call as a tool and not from code; "code" exactly what a code run may call.
principals := [agent, finance, secadmin, nobody, outsider]

expect_tool(p, name) if {
	routing.decision.route == "tool" with input as call(p, "tool", name)
	routing.decision.route == "deny" with input as call(p, "host_call", name)
}

expect_code(p, name) if {
	routing.decision.route == "code" with input as call(p, "host_call", name)
	routing.decision.route == "code" with input as code_run(p)
}

advertise_disagreements contains [p.id, name, "tools"] if {
	some p in principals
	some name, _ in ops
	d := discover(p)
	expect_tool(p, name)
	not name in d.tools
}

advertise_disagreements contains [p.id, name, "tools"] if {
	some p in principals
	d := discover(p)
	some name in d.tools
	not expect_tool(p, name)
}

advertise_disagreements contains [p.id, name, "code"] if {
	some p in principals
	some name, _ in ops
	d := discover(p)
	expect_code(p, name)
	not name in d.code
}

advertise_disagreements contains [p.id, name, "code"] if {
	some p in principals
	d := discover(p)
	some name in d.code
	not expect_code(p, name)
}

test_advertise_agrees_with_decision if {
	print("advertise vs decision:", advertise_disagreements)
	count(advertise_disagreements) == 0
}

test_advertise_grants_from_data if {
	d := discover(agent) with data.switchboard.grants as {"payments": ["agent"]}
	d.tools == {"ledger.create_transfer"}
}

test_advertise_tenant_backends_from_data if {
	d := discover(agent) with data.switchboard.tenants as {"demo": {"backends": ["*"]}}
	"hr.list_salaries" in d.code
}

test_advertise_catalog_tag_alone_makes_a_tool if {
	i := {"principal": {"tenant": "demo", "roles": ["finance"]}, "operations": [{"name": "square.create_payment", "backend": "ledger", "tags": ["payments"], "method": "POST", "path": "/v2/payments"}]}
	d := routing.advertise with input as i
	d.tools == {"square.create_payment"}
	d.code == set()
}

test_advertise_ignores_malformed_entries if {
	i := {"principal": {"tenant": "demo", "roles": ["agent"]}, "operations": [1, "x", {"backend": "ledger"}, {"name": 5, "backend": "ledger"}, {"name": "ledger.get_balance", "backend": "ledger"}]}
	d := routing.advertise with input as i
	d == {"tools": set(), "code": {"ledger.get_balance"}}
}

test_advertise_defined_for_the_probe_input if {
	d := routing.advertise with input as {"principal": {}, "action": {}, "operation": {}, "context": {}}
	d == {"tools": set(), "code": set()}
}

test_advertise_nothing_without_tenants_or_grants if {
	d := discover(finance) with data.switchboard.tenants as {}
	d == {"tools": set(), "code": set()}
	e := discover(finance) with data.switchboard.grants as {}
	e.tools == set()
}
