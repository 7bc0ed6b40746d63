# METADATA
# title: Switchboard routing
# description: |
#   Routes every agent action to the dedicated-tool channel, the code channel or a deny.
#   Compliance-tagged operations (payments, ACL writes) are reachable only as dedicated tools
#   and only by roles granted for them; everything else runs through code. Unknown operations,
#   unknown tenants and backends a tenant may not use are denied. All tags, grants, tenants,
#   limits and masks live in data.json beside this file, not in the rules.
# scope: package
# organizations: [Switchboard]
package switchboard.routing

import rego.v1

# ---------------------------------------------------------------------------------------------
# Facts derived from the input and data (no decisions here).

# Input is read only through plain references (input.a.b), never passed whole to a function:
# the embedded engine derives its decision-cache key from exactly these paths.
default kind := ""

kind := input.action.kind

default requested := ""

requested := input.action.operation

default op := {}

op := input.operation

op_name := object.get(op, "name", "")

op_backend := object.get(op, "backend", "")

default tenant := ""

tenant := input.principal.tenant

default principal_id := ""

principal_id := input.principal.id

roles := {r | some r in input.principal.roles}

# Tags from the catalog plus the ones data.json pins on operations (the policy does not trust
# the catalog alone to tag a payment).
# The same functions serve `decision` (one operation) and `advertise` (the whole catalog), so the
# two cannot disagree about what is compliance-sensitive or who holds its grants.
tags_of(o) := {t | some t in object.get(o, "tags", [])} | {t |
	some t in object.get(data.switchboard.operation_tags, object.get(o, "name", ""), [])
}

compliance_tag_set := {t | some t in data.switchboard.compliance_tags}

sensitive_of(o) := tags_of(o) & compliance_tag_set

# For each sensitive tag that has a grant: the roles that may use it.
granted_roles(sensitive) := {t: rs | some t in sensitive; rs := data.switchboard.grants[t]}

tags := tags_of(op)

sensitive_tags := sensitive_of(op)

compliance if count(sensitive_tags) > 0

required_roles := granted_roles(sensitive_tags)

tenant_known if data.switchboard.tenants[tenant]

tenant_backends := {b | some b in data.switchboard.tenants[tenant].backends}

backend_permitted(b) if b in tenant_backends

backend_permitted(_) if "*" in tenant_backends

backend_allowed if backend_permitted(op_backend)

has_any_role(wanted) if {
	some r in wanted
	r in roles
}

# Rules (not functions) so each is evaluated once per decision.
is_tool if kind == "tool"

is_code if kind == "code"

is_host_call if kind == "host_call"

targets_operation if is_tool

targets_operation if is_host_call

known_kind if targets_operation

known_kind if is_code

op_known if op_name != ""

op_consistent if {
	op_known
	op_name == requested
}

channel_roles := object.get(data.switchboard.channels, kind, [])

channel_ok if has_any_role(channel_roles)

compliance_tool if {
	is_tool
	compliance
}

holds_grants(required) if {
	count(required) > 0
	every _, rs in required {
		has_any_role(rs)
	}
}

grants_held if holds_grants(required_roles)

# Everything an operation-targeting action needs, whatever its channel.
operation_reachable if {
	op_consistent
	tenant_known
	backend_allowed
}

# ---------------------------------------------------------------------------------------------
# Why an action is denied: every reason that applies, so the agent can fix all at once.

deny contains msg if {
	not known_kind
	msg := sprintf("unknown action kind %q (expected tool, code or host_call)", [kind])
}

deny contains msg if {
	not tenant_known
	msg := sprintf("unknown tenant %q", [tenant])
}

deny contains msg if {
	targets_operation
	not op_known
	msg := sprintf("unknown operation %q: not in the catalog (use search to find operations)", [requested])
}

deny contains msg if {
	op_known
	not op_consistent
	msg := sprintf("action names operation %q but the catalog resolved %q", [requested, op_name])
}

deny contains msg if {
	targets_operation
	op_known
	tenant_known
	not backend_allowed
	msg := sprintf("tenant %q may not use backend %q", [tenant, op_backend])
}

deny contains msg if {
	is_host_call
	compliance
	msg := sprintf("%s is a dedicated tool: call it with tool_call, not from code", [op_name])
}

deny contains msg if {
	compliance_tool
	count(required_roles) == 0
	msg := sprintf("%s is compliance-tagged (%s) but no role is granted for it", [op_name, concat(", ", sort(sensitive_tags))])
}

deny contains msg if {
	compliance_tool
	some tag, rs in required_roles
	not has_any_role(rs)
	msg := sprintf(
		"%s requires the role %s (granted for %q operations); principal %q lacks it",
		[op_name, concat(" or ", sort(rs)), tag, principal_id],
	)
}

deny contains msg if {
	known_kind
	not compliance_tool
	not channel_ok
	msg := sprintf("principal %q needs the role %s for %s actions", [principal_id, concat(" or ", sort(channel_roles)), kind])
}

# ---------------------------------------------------------------------------------------------
# Where an action may go: explicit allows only. A route is given only when nothing denies it.

allow_route := "tool" if {
	compliance_tool
	operation_reachable
	grants_held
}

allow_route := "tool" if {
	is_tool
	not compliance
	operation_reachable
	channel_ok
}

allow_route := "code" if {
	is_code
	tenant_known
	channel_ok
}

allow_route := "code" if {
	is_host_call
	not compliance
	operation_reachable
	channel_ok
}

default route := "deny"

route := allow_route if count(deny) == 0

reasons := sort(deny) if count(deny) > 0

reasons := ["no policy rule allows this action"] if {
	count(deny) == 0
	not allow_route
}

reasons := [allow_reason] if {
	count(deny) == 0
	allow_route
}

allow_reason := sprintf("%s: compliance-tagged (%s), allowed as a dedicated tool", [op_name, concat(", ", sort(sensitive_tags))]) if {
	compliance_tool
}

allow_reason := sprintf("%s: allowed as a tool", [op_name]) if {
	is_tool
	not compliance
}

allow_reason := "code run allowed" if is_code

allow_reason := sprintf("%s: allowed from code", [op_name]) if is_host_call

# ---------------------------------------------------------------------------------------------
# Limits: the defaults, raised per limit to the largest value any of the principal's roles gets.

default_limits := data.switchboard.limits["default"]

role_limits := [l | some r in roles; l := data.switchboard.limits.roles[r]]

limits := default_limits if count(role_limits) == 0

limits := {name: max([v | some l in candidates; v := l[name]]) |
	some name, _ in default_limits
} if {
	count(role_limits) > 0
	candidates := array.concat([default_limits], role_limits)
}

obligations := sort(data.switchboard.obligations.compliance_tool) if compliance_tool

default obligations := []

# How the gateway checks an allowed action's arguments against the operation's schema:
# "strict" also rejects every field the schema does not declare, at any depth (a typo such as
# `ammount` is never silently dropped). The gateway asks this, never the tags: here it follows
# the obligations data.json attaches (`schema.strict` for compliance tools). Anything but
# "standard" or "strict", or `schema.strict` listed with "standard", is a policy error (deny).
default validation := "standard"

validation := "strict" if "schema.strict" in obligations

mask := sort({p | some p in data.switchboard.mask.always} | {p |
	some t in tags
	some p in object.get(data.switchboard.mask.tags, t, [])
})

# ---------------------------------------------------------------------------------------------
# Discovery: what the manifest advertises and how search shows each operation to a principal.
# Evaluated ONCE per (tenant, roles, catalog revision, policy revision) over the whole catalog,
# never per operation: input is {"principal": {"tenant", "roles"}, "operations": [{name,
# backend, tags, method, path}, ...]} (no principal id, no action: the answer is per role set).

# Dedicated tools: compliance operations this principal would be routed to as a tool.
advertised_tools contains name if {
	tenant_known
	some o in input.operations
	name := o.name
	is_string(name)
	sensitive := sensitive_of(o)
	count(sensitive) > 0
	backend_permitted(object.get(o, "backend", ""))
	holds_grants(granted_roles(sensitive))
}

# Callable from execute_code: the run is allowed and so is the host call.
code_callable contains name if {
	tenant_known
	has_any_role(object.get(data.switchboard.channels, "code", []))
	has_any_role(object.get(data.switchboard.channels, "host_call", []))
	some o in input.operations
	name := o.name
	is_string(name)
	count(sensitive_of(o)) == 0
	backend_permitted(object.get(o, "backend", ""))
}

# METADATA
# title: Discovery
# description: |
#   The gateway evaluates this rule once per (tenant, roles, catalog revision, policy revision)
#   and caches it: "tools" become the caller's dedicated tools in the manifest (and route "tool"
#   in search/describe), "code" the operations shown with route "code"; anything in neither is
#   hidden. Missing, undefined or malformed: nothing is advertised (fail closed).
# entrypoint: true
advertise := {"tools": advertised_tools, "code": code_callable}

# BEGIN approvals (docs/approvals.md): actions allowed only once a person holding an approver
# role approved this exact action. Rules in data.json (approvals.rules); the decision carries
# them as `require_approval`, {} when none applies.

default approval_arguments := {}

approval_arguments := input.action.arguments

default approval_rules := []

approval_rules := data.switchboard.approvals.rules

# Each rule: {operation, kinds?, argument?, above?, roles, expires_s?, reason?}. Without an
# argument a rule holds every call of the operation; with one it holds calls whose argument is
# a number above `above`, or a list longer than `above`. An argument that is absent or of
# another type never matches (the schema check rejects such calls anyway).
approval_hits contains i if {
	count(deny) == 0
	some i, r in approval_rules
	r.operation == op_name
	kind in object.get(r, "kinds", ["tool", "host_call"])
	approval_matches(r)
}

approval_matches(r) if not r.argument

approval_matches(r) if {
	v := approval_arguments[r.argument]
	is_number(v)
	v > r.above
}

approval_matches(r) if {
	v := approval_arguments[r.argument]
	is_array(v)
	count(v) > r.above
}

approval_reason(r) := r.reason if r.reason

approval_reason(r) := sprintf("%s: %s above %v needs approval by %s", [r.operation, r.argument, r.above, concat(" or ", sort(r.roles))]) if {
	not r.reason
	r.argument
}

approval_reason(r) := sprintf("%s needs approval by %s", [r.operation, concat(" or ", sort(r.roles))]) if {
	not r.reason
	not r.argument
}

default require_approval := {}

require_approval := {
	"reasons": sort({approval_reason(approval_rules[i]) | some i in approval_hits}),
	"roles": sort({role | some i in approval_hits; some role in approval_rules[i].roles}),
	"expires_s": min({s | some i in approval_hits; s := object.get(approval_rules[i], "expires_s", 3600)}),
} if count(approval_hits) > 0

# END approvals
# ---------------------------------------------------------------------------------------------

# Keep the entrypoint the last rule of this file: a truncated write that still parses then has
# no decision (the gateway denies everything), never a decision without the deny rules above.

# METADATA
# title: Routing decision
# description: The gateway evaluates this rule for every action and every host call from code.
# entrypoint: true
decision := {
	"route": route,
	"reasons": reasons,
	"limits": limits,
	"obligations": obligations,
	"mask": mask,
	"require_approval": require_approval,
	"validation": validation,
}
