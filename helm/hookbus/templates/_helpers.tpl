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
{{- with .Values.secret.natsToken }}{{ $_ := set $data "HOOKBUS_NATS_TOKEN" . }}{{ end }}
{{- range $k, $v := .Values.secret.env }}{{ $_ := set $data $k (toString $v) }}{{ end }}
{{- if $data }}{{ toYaml $data }}{{ end }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the token the chart generated (see hookbus.authTokenSource). */}}
{{- define "hookbus.authSecretName" -}}
{{- printf "%s-auth" (include "hookbus.fullname" . | trunc 58 | trimSuffix "-") }}
{{- end }}

{{/*
Where hookbus's webhook token (env HOOKBUS_AUTH_TOKEN) comes from. hookbus refuses to start
without a token unless config.auth.allow_anonymous is true, so the chart never leaves it
unset by accident:
  authToken       secret.authToken, in the chart-managed Secret (envFrom)
  env             secret.env.HOOKBUS_AUTH_TOKEN, in the chart-managed Secret (envFrom)
  extraEnv        an extraEnv entry named HOOKBUS_AUTH_TOKEN
  existingSecret  secret.existingSecret has a non-empty HOOKBUS_AUTH_TOKEN, or cannot be read
                  (offline render, not created yet): it is assumed to have one
  anonymous       none of the above and config.auth.allow_anonymous: no token at all
  generated       none of the above: a random token in the Secret hookbus.authSecretName
*/}}
{{- define "hookbus.authTokenSource" -}}
{{- $sec := .Values.secret }}
{{- $extraEnv := false }}
{{- range .Values.extraEnv }}{{ if eq (toString .name) "HOOKBUS_AUTH_TOKEN" }}{{ $extraEnv = true }}{{ end }}{{ end }}
{{- $existing := false }}
{{- if $sec.existingSecret }}
{{- $found := lookup "v1" "Secret" .Release.Namespace $sec.existingSecret }}
{{- if or (not $found) (index ($found.data | default dict) "HOOKBUS_AUTH_TOKEN") }}{{ $existing = true }}{{ end }}
{{- end }}
{{- if $sec.authToken }}authToken
{{- else if hasKey ($sec.env | default dict) "HOOKBUS_AUTH_TOKEN" }}env
{{- else if $extraEnv }}extraEnv
{{- else if $existing }}existingSecret
{{- else if .Values.config.auth.allow_anonymous }}anonymous
{{- else }}generated
{{- end }}
{{- end }}

{{/*
The generated token: the one in the release's Secret hookbus.authSecretName when it exists
(so upgrades and reinstalls keep the token PubNub was given), else 48 random alphanumerics.
Call it once per render (the Secret template): each call outside a cluster is a new token.
*/}}
{{- define "hookbus.generatedAuthToken" -}}
{{- $token := "" }}
{{- with lookup "v1" "Secret" .Release.Namespace (include "hookbus.authSecretName" .) }}
{{- with .data }}{{ with .HOOKBUS_AUTH_TOKEN }}{{ $token = b64dec . }}{{ end }}{{ end }}
{{- end }}
{{- $token | default (randAlphaNum 48) }}
{{- end }}

{{/* The env entry giving hookbus (and the helm test) the token, for sources that need one in env. */}}
{{- define "hookbus.authTokenEnv" -}}
{{- $source := include "hookbus.authTokenSource" . }}
{{- if eq $source "generated" }}
- name: HOOKBUS_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "hookbus.authSecretName" . }}
      key: HOOKBUS_AUTH_TOKEN
{{- end }}
{{- end }}

{{/*
The env list of the hookbus container (and the drain Jobs): the generated token (when the chart
generated it), RUST_LOG from logLevel, HOOKBUS_LOG_FORMAT from logFormat, then extraEnv (an
extraEnv entry of the same name replaces the chart's).
*/}}
{{- define "hookbus.containerEnv" -}}
{{- with include "hookbus.authTokenEnv" . }}
# The webhook token the chart generated (no authToken, existing Secret key or extraEnv entry).
{{ . | trim }}
{{- end }}
{{- $own := dict }}
{{- range .Values.extraEnv }}{{ $_ := set $own (toString .name) true }}{{ end }}
{{- if not (hasKey $own "RUST_LOG") }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end }}
{{- if and (eq .Values.logFormat "json") (not (hasKey $own "HOOKBUS_LOG_FORMAT")) }}
- name: HOOKBUS_LOG_FORMAT
  value: json
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The data of the Secrets the chart does not render but hookbus reads (secret.existingSecret,
secretFiles.existingSecret, the generated token's Secret), as found in the cluster at
install/upgrade (lookup; "" offline, e.g. helm template): its checksum rolls the pods when one
of them changed since the last upgrade.
*/}}
{{- define "hookbus.externalSecretsData" -}}
{{- $names := list (include "hookbus.authSecretName" .) }}
{{- with .Values.secret.existingSecret }}{{ $names = append $names . }}{{ end }}
{{- with .Values.secretFiles.existingSecret }}{{ $names = append $names . }}{{ end }}
{{- range $names }}
{{- with lookup "v1" "Secret" $.Release.Namespace . }}
{{ .metadata.name }}: {{ toJson .data }}
{{- end }}
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

{{/*
Startup probe failureThreshold: probes.startup.failureThreshold when set (refused if it does not
cover the budget below), else derived: periodSeconds x failureThreshold >= baseSeconds + the
spool budget (hookbus.spoolBudgetBytes) read at minReplayBytesPerSecond. hookbus opens the admin
port only after reading the spool back, so a fuller spool on a slower volume needs longer.
*/}}
{{- define "hookbus.startupFailureThreshold" -}}
{{- $p := .Values.probes.startup }}
{{- $period := $p.periodSeconds | int64 }}
{{- $rate := $p.minReplayBytesPerSecond | default 8388608 | int64 }}
{{- $budget := add ($p.baseSeconds | default 60 | int64) (div (add (include "hookbus.spoolBudgetBytes" . | int64) (sub $rate 1)) $rate) }}
{{- $need := div (add $budget (sub $period 1)) $period }}
{{- if kindIs "invalid" $p.failureThreshold }}
{{- $need }}
{{- else }}
{{- if lt (int64 $p.failureThreshold) $need }}
{{- fail (printf "probes.startup: periodSeconds %d x failureThreshold %d = %d s does not cover reading the spool back at start: baseSeconds + spool budget / minReplayBytesPerSecond = %d s. The kubelet would kill hookbus while it replays a full spool, again and again. Raise failureThreshold (or leave it null: derived), or lower minReplayBytesPerSecond only if the volume is faster." $period (int64 $p.failureThreshold) (mul $period (int64 $p.failureThreshold)) $budget) }}
{{- end }}
{{- int64 $p.failureThreshold }}
{{- end }}
{{- end }}

{{/* One TOML value: booleans, integers (every number of config.toml is one), lists, strings. */}}
{{- define "hookbus.tomlValue" -}}
{{- if kindIs "bool" . }}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}{{ int64 . }}
{{- else if kindIs "slice" . }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "hookbus.tomlValue" $v }}{{ end }}]
{{- else }}{{ toString . | toJson }}
{{- end }}
{{- end }}

{{/* `key = value` on a new line, or nothing when the value is null or absent: (list "key" value). */}}
{{- define "hookbus.tomlOpt" -}}
{{- $v := index . 1 }}
{{- if not (kindIs "invalid" $v) }}
{{ index . 0 }} = {{ include "hookbus.tomlValue" $v }}
{{- end }}
{{- end }}

{{/*
config.toml rendered from .Values.config; strings go through toJson (a valid TOML basic string).
The file both workloads mount: the bridge's sections, then [roster] and [roster.here_now] when
roster.enabled (hookbus.rosterToml).
*/}}
{{- define "hookbus.configToml" -}}
{{ include "hookbus.configTomlBase" . }}
{{- include "hookbus.rosterToml" . }}
{{- end }}

{{/*
config.toml without the roster's sections: the bridge's checksum/config, so that a change of
config.roster (or turning the roster on) rolls the roster alone. The bridge ignores [roster].
*/}}
{{- define "hookbus.configTomlBase" -}}
{{- $c := .Values.config -}}
{{- $admin := $c.admin | default dict -}}
{{- $nats := $c.nats -}}
# Rendered by the hookbus Helm chart from .Values.config; edit the values, not this file.
# Secrets are not here: the auth token and NATS credentials come from env
# (HOOKBUS_AUTH_TOKEN, HOOKBUS_NATS_USER, HOOKBUS_NATS_PASSWORD, HOOKBUS_NATS_TOKEN) out of
# a Secret, other values as "${ENV_VAR}" or "${file:/path}" references resolved at start.

[http]
listen = {{ printf "0.0.0.0:%d" (.Values.containerPorts.http | int) | toJson }}
max_body_bytes = {{ $c.http.max_body_bytes | int64 }}
{{- range $k := list "max_connections" "header_timeout" "request_timeout" "idle_timeout" "max_batch_items" "max_inflight_bytes" }}
{{- include "hookbus.tomlOpt" (list $k (index $c.http $k)) }}
{{- end }}

[admin]
listen = {{ printf "0.0.0.0:%d" (.Values.containerPorts.admin | int) | toJson }}
{{- include "hookbus.tomlOpt" (list "max_connections" $admin.max_connections) }}

[auth]
allowed_sub_keys = {{ include "hookbus.tomlValue" ($c.auth.allowed_sub_keys | default list) }}
allow_anonymous = {{ $c.auth.allow_anonymous | default false }}
{{- include "hookbus.tomlOpt" (list "tokens" $c.auth.tokens) }}
{{- include "hookbus.tomlOpt" (list "header" $c.auth.header) }}

[ack]
mode = {{ $c.ack.mode | toJson }}
{{- range $k := list "queue_capacity" "publish_timeout" "retry_after" "queue_max_bytes" }}
{{- include "hookbus.tomlOpt" (list $k (index $c.ack $k)) }}
{{- end }}

[spool]
dir = {{ $c.spool.dir | toJson }}
max_bytes = {{ $c.spool.max_bytes | int64 }}
{{- include "hookbus.tomlOpt" (list "segment_bytes" $c.spool.segment_bytes) }}
{{- include "hookbus.tomlOpt" (list "dead_letter_max_bytes" $c.spool.dead_letter_max_bytes) }}
{{- include "hookbus.tomlOpt" (list "recovery_stall_timeout" $c.spool.recovery_stall_timeout) }}

[dedup]
window = {{ $c.dedup.window | toString | toJson }}
max_entries = {{ $c.dedup.max_entries | int64 }}
{{- include "hookbus.tomlOpt" (list "shared" $c.dedup.shared) }}
{{- include "hookbus.tomlOpt" (list "shared_timeout" $c.dedup.shared_timeout) }}

[routing]
template = {{ $c.routing.template | toJson }}
dead_letter = {{ $c.routing.dead_letter | toJson }}
{{- include "hookbus.tomlOpt" (list "overflow" $c.routing.overflow) }}
{{- include "hookbus.tomlOpt" (list "cloudevents" $c.routing.cloudevents) }}
{{- include "hookbus.tomlOpt" (list "dead_letter_budget_bytes" $c.routing.dead_letter_budget_bytes) }}
{{- include "hookbus.tomlOpt" (list "dead_letter_budget_window" $c.routing.dead_letter_budget_window) }}
{{- with $c.routing.rules }}
rules = [
{{- range . }}
  { channel = {{ .channel | toJson }}, template = {{ .template | toJson }} },
{{- end }}
]
{{- end }}

[sink]
kind = {{ $c.sink.kind | toJson }}
{{- range $k := list "max_in_flight" "timeout" "max_backoff" }}
{{- include "hookbus.tomlOpt" (list $k (index $c.sink $k)) }}
{{- end }}

[nats]
url = {{ $nats.url | toJson }}
jetstream = {{ $nats.jetstream | toJson }}
stream = {{ $nats.stream | toJson }}
{{- range $k := list "connect_timeout" "token" "nkey_seed_file" "credentials_file" "tls_ca_file" "tls_cert_file" "tls_key_file" "require_tls" "max_age" "max_bytes" "storage" "replicas" "duplicate_window" "dead_letter_stream" "dead_letter_max_bytes" "dead_letter_max_age" }}
{{- include "hookbus.tomlOpt" (list $k (index $nats $k)) }}
{{- end }}

[shutdown]
grace = {{ $c.shutdown.grace | toString | toJson }}

[kafka]
brokers = {{ $c.kafka.brokers | toJson }}
create_topics = {{ $c.kafka.create_topics | toJson }}
partitions = {{ $c.kafka.partitions | int64 }}
replication_factor = {{ $c.kafka.replication_factor | int64 }}
{{- include "hookbus.tomlOpt" (list "max_topics" $c.kafka.max_topics) }}

[kafka.properties]
{{- range $key, $value := $c.kafka.properties }}
{{- if kindIs "float64" $value }}{{ $value = $value | int64 }}{{ end }}
{{ $key | toJson }} = {{ $value | toString | toJson }}
{{- end }}
{{ end }}

{{/*
[roster] and [roster.here_now] (docs/roster.md), only with roster.enabled: listen from
roster.containerPort, the other keys from config.roster as given (null: not rendered, hookbus's
default applies). here_now.secret_key is never rendered: the roster container gets it as env
HOOKBUS_PUBNUB_SECRET_KEY from a Secret (roster.pubnubSecretKey).
*/}}
{{- define "hookbus.rosterToml" -}}
{{- if .Values.roster.enabled }}
{{- $r := .Values.config.roster | default dict }}
{{- $h := $r.here_now | default dict }}
[roster]
listen = {{ printf "0.0.0.0:%d" (.Values.roster.containerPort | int) | toJson }}
{{- range $k := list "store" "bucket" "consumer" "sub_key" "tombstone_ttl" "template" "sessions" "batch" }}
{{- include "hookbus.tomlOpt" (list $k (index $r $k)) }}
{{- end }}

[roster.here_now]
{{- range $k := list "origin" "subscribe_key" "publish_key" "interval" "max_requests_per_second" "timeout" }}
{{- include "hookbus.tomlOpt" (list $k (index $h $k)) }}
{{- end }}
{{ end }}
{{- end }}

{{/* A threshold as PromQL number text: integers without a fraction or exponent. */}}
{{- define "hookbus.promNumber" -}}
{{- if kindIs "string" . }}{{ . }}
{{- else if eq (float64 .) (floor (float64 .)) }}{{ printf "%d" (int64 .) }}
{{- else }}{{ printf "%v" (float64 .) }}
{{- end }}
{{- end }}

{{/*
The alert rule groups, as a YAML list: files/prometheus/rules.yaml with ${threshold},
${selector}, ${roster_selector}, ${dedup_window_seconds} (config.dedup.window), severity (or
severityByAckMode for config.ack.mode), for, extra labels and runbook_url from
metrics.prometheusRule (the group hookbus.roster links to docs/roster.md: rosterRunbookBase).
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
{{- $rosterSelector := $pr.rosterTargetSelector | default (printf "job=%q" (include "hookbus.rosterAppName" .)) }}
{{- $rosterBase := $pr.rosterRunbookBase | default (regexReplaceAll "[^/]*$" $base "roster.md") }}
{{- $dedupWindow := include "hookbus.durationSeconds" .Values.config.dedup.window }}
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
{{- $expr := $r.expr | replace "${selector}" $selector | replace "${roster_selector}" $rosterSelector | replace "${dedup_window_seconds}" $dedupWindow }}
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
{{- $severity := $s.severity | default "warning" }}
{{- with $s.severityByAckMode }}{{ with index . (toString $.Values.config.ack.mode) }}{{ $severity = . }}{{ end }}{{ end }}
{{- $labels := dict "severity" $severity }}
{{- range $k, $v := $s.labels | default dict }}
{{- if ne $k "severity" }}{{ $_ := set $labels $k (toString $v) }}{{ end }}
{{- end }}
{{- $annotations := dict }}
{{- range $k, $v := $r.annotations }}
{{- $_ := set $annotations $k ($v | replace "${threshold}" $th | replace "${selector}" $selector | replace "${roster_selector}" $rosterSelector | replace "${dedup_window_seconds}" $dedupWindow) }}
{{- end }}
{{- $_ := set $annotations "runbook_url" (printf "%s#%s" (ternary $rosterBase $base (eq (toString $g.name) "hookbus.roster")) (lower $name)) }}
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

{{/*
The presence roster (roster.enabled, docs/roster.md): its own Deployment, Service,
ServiceMonitor and PDB. Its pods carry app.kubernetes.io/name <name>-roster, so no selector of
the bridge (Services, PDB, HPA, NetworkPolicy, anti-affinity) ever matches them, and the
ServiceMonitor (jobLabel app.kubernetes.io/name) gives its targets job="<name>-roster".
*/}}
{{- define "hookbus.rosterAppName" -}}
{{- printf "%s-roster" (include "hookbus.name" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/* Name of the roster's Deployment, Service, ServiceMonitor, PDB and Secret: <fullname>-roster within 63 characters. */}}
{{- define "hookbus.rosterFullname" -}}
{{- printf "%s-roster" (include "hookbus.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/* Labels that select the roster's pods; never change them between releases. */}}
{{- define "hookbus.rosterSelectorLabels" -}}
app.kubernetes.io/name: {{ include "hookbus.rosterAppName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every roster object. */}}
{{- define "hookbus.rosterLabels" -}}
helm.sh/chart: {{ include "hookbus.chart" . }}
{{ include "hookbus.rosterSelectorLabels" . }}
app.kubernetes.io/component: roster
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hookbus
{{- end }}

{{/*
Where the roster container's HOOKBUS_PUBNUB_SECRET_KEY (the PubNub secret key that signs Here
Now reads) comes from, as an EnvVar list: roster.pubnubSecretKey.value (stored in the Secret
<fullname>-roster) or .existingSecret/.key; "" when neither is set (then a key of
secret.existingSecret or secret.env of that name still reaches it through envFrom).
*/}}
{{- define "hookbus.rosterSecretKeyEnv" -}}
{{- $k := .Values.roster.pubnubSecretKey | default dict }}
{{- if $k.value }}
- name: HOOKBUS_PUBNUB_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "hookbus.rosterFullname" . }}
      key: HOOKBUS_PUBNUB_SECRET_KEY
{{- else if $k.existingSecret }}
- name: HOOKBUS_PUBNUB_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $k.existingSecret }}
      key: {{ $k.key | default "HOOKBUS_PUBNUB_SECRET_KEY" }}
{{- end }}
{{- end }}

{{/*
The roster's guard rails: a store it can use with the configured sink, Here Now with the
sub_key it needs, one source of the PubNub secret key.
*/}}
{{- define "hookbus.rosterGuardRails" -}}
{{- $r := .Values.config.roster | default dict }}
{{- $h := $r.here_now | default dict }}
{{- $sink := toString .Values.config.sink.kind }}
{{- $store := toString ($r.store | default "nats") }}
{{- if not (has $sink (list "nats" "kafka")) }}
{{- fail (printf "roster.enabled with config.sink.kind %s: the roster consumes the events the bridge publishes to NATS JetStream or Kafka" $sink) }}
{{- end }}
{{- if and (eq $sink "nats") (not .Values.config.nats.jetstream) }}
{{- fail "roster.enabled needs config.nats.jetstream true: the roster reads the bridge's JetStream stream through a durable consumer" }}
{{- end }}
{{- if and (eq $store "nats") (ne $sink "nats") }}
{{- fail (printf "config.roster.store nats (a JetStream key-value bucket) needs config.sink.kind nats, not %s: use a Redis store (config.roster.store redis://...) with Kafka" $sink) }}
{{- end }}
{{- if and $h.origin (not $r.sub_key) }}
{{- fail "config.roster.here_now.origin is set but config.roster.sub_key is empty: Here Now reads one keyset, so the roster must keep one sub_key's roster (set config.roster.sub_key, and here_now.subscribe_key)" }}
{{- end }}
{{- if and $h.origin (not $h.subscribe_key) }}
{{- fail "config.roster.here_now.origin is set but config.roster.here_now.subscribe_key is empty: Here Now reads need the keyset's subscribe key" }}
{{- end }}
{{- $k := .Values.roster.pubnubSecretKey | default dict }}
{{- if and $h.origin (or $k.value $k.existingSecret) (not $h.publish_key) }}
{{- fail "roster.pubnubSecretKey is set but config.roster.here_now.publish_key is empty: signed Here Now reads need the publish key too" }}
{{- end }}
{{- $port := int .Values.roster.containerPort }}
{{- if has $port (list (int .Values.containerPorts.http) (int .Values.containerPorts.admin)) }}
{{- fail (printf "roster.containerPort %d is also containerPorts.http or .admin: hookbus --check refuses a [roster] listen on the port of [http] or [admin] (they share config.toml)" $port) }}
{{- end }}
{{- if and $k.value $k.existingSecret }}
{{- fail "roster.pubnubSecretKey.value and roster.pubnubSecretKey.existingSecret are both set: name one source of HOOKBUS_PUBNUB_SECRET_KEY" }}
{{- end }}
{{- end }}

{{/* Name of the admin Service: <fullname>-admin within the 63 characters of a DNS label. */}}
{{- define "hookbus.adminServiceName" -}}
{{- printf "%s-admin" (include "hookbus.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* Name of the StatefulSet's governing Service, within 63 characters. */}}
{{- define "hookbus.headlessServiceName" -}}
{{- printf "%s-headless" (include "hookbus.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/* Bytes of a Kubernetes quantity: 2Gi, 1.5Gi, 500M, 64Mi, 1073741824. */}}
{{- define "hookbus.quantityBytes" -}}
{{- $q := toString . | trim }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$" $q) }}
{{- fail (printf "%q is not a Kubernetes quantity such as 2Gi, 1.5Gi or 500M" $q) }}
{{- end }}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q }}
{{- $unit := trimPrefix $num $q }}
{{- $mult := dict "" 1.0 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 }}
{{- mulf (float64 $num) (index $mult $unit) | floor | int64 }}
{{- end }}

{{/* Bytes the spool volume must hold: spool.max_bytes + one segment + the dead-letter budget. */}}
{{- define "hookbus.spoolBudgetBytes" -}}
{{- $s := .Values.config.spool }}
{{- $segment := 67108864 }}
{{- if not (kindIs "invalid" $s.segment_bytes) }}{{ $segment = $s.segment_bytes }}{{ end }}
{{- $deadLetters := 104857600 }}
{{- if not (kindIs "invalid" $s.dead_letter_max_bytes) }}{{ $deadLetters = $s.dead_letter_max_bytes }}{{ end }}
{{- add (int64 $s.max_bytes) (int64 $segment) (int64 $deadLetters) }}
{{- end }}

{{/*
Guard rails that refuse to render: the spool must fit its volume (an emptyDir past its
sizeLimit gets the pod evicted and the directory deleted with acknowledged events in it; a
full PVC answers ENOSPC), a tmpfs spool must fit the memory limit, names must fit; in ack
mode spool an emptyDir only with one replica and no HPA, unless spoolVolume.acknowledgeEventLoss.
*/}}
{{- define "hookbus.guardRails" -}}
{{- $need := include "hookbus.spoolBudgetBytes" . | int64 }}
{{- $s := .Values.config.spool }}
{{- $what := printf "config.spool.max_bytes (%d) + one segment (config.spool.segment_bytes, default 64 MiB) + the dead-letter budget (config.spool.dead_letter_max_bytes, default 100 MiB) = %d bytes (%d MiB)" (int64 $s.max_bytes) $need (div (add $need 1048575) 1048576) }}
{{- if .Values.persistence.enabled }}
{{- $have := include "hookbus.quantityBytes" .Values.persistence.size | int64 }}
{{- if gt $need $have }}
{{- fail (printf "%s do not fit persistence.size %s (%d bytes): the spool would hit ENOSPC and answer 503. Raise persistence.size (a new claim: it cannot grow on upgrade) or lower config.spool.max_bytes." $what (toString .Values.persistence.size) $have) }}
{{- end }}
{{- if gt (len (include "hookbus.fullname" .)) 52 }}
{{- fail (printf "the StatefulSet name %q is longer than 52 characters: its pods' controller-revision-hash label would exceed 63. Set fullnameOverride or a shorter release name." (include "hookbus.fullname" .)) }}
{{- end }}
{{- else if .Values.spoolVolume.sizeLimit }}
{{- $have := include "hookbus.quantityBytes" .Values.spoolVolume.sizeLimit | int64 }}
{{- if gt $need $have }}
{{- fail (printf "%s do not fit spoolVolume.sizeLimit %s (%d bytes): the kubelet evicts a pod whose emptyDir grows past its sizeLimit and deletes the directory with the acknowledged events in it. Raise spoolVolume.sizeLimit or lower config.spool.max_bytes." $what (toString .Values.spoolVolume.sizeLimit) $have) }}
{{- end }}
{{- end }}
{{- if and (not .Values.persistence.enabled) (eq (toString .Values.spoolVolume.medium) "Memory") }}
{{- $limit := ((.Values.resources | default dict).limits | default dict).memory }}
{{- if $limit }}
{{- $mem := include "hookbus.quantityBytes" $limit | int64 }}
{{- if ge $need $mem }}
{{- fail (printf "spoolVolume.medium Memory: the spool (%s) counts against resources.limits.memory %s and would get hookbus OOM-killed. Raise the memory limit or lower config.spool.max_bytes." $what (toString $limit)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (eq (toString .Values.config.ack.mode) "spool") (not .Values.persistence.enabled) (not .Values.spoolVolume.acknowledgeEventLoss) }}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "ack mode spool with an emptyDir spool (persistence.enabled false) and %s: a pod removed by scale-in or eviction, or lost with its node, while the broker is away deletes acknowledged, unpublished events with its emptyDir. Set persistence.enabled=true (a StatefulSet whose retained claims keep them: docs/runbooks.md#scale-in-with-unpublished-events), or set spoolVolume.acknowledgeEventLoss=true to accept that loss." (ternary "the HPA (autoscaling.enabled)" (printf "replicaCount %d" (int .Values.replicaCount)) .Values.autoscaling.enabled)) }}
{{- end }}
{{- end }}
{{- if and .Values.secret.existingSecret (or .Values.secret.authToken .Values.secret.natsUser .Values.secret.natsPassword .Values.secret.natsToken .Values.secret.env) }}
{{- fail "secret.existingSecret is set together with secret.authToken/natsUser/natsPassword/natsToken/env: put those keys in the existing Secret (they would be ignored)" }}
{{- end }}
{{- if and (hasKey (.Values.secret.env | default dict) "HOOKBUS_AUTH_TOKEN") (not (toString (index .Values.secret.env "HOOKBUS_AUTH_TOKEN") | trim)) }}
{{- fail "secret.env.HOOKBUS_AUTH_TOKEN is blank: hookbus exits 64 on a blank token. Remove it (the chart then generates one) or set a token; for no token at all set config.auth.allow_anonymous: true" }}
{{- end }}
{{- $nats := .Values.config.nats }}
{{- if and $nats.dead_letter_stream (eq (toString $nats.dead_letter_stream) (toString $nats.stream)) }}
{{- fail (printf "config.nats.dead_letter_stream is config.nats.stream (%s): dead letters need a stream of their own, or refused input would push events out of the events' stream" (toString $nats.stream)) }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if and (eq (toString .name) "HOOKBUS_AUTH_TOKEN") (not .valueFrom) (not (toString (.value | default "") | trim)) }}
{{- fail "extraEnv HOOKBUS_AUTH_TOKEN has a blank value: hookbus exits 64 on a blank token. Remove the entry (the chart then generates one), give it a value or valueFrom, or set config.auth.allow_anonymous: true" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Container resources: .Values.resources, plus an ephemeral-storage request sized from the spool when it is an emptyDir on node disk. */}}
{{- define "hookbus.resources" -}}
{{- $res := deepCopy (.Values.resources | default dict) }}
{{- if and (not .Values.persistence.enabled) (ne (toString .Values.spoolVolume.medium) "Memory") .Values.spoolVolume.requestEphemeralStorage }}
{{- $req := $res.requests | default dict }}
{{- if not (hasKey $req "ephemeral-storage") }}
{{- $bytes := add (include "hookbus.spoolBudgetBytes" . | int64) 67108864 }}
{{- $_ := set $req "ephemeral-storage" (printf "%dMi" (div (add $bytes 1048575) 1048576)) }}
{{- end }}
{{- $_ := set $res "requests" $req }}
{{- end }}
{{- if $res }}{{ toYaml $res }}{{ end }}
{{- end }}

{{/* Labels of the `helm test` pod (the NetworkPolicy lets it in). */}}
{{- define "hookbus.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "hookbus.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end }}
