{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "hookbus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full resource name: <release>-<chart>, or <release> when it already contains the chart name. */}}
{{- define "hookbus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hookbus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "hookbus.labels" -}}
helm.sh/chart: {{ include "hookbus.chart" . }}
{{ include "hookbus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hookbus
{{- end }}

{{/* Labels that select the pods; never change them between releases. */}}
{{- define "hookbus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hookbus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hookbus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hookbus.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hookbus.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Name of the Secret whose keys become env vars, or "" when there is none. */}}
{{- define "hookbus.envSecretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else if include "hookbus.chartSecretData" . }}
{{- include "hookbus.fullname" . }}
{{- end }}
{{- end }}

{{/* Data of the chart-managed env Secret (key: plain value), as YAML; "" when there is none. */}}
{{- define "hookbus.chartSecretData" -}}
{{- if not .Values.secret.existingSecret }}
{{- $data := dict }}
{{- with .Values.secret.authToken }}{{ $_ := set $data "HOOKBUS_AUTH_TOKEN" . }}{{ end }}
{{- with .Values.secret.natsUser }}{{ $_ := set $data "HOOKBUS_NATS_USER" . }}{{ end }}
{{- with .Values.secret.natsPassword }}{{ $_ := set $data "HOOKBUS_NATS_PASSWORD" . }}{{ end }}
{{- range $k, $v := .Values.secret.env }}{{ $_ := set $data $k (toString $v) }}{{ end }}
{{- if $data }}{{ toYaml $data }}{{ end }}
{{- end }}
{{- end }}

{{/* Name of the Secret mounted as files, or "" when there is none. */}}
{{- define "hookbus.filesSecretName" -}}
{{- if .Values.secretFiles.existingSecret }}
{{- .Values.secretFiles.existingSecret }}
{{- else if .Values.secretFiles.files }}
{{- printf "%s-files" (include "hookbus.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Seconds in a hookbus duration ("500ms", "20s", "20m", "1h", "1m30s"), rounded up.
values.schema.json restricts durations to these units.
*/}}
{{- define "hookbus.durationSeconds" -}}
{{- $ms := 0 }}
{{- range regexFindAll "[0-9]+ *(ms|h|m|s)" (toString .) -1 }}
{{- $n := regexFind "^[0-9]+" . | int64 }}
{{- $unit := regexFind "(ms|h|m|s)$" . }}
{{- if eq $unit "ms" }}{{ $ms = add $ms $n }}
{{- else if eq $unit "s" }}{{ $ms = add $ms (mul $n 1000) }}
{{- else if eq $unit "m" }}{{ $ms = add $ms (mul $n 60000) }}
{{- else if eq $unit "h" }}{{ $ms = add $ms (mul $n 3600000) }}
{{- end }}
{{- end }}
{{- div (add $ms 999) 1000 }}
{{- end }}

{{/* terminationGracePeriodSeconds: explicit (checked) or preStop + shutdown.grace + 10 s. */}}
{{- define "hookbus.terminationGracePeriodSeconds" -}}
{{- $grace := include "hookbus.durationSeconds" .Values.config.shutdown.grace | int64 }}
{{- $preStop := .Values.lifecycle.preStopSleepSeconds | int64 }}
{{- $floor := add $grace $preStop }}
{{- if kindIs "string" .Values.terminationGracePeriodSeconds }}
{{- add $floor 10 }}
{{- else }}
{{- $tgps := .Values.terminationGracePeriodSeconds | int64 }}
{{- if le $tgps $floor }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than lifecycle.preStopSleepSeconds + config.shutdown.grace (%d s): the kubelet would SIGKILL hookbus while it drains the spool" $tgps $floor) }}
{{- end }}
{{- $tgps }}
{{- end }}
{{- end }}

{{/* config.toml rendered from .Values.config; strings go through toJson (a valid TOML basic string). */}}
{{- define "hookbus.configToml" -}}
{{- $c := .Values.config -}}
# Rendered by the hookbus Helm chart from .Values.config; edit the values, not this file.
# Secrets are not here: the auth token and NATS credentials come from env
# (HOOKBUS_AUTH_TOKEN, HOOKBUS_NATS_USER, HOOKBUS_NATS_PASSWORD) out of a Secret.

[http]
listen = {{ printf "0.0.0.0:%d" (.Values.containerPorts.http | int) | toJson }}
max_body_bytes = {{ $c.http.max_body_bytes | int64 }}
{{- with $c.http.max_connections }}
max_connections = {{ . | int64 }}
{{- end }}

[admin]
listen = {{ printf "0.0.0.0:%d" (.Values.containerPorts.admin | int) | toJson }}

[auth]
allowed_sub_keys = {{ $c.auth.allowed_sub_keys | default list | toJson }}

[ack]
mode = {{ $c.ack.mode | toJson }}
{{- with $c.ack.queue_capacity }}
queue_capacity = {{ . | int64 }}
{{- end }}
{{- with $c.ack.publish_timeout }}
publish_timeout = {{ . | toString | toJson }}
{{- end }}
{{- with $c.ack.retry_after }}
retry_after = {{ . | toString | toJson }}
{{- end }}

[spool]
dir = {{ $c.spool.dir | toJson }}
max_bytes = {{ $c.spool.max_bytes | int64 }}
{{- with $c.spool.segment_bytes }}
segment_bytes = {{ . | int64 }}
{{- end }}

[dedup]
window = {{ $c.dedup.window | toString | toJson }}
max_entries = {{ $c.dedup.max_entries | int64 }}

[routing]
template = {{ $c.routing.template | toJson }}
dead_letter = {{ $c.routing.dead_letter | toJson }}

[sink]
kind = {{ $c.sink.kind | toJson }}
{{- with $c.sink.max_in_flight }}
max_in_flight = {{ . | int64 }}
{{- end }}
{{- with $c.sink.timeout }}
timeout = {{ . | toString | toJson }}
{{- end }}
{{- with $c.sink.max_backoff }}
max_backoff = {{ . | toString | toJson }}
{{- end }}

[nats]
url = {{ $c.nats.url | toJson }}
jetstream = {{ $c.nats.jetstream | toJson }}
stream = {{ $c.nats.stream | toJson }}
{{- with $c.nats.connect_timeout }}
connect_timeout = {{ . | toString | toJson }}
{{- end }}

[shutdown]
grace = {{ $c.shutdown.grace | toString | toJson }}

[kafka]
brokers = {{ $c.kafka.brokers | toJson }}
create_topics = {{ $c.kafka.create_topics | toJson }}
partitions = {{ $c.kafka.partitions | int64 }}
replication_factor = {{ $c.kafka.replication_factor | int64 }}

[kafka.properties]
{{- range $key, $value := $c.kafka.properties }}
{{- if kindIs "float64" $value }}{{ $value = $value | int64 }}{{ end }}
{{ $key | toJson }} = {{ $value | toString | toJson }}
{{- end }}
{{ end }}

{{/* A threshold as PromQL number text: integers without a fraction or exponent. */}}
{{- define "hookbus.promNumber" -}}
{{- if kindIs "string" . }}{{ . }}
{{- else if eq (float64 .) (floor (float64 .)) }}{{ printf "%d" (int64 .) }}
{{- else }}{{ printf "%v" (float64 .) }}
{{- end }}
{{- end }}

{{/*
The alert rule groups, as a YAML list: files/prometheus/rules.yaml with ${threshold},
${selector}, severity, for, extra labels and runbook_url from metrics.prometheusRule.
Every alert of the file needs an entry in metrics.prometheusRule.rules and every entry
there must name an alert of the file, so a typo fails the render instead of being ignored.
*/}}
{{- define "hookbus.alertGroups" -}}
{{- $pr := .Values.metrics.prometheusRule }}
{{- $src := .Files.Get "files/prometheus/rules.yaml" | fromYaml }}
{{- if not $src.groups }}
{{- fail "files/prometheus/rules.yaml is missing or has no groups" }}
{{- end }}
{{- $settings := $pr.rules | default dict }}
{{- $selector := $pr.targetSelector | default (printf "job=%q" (include "hookbus.name" .)) }}
{{- $base := $pr.runbookBase | default "docs/runbooks.md" }}
{{- $known := dict }}
{{- $groups := list }}
{{- range $g := $src.groups }}
{{- $rules := list }}
{{- range $r := $g.rules }}
{{- if $r.record }}
{{- $rules = append $rules $r }}
{{- else }}
{{- $name := $r.alert }}
{{- $_ := set $known $name true }}
{{- if not (hasKey $settings $name) }}
{{- fail (printf "metrics.prometheusRule.rules.%s is missing (values.yaml lists every alert of files/prometheus/rules.yaml)" $name) }}
{{- end }}
{{- $s := index $settings $name | default dict }}
{{- if ne (toString $s.enabled) "false" }}
{{- $expr := $r.expr | replace "${selector}" $selector }}
{{- $th := "" }}
{{- if contains "${threshold}" $r.expr }}
{{- if kindIs "invalid" $s.threshold }}
{{- fail (printf "metrics.prometheusRule.rules.%s.threshold is required" $name) }}
{{- end }}
{{- $th = include "hookbus.promNumber" $s.threshold }}
{{- $expr = $expr | replace "${threshold}" $th }}
{{- else if not (kindIs "invalid" $s.threshold) }}
{{- fail (printf "metrics.prometheusRule.rules.%s.threshold is set, but the alert has no threshold" $name) }}
{{- end }}
{{- $labels := dict "severity" ($s.severity | default "warning") }}
{{- range $k, $v := $s.labels | default dict }}
{{- if ne $k "severity" }}{{ $_ := set $labels $k (toString $v) }}{{ end }}
{{- end }}
{{- $annotations := dict }}
{{- range $k, $v := $r.annotations }}
{{- $_ := set $annotations $k ($v | replace "${threshold}" $th | replace "${selector}" $selector) }}
{{- end }}
{{- $_ := set $annotations "runbook_url" (printf "%s#%s" $base (lower $name)) }}
{{- $rule := dict "alert" $name "expr" $expr "labels" $labels "annotations" $annotations }}
{{- $for := toString ($s.for | default "") }}
{{- if and $for (ne $for "0s") (ne $for "0") }}
{{- $_ := set $rule "for" $for }}
{{- end }}
{{- $rules = append $rules $rule }}
{{- end }}
{{- end }}
{{- end }}
{{- if $rules }}
{{- $groups = append $groups (dict "name" $g.name "rules" $rules) }}
{{- end }}
{{- end }}
{{- range $name, $_ := $settings }}
{{- if not (hasKey $known $name) }}
{{- fail (printf "metrics.prometheusRule.rules.%s names no alert of files/prometheus/rules.yaml" $name) }}
{{- end }}
{{- end }}
{{- toYaml $groups }}
{{- end }}
