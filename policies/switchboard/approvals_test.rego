package switchboard.approvals_test

import rego.v1

import data.switchboard.routing

# Inputs shaped as the gateway builds them (gateway/policy/inputs.py build_input).

finance := {"id": "finance-1", "tenant": "demo", "roles": ["agent", "finance"]}

agent := {"id": "agent-1", "tenant": "demo", "roles": ["agent"]}

transfer_op := {"name": "ledger.create_transfer", "backend": "ledger", "tags": [], "method": "POST", "path": "/transfers"}

email_op := {"name": "workspace.send_email", "backend": "workspace", "tags": ["mail"], "method": "POST", "path": "/emails"}

act(principal, kind, op, arguments) := {
	"principal": principal,
	"action": {"kind": kind, "operation": op.name, "arguments": arguments},
	"operation": op,
	"context": {"time_ns": 1, "labels": {}},
}

transfer(amount) := {"from_account": "A1", "to_account": "A2", "amount": amount, "currency": "USD"}

# [name, input, whether approval is required]
cases := [
	["transfer below the threshold", act(finance, "tool", transfer_op, transfer(5)), false],
	["transfer at the threshold", act(finance, "tool", transfer_op, transfer(1000)), false],
	["transfer above the threshold", act(finance, "tool", transfer_op, transfer(1000.5)), true],
	["large transfer", act(finance, "tool", transfer_op, transfer(5000)), true],
	["amount not a number", act(finance, "tool", transfer_op, transfer("999999")), false],
	["amount absent", act(finance, "tool", transfer_op, {"from_account": "A1"}), false],
	["denied transfer asks for no approval", act(agent, "tool", transfer_op, transfer(5000)), false],
	["denied host call asks for no approval", act(finance, "host_call", transfer_op, transfer(5000)), false],
	["other operation", act(agent, "host_call", email_op, {"amount": 999999}), false],
]

failures contains name if {
	some [name, case_input, want] in cases
	d := routing.decision with input as case_input
	got := count(d.require_approval) > 0
	got != want
}

test_approval_table if {
	print("failing cases:", failures)
	count(failures) == 0
}

test_every_case_has_a_distinct_name if count({c[0] | some c in cases}) == count(cases)

test_large_transfer_names_roles_reason_and_expiry if {
	d := routing.decision with input as act(finance, "tool", transfer_op, transfer(2000))
	d.route == "tool"
	d.require_approval.roles == ["approver"]
	d.require_approval.expires_s == 3600
	some r in d.require_approval.reasons
	contains(r, "amount above 1000 needs approval by approver")
}

test_threshold_comes_from_data if {
	d := routing.decision with input as act(finance, "tool", transfer_op, transfer(50))
		with data.switchboard.approvals.rules as [{"operation": "ledger.create_transfer", "argument": "amount", "above": 10, "roles": ["cfo", "approver"], "expires_s": 60, "reason": "big"}]
	d.require_approval == {"reasons": ["big"], "roles": ["approver", "cfo"], "expires_s": 60}
}

test_rule_for_host_calls if {
	d := routing.decision with input as act(agent, "host_call", email_op, {"amount": 5})
		with data.switchboard.approvals.rules as [{"operation": "workspace.send_email", "kinds": ["host_call"], "argument": "amount", "above": 1, "roles": ["approver"]}]
	d.route == "code"
	d.require_approval.roles == ["approver"]
	d.require_approval.expires_s == 3600
}

test_no_rules_no_approval if {
	d := routing.decision with input as act(finance, "tool", transfer_op, transfer(2000))
		with data.switchboard.approvals as {}
	d.require_approval == {}
}

test_rule_without_argument_holds_every_call if {
	d := routing.decision with input as act(agent, "host_call", email_op, {"to": ["a@example.com"]})
		with data.switchboard.approvals.rules as [{"operation": "workspace.send_email", "roles": ["approver"]}]
	d.require_approval.reasons == ["workspace.send_email needs approval by approver"]
}

test_list_argument_counts_its_items if {
	rules := [{"operation": "workspace.send_email", "argument": "to", "above": 1, "roles": ["approver"]}]
	one := routing.decision with input as act(agent, "host_call", email_op, {"to": ["a@example.com"]})
		with data.switchboard.approvals.rules as rules
	two := routing.decision with input as act(agent, "host_call", email_op, {"to": ["a@example.com", "b@example.com"]})
		with data.switchboard.approvals.rules as rules
	one.require_approval == {}
	two.require_approval.roles == ["approver"]
}
