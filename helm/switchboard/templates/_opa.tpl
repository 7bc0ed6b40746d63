{{/*
The OPA sidecar: its REST API listens on loopback only (only the gateway in the same pod can
ask for decisions or change anything); the kubelet probes the separate diagnostic server,
which serves /health and /metrics and nothing else.
*/}}
{{- define "switchboard.opaContainer" -}}
{{- $health := ternary "/health?bundles" "/health" (ne .Values.opa.bundle.url "") -}}
- name: opa
  image: {{ include "switchboard.imageRef" (dict "image" .Values.opa.image "default" "") | quote }}
  imagePullPolicy: {{ .Values.opa.image.pullPolicy }}
  {{- if .Values.opa.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  args:
    - run
    - --server
    - --addr=127.0.0.1:{{ .Values.opa.port }}
    - --diagnostic-addr=0.0.0.0:{{ .Values.opa.diagnosticPort }}
    - --config-file=/config/opa/config.yaml
    - --log-level={{ .Values.opa.logLevel }}
    - --log-format=json
    - --disable-telemetry
    {{- if not .Values.opa.bundle.url }}
    # Never load dot-files/directories (e.g. a ConfigMap's ..data) twice.
    - --ignore=.*
    - /policies
    {{- end }}
  ports:
    - name: opa-diag
      containerPort: {{ .Values.opa.diagnosticPort }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: {{ $health }}
      port: opa-diag
    periodSeconds: 1
    failureThreshold: 120
  livenessProbe:
    httpGet:
      path: /health
      port: opa-diag
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: {{ $health }}
      port: opa-diag
    periodSeconds: 5
    timeoutSeconds: 2
    failureThreshold: 2
  resources:
    {{- toYaml .Values.opa.resources | nindent 4 }}
  securityContext:
    {{- include "switchboard.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: opa-config
      mountPath: /config/opa
      readOnly: true
    {{- if not .Values.opa.bundle.url }}
    {{- include "switchboard.policyMounts" (dict "files" (include "switchboard.policyFiles" . | fromYaml) "root" "/policies") | nindent 4 }}
    {{- end }}
    {{- if .Values.opa.bundle.bearerTokenSecret.name }}
    - name: opa-bundle-token
      mountPath: /var/run/secrets/opa-bundle
      readOnly: true
    {{- end }}
{{- end -}}
