{{/* Names and labels. */}}
{{- define "tapio.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tapio.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: pass (list $ "agent"). */}}
{{- define "tapio.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "tapio.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
{{- end -}}

{{/*
The configuration file of one component, as YAML: pass (list $ "agent"|"kubernetes"|"correlation"|"all-in-one").
Every key comes from values; `tapio config check` validates the result.
*/}}
{{- define "tapio.config" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $v := $root.Values -}}
{{- $config := deepCopy $v.config -}}
{{- $collectors := dict -}}
{{- if or (eq $component "agent") (eq $component "all-in-one") -}}
{{- $kubelet := deepCopy $v.collectors.kubelet -}}
{{- $_ := set $kubelet "token_path" "/var/run/secrets/kubernetes.io/serviceaccount/token" -}}
{{- $_ := set $kubelet "ca_path" "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt" -}}
{{- $_ := set $collectors "kernel" (deepCopy $v.collectors.kernel) -}}
{{- $_ := set $collectors "kubelet" $kubelet -}}
{{- $_ := set $collectors "systemd" (merge (dict "cursor_file" "/var/lib/tapio/journal.cursor") (deepCopy $v.collectors.systemd)) -}}
{{- end -}}
{{- if or (eq $component "kubernetes") (eq $component "all-in-one") -}}
{{- $kubernetes := omit (deepCopy $v.collectors.kubernetes) "kubeconfig" -}}
{{- $_ := set $collectors "kubernetes" $kubernetes -}}
{{- end -}}
{{- if eq $component "kubernetes" -}}
{{/* The watcher runs no node collector. */}}
{{- $_ := set $collectors "kernel" (dict "enabled" false) -}}
{{- end -}}
{{- if ne $component "correlation" -}}
{{- $_ := set $config "collectors" $collectors -}}
{{- end -}}
{{- $integrations := dict -}}
{{- if ne $component "all-in-one" -}}
{{- $_ := set $integrations "nats" (dict "url" $v.nats.url "spool_path" "/var/lib/tapio/nats-spool.jsonl") -}}
{{- end -}}
{{- if and $v.neo4j.uri (or (eq $component "correlation") (eq $component "all-in-one")) -}}
{{- $_ := set $integrations "neo4j" (dict "uri" $v.neo4j.uri "username" $v.neo4j.username) -}}
{{- end -}}
{{- if $integrations -}}
{{- $_ := set $config "integrations" $integrations -}}
{{- end -}}
{{- if eq $component "correlation" -}}
{{- $engine := dict "worker_count" (int $v.correlation.workers) -}}
{{- $correlation := merge (dict "engine" $engine) (default dict $config.correlation) -}}
{{- $_ := set $config "correlation" $correlation -}}
{{- end -}}
{{- $api := merge (dict "enabled" true) (omit (default dict $config.api) "address") -}}
{{- $_ := set $config "api" $api -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Environment shared by every container: log level, node name, API token, credentials. */}}
{{- define "tapio.env" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $v := $root.Values -}}
- name: TAPIO_LOG
  value: {{ $v.logLevel | quote }}
- name: TAPIO_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- if $v.api.existingSecret }}
- name: TAPIO_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $v.api.existingSecret }}
      key: {{ $v.api.tokenKey }}
{{- end }}
{{- if and $v.nats.existingSecret (ne $component "all-in-one") }}
- name: TAPIO_NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ $v.nats.existingSecret }}
      key: {{ $v.nats.userKey }}
- name: TAPIO_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.nats.existingSecret }}
      key: {{ $v.nats.passwordKey }}
{{- end }}
{{- if and $v.neo4j.uri (or (eq $component "correlation") (eq $component "all-in-one")) }}
- name: TAPIO_NEO4J_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.neo4j.existingSecret }}
      key: {{ $v.neo4j.passwordKey }}
{{- end }}
{{- end -}}

{{/* HTTP probes on the API. */}}
{{- define "tapio.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: api}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: api}
  periodSeconds: 5
  failureThreshold: 3
startupProbe:
  httpGet: {path: /healthz, port: api}
  periodSeconds: 2
  failureThreshold: 60
{{- end -}}
