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

test_plain_calls_have_no_obligations if {
	d := routing.decision with input as call(agent, "host_call", "ledger.get_balance")
	d.obligations == []
}

test_mask_covers_payment_accounts if {
	d := routing.decision with input as call(finance, "tool", "ledger.create_transfer")
	"action.arguments.from_account" in d.mask
	"action.arguments.to_account" in d.mask
	"action.arguments.card_number" in d.mask
}

test_mask_always_has_card_numbers if {
	d := routing.decision with input as call(agent, "host_call", "workspace.send_email")
	"action.arguments.card_number" in d.mask
	not "action.arguments.from_account" in d.mask
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
