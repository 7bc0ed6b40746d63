{{/*
Names and labels follow the Helm conventions so selectors stay stable across upgrades.
*/}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchboard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "switchboard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "switchboard.labels" -}}
helm.sh/chart: {{ include "switchboard.chart" . }}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchboard
{{- end -}}

{{/* Pod template labels: the selector plus the descriptive labels, each key once. */}}
{{- define "switchboard.podLabels" -}}
{{ include "switchboard.selectorLabels" . }}
helm.sh/chart: {{ include "switchboard.chart" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchboard
{{- end -}}

{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret the pods read: the chart's own, or the operator's existing one. */}}
{{- define "switchboard.secretName" -}}
{{- default (include "switchboard.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "switchboard.createSecret" -}}
{{- if and .Values.secrets.create (not .Values.secrets.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/* Anything the pods need from a Secret at all? */}}
{{- define "switchboard.usesSecret" -}}
{{- if or .Values.identity.tokens.enabled .Values.identity.jwt.enabled .Values.idempotency.fromSecret .Values.audit.digestKey.fromSecret -}}true{{- end -}}
{{- end -}}

{{/* image reference: repository[:tag][@digest]; the digest wins when set. */}}
{{- define "switchboard.imageRef" -}}
{{- $img := .image -}}
{{- $tag := $img.tag | default .default -}}
{{- if $img.digest -}}
{{- printf "%s:%s@%s" $img.repository $tag $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "switchboard.opaEnabled" -}}
{{- if eq .Values.policy.engine "opa" -}}true{{- end -}}
{{- end -}}

{{/* The policies ConfigMap is needed unless OPA pulls a bundle instead. */}}
{{- define "switchboard.policiesFromConfigMap" -}}
{{- if or (eq .Values.policy.engine "embedded") (not .Values.opa.bundle.url) -}}true{{- end -}}
{{- end -}}

{{/*
Policy files: the chart's copy of policies/ (kept in sync by helm/sync-policies.sh) plus
policy.files, as a dict of relative path -> content. ConfigMap keys cannot hold "/", so
keys are the paths with "/" replaced by "__" and per-file mounts put them back in place
(OPA and the embedded engine load data.json under its directory's path: the layout matters).
*/}}
{{- define "switchboard.policyFiles" -}}
{{- $files := dict -}}
{{- range $path, $_ := .Files.Glob "policies/**" -}}
{{- $rel := trimPrefix "policies/" $path -}}
{{- if regexMatch "^[^.].*\\.(rego|json|yaml|yml)$" (base $rel) -}}
{{- $_ := set $files $rel ($.Files.Get $path) -}}
{{- end -}}
{{- end -}}
{{- range $rel, $content := .Values.policy.files -}}
{{- $_ := set $files $rel $content -}}
{{- end -}}
{{- toYaml $files -}}
{{- end -}}

{{/*
One read-only subPath mount per policy file, at root/<relative path>. A directory mount of a
ConfigMap exposes nested directories only as symlinks into ..data/, which directory walkers
that skip symlinked dirs or dot-directories (Python's rglob, for one) never enter; per-file
mounts give real directories. subPath mounts do not follow ConfigMap updates, which is fine:
checksum/policies rolls the pods on every change.
*/}}
{{- define "switchboard.policyMounts" -}}
{{- $root := .root -}}
{{- range $path := keys .files | sortAlpha }}
- name: policies
  mountPath: {{ printf "%s/%s" $root $path }}
  subPath: {{ include "switchboard.policyKey" $path }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "switchboard.policyKey" -}}
{{- . | replace "/" "__" -}}
{{- end -}}

{{/* host:port -> port, defaulting by scheme (used for NetworkPolicy egress ports). */}}
{{- define "switchboard.urlPort" -}}
{{- $u := urlParse . -}}
{{- $hostport := splitList ":" $u.host -}}
{{- if gt (len $hostport) 1 -}}
{{- last $hostport -}}
{{- else if eq $u.scheme "https" -}}
443
{{- else -}}
80
{{- end -}}
{{- end -}}

{{/* A NetworkPolicy peer from namespaceSelector/podSelector (as a one-item list), or nothing. */}}
{{- define "switchboard.selectorPeer" -}}
{{- $peer := dict -}}
{{- with .namespaceSelector }}{{ $_ := set $peer "namespaceSelector" . }}{{ end -}}
{{- with .podSelector }}{{ $_ := set $peer "podSelector" . }}{{ end -}}
{{- if $peer }}{{ toYaml (list $peer) }}{{ end -}}
{{- end -}}

{{/* The gateway's config file (gateway/config.py format; unknown keys are rejected there). */}}
{{- define "switchboard.gatewayConfig" -}}
{{- $v := .Values -}}
{{- $identity := dict -}}
{{- if $v.identity.tokens.enabled -}}
{{- $_ := set $identity "tokens_file" "/etc/switchboard/secrets/tokens.yaml" -}}
{{- end -}}
{{- if $v.identity.jwt.enabled -}}
{{- $jwt := dict "jwks_url" "${SWITCHBOARD_JWKS_URL}" -}}
{{- with $v.identity.jwt.issuer }}{{ $_ := set $jwt "issuer" . }}{{ end -}}
{{- with $v.identity.jwt.audience }}{{ $_ := set $jwt "audience" . }}{{ end -}}
{{- $_ := set $identity "jwt" $jwt -}}
{{- end -}}
{{- $policy := dict "engine" $v.policy.engine "timeout_ms" (int $v.policy.timeoutMs) -}}
{{- if eq $v.policy.engine "opa" -}}
{{- $_ := set $policy "opa_url" (printf "http://127.0.0.1:%d" (int $v.opa.port)) -}}
{{- else -}}
{{- $_ := set $policy "path" "/etc/switchboard/policies" -}}
{{- $_ := set $policy "workers" (int $v.policy.workers) -}}
{{- end -}}
{{- $backends := list -}}
{{- range $v.backends -}}
{{- $b := dict "name" .name -}}
{{- with .openapi }}{{ $_ := set $b "openapi" . }}{{ end -}}
{{- with .app }}{{ $_ := set $b "app" . }}{{ end -}}
{{- with .baseUrl }}{{ $_ := set $b "base_url" . }}{{ end -}}
{{- if hasKey . "timeoutMs" }}{{ $_ := set $b "timeout_ms" (int .timeoutMs) }}{{ end -}}
{{- if hasKey . "retries" }}{{ $_ := set $b "retries" (int .retries) }}{{ end -}}
{{- with .tags }}{{ $_ := set $b "tags" . }}{{ end -}}
{{- with .headers }}{{ $_ := set $b "headers" . }}{{ end -}}
{{- $backends = append $backends $b -}}
{{- end -}}
{{- $dsn := $v.idempotency.dsn -}}
{{- if $v.idempotency.fromSecret }}{{ $dsn = "${SWITCHBOARD_IDEMPOTENCY_DSN}" }}{{ end -}}
{{- $audit := dict "log_format" $v.audit.logFormat "service_name" $v.audit.serviceName -}}
{{- with $v.audit.file }}{{ $_ := set $audit "file" . }}{{ end -}}
{{- if $v.audit.otlp.endpoint -}}
{{- $_ := set $audit "otlp_endpoint" $v.audit.otlp.endpoint -}}
{{- $_ := set $audit "otlp_protocol" $v.audit.otlp.protocol -}}
{{- with $v.audit.otlp.headers }}{{ $_ := set $audit "otlp_headers" . }}{{ end -}}
{{- end -}}
{{- $mcp := dict "enabled" $v.mcp.enabled "listen" (printf "%s:%d" $v.gateway.listenHost (int $v.mcp.port)) -}}
{{- with $v.mcp.allowedHosts }}{{ $_ := set $mcp "allowed_hosts" . }}{{ end -}}
{{- with $v.mcp.allowedOrigins }}{{ $_ := set $mcp "allowed_origins" . }}{{ end -}}
{{- with $v.mcp.resourceUrl }}{{ $_ := set $mcp "resource_url" . }}{{ end -}}
{{- $_ := set $mcp "max_connections_per_address" (int $v.mcp.maxConnectionsPerAddress) -}}
{{- $_ := set $mcp "max_connections" (int $v.mcp.maxConnections) -}}
{{- $cfg := dict
  "listen" (printf "%s:%d" $v.gateway.listenHost (int $v.gateway.grpcPort))
  "max_message_bytes" (int $v.gateway.maxMessageBytes)
  "identity" $identity
  "policy" $policy
  "backends" $backends
  "sandbox" (dict "workers" (int $v.sandbox.workers) "session_idle_s" $v.sandbox.sessionIdleSeconds "max_sessions" (int $v.sandbox.maxSessions) "max_sessions_per_principal" (int $v.sandbox.maxSessionsPerPrincipal) "max_queued_per_principal" (int $v.sandbox.maxQueuedPerPrincipal))
  "idempotency" (dict "dsn" $dsn)
  "audit" $audit
  "mcp" $mcp
-}}
{{- if $v.gateway.maxConcurrentRpcs }}{{ $_ := set $cfg "max_concurrent_rpcs" (int $v.gateway.maxConcurrentRpcs) }}{{ end -}}
{{- if gt (int ($v.gateway.processes | default 1)) 1 }}{{ $_ := set $cfg "server" (dict "processes" (int $v.gateway.processes)) }}{{ end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Refuse configurations that deploy but cannot work. */}}
{{- define "switchboard.validate" -}}
{{- $v := .Values -}}
{{- $multi := or (gt (int $v.replicaCount) 1) $v.autoscaling.enabled -}}
{{- if and $multi (not $v.idempotency.fromSecret) (hasPrefix "sqlite" $v.idempotency.dsn) -}}
{{- fail "several replicas need a shared idempotency store: set idempotency.fromSecret=true with a PostgreSQL/Redis DSN in the Secret (key idempotency-dsn); a per-pod SQLite file would let a request_id take effect once per pod" -}}
{{- end -}}
{{- if and $multi $v.state.persistence.enabled (not $v.state.persistence.existingClaim) -}}
{{- fail "state.persistence creates one ReadWriteOnce claim, which several replicas cannot share: use an emptyDir (persistence off) with a shared idempotency store and OTLP export" -}}
{{- end -}}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and (include "switchboard.createSecret" .) $v.identity.jwt.enabled (not $v.secrets.jwksUrl) -}}
{{- fail "identity.jwt.enabled needs secrets.jwksUrl (or secrets.existingSecret with key jwks-url)" -}}
{{- end -}}
{{- if and (include "switchboard.createSecret" .) $v.idempotency.fromSecret (not $v.secrets.idempotencyDsn) -}}
{{- fail "idempotency.fromSecret needs secrets.idempotencyDsn (or secrets.existingSecret with key idempotency-dsn)" -}}
{{- end -}}
{{- if and (include "switchboard.createSecret" .) $v.audit.digestKey.fromSecret (not $v.secrets.auditDigestKey) -}}
{{- fail "audit.digestKey.fromSecret needs secrets.auditDigestKey (or secrets.existingSecret with key audit-digest-key)" -}}
{{- end -}}
{{- if and (include "switchboard.usesSecret" .) (not $v.secrets.create) (not $v.secrets.existingSecret) -}}
{{- fail "identity tokens/JWT or idempotency.fromSecret read a Secret: set secrets.create=true or secrets.existingSecret" -}}
{{- end -}}
{{- if not (or $v.identity.tokens.enabled $v.identity.jwt.enabled) -}}
{{- fail "enable identity.tokens or identity.jwt: without one no caller can authenticate" -}}
{{- end -}}
{{- if and $v.mcp.allowedOrigins (not $v.mcp.allowedHosts) -}}
{{- fail "mcp.allowedOrigins needs mcp.allowedHosts: with Host checks on and no allowed host, every MCP request would be refused" -}}
{{- end -}}
{{- if and $v.opa.bundle.url (eq $v.policy.engine "embedded") -}}
{{- fail "opa.bundle.url needs policy.engine=opa (the embedded engine reads the policies ConfigMap)" -}}
{{- end -}}
{{- if le (int $v.terminationGracePeriodSeconds) (add (int $v.gateway.preStopSleepSeconds) 10 | int) -}}
{{- fail "terminationGracePeriodSeconds must exceed gateway.preStopSleepSeconds + 10 (the gateway's drain grace)" -}}
{{- end -}}
{{- if gt (int $v.opa.bundle.minDelaySeconds) (int $v.opa.bundle.maxDelaySeconds) -}}
{{- fail "opa.bundle.minDelaySeconds must not exceed opa.bundle.maxDelaySeconds" -}}
{{- end -}}
{{- end -}}

{{/* Hardened container securityContext shared by every container of the chart. */}}
{{- define "switchboard.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "switchboard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}
