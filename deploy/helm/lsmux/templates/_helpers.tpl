{{/* Names and labels, as `helm create` lays them out. */}}
{{- define "lsmux.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lsmux.fullname" -}}
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

{{- define "lsmux.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lsmux.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lsmux.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lsmux.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "lsmux.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
lsmux.bytes: a Kubernetes memory quantity (768Mi, 1Gi, 800M, 1073741824)
in bytes. Fractions (1.5Gi) and exponents are refused with a message
rather than guessed.
*/}}
{{- define "lsmux.bytes" -}}
{{- $q := . -}}
{{- if kindIs "float64" $q }}{{ $q = int64 $q | toString }}{{ else }}{{ $q = toString $q }}{{ end -}}
{{- if not (regexMatch "^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$" $q) -}}
{{- fail (printf "resources.limits.memory=%s: goMemLimit=auto reads whole numbers with Ki, Mi, Gi, Ti, k, M, G or T; write it so (1536Mi, not 1.5Gi) or set goMemLimit" $q) -}}
{{- end -}}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- $unit := regexFind "[A-Za-z]+$" $q -}}
{{- mul (trimSuffix $unit $q | int64) (get $units $unit) -}}
{{- end }}

{{/*
lsmux.goMemLimit: GOMEMLIMIT's value, "" for none. auto is 90 % of the
memory limit, lsmux's own ratio (memoryRatio in memlimit.go) when it reads
the cgroup itself, so the two never disagree.
*/}}
{{- define "lsmux.goMemLimit" -}}
{{- $v := toString .Values.goMemLimit -}}
{{- if eq $v "auto" -}}
{{- with (.Values.resources.limits | default dict).memory -}}
{{- div (mul (include "lsmux.bytes" . | int64) 90) 100 -}}
{{- end -}}
{{- else -}}
{{- $v -}}
{{- end -}}
{{- end }}

{{/*
lsmux.size: an lsmux size setting (256MiB, 1GiB, 512Mi, 800MB; case does
not matter, as in lsmux) in bytes.
*/}}
{{- define "lsmux.size" -}}
{{- $s := lower (toString .) -}}
{{- if not (regexMatch "^[0-9]+(k|m|g|t)?(i)?b?$" $s) -}}
{{- fail (printf "%s: want a size such as 256MiB" .) -}}
{{- end -}}
{{- $unit := regexFind "[a-z]+$" $s -}}
{{- $n := trimSuffix $unit $s | int64 -}}
{{- $base := ternary 1024 1000 (contains "i" $unit) -}}
{{- $exp := index (dict "" 0 "b" 0 "k" 1 "m" 2 "g" 3 "t" 4) (trimSuffix "b" (trimSuffix "ib" $unit) | default "") -}}
{{- range until $exp }}{{ $n = mul $n $base }}{{ end -}}
{{- $n -}}
{{- end }}

{{/*
lsmux.checkMemory: the ring and write batches must fit under GOMEMLIMIT
(docs/operations.md#memory-sizing): 1.25 × (ring + batches + 1,000
subscribers × 40 KB) + the embedded JetStream's 64 MiB cache (single mode)
+ 30 MiB for the runtime.
*/}}
{{- define "lsmux.checkMemory" -}}
{{- $limit := include "lsmux.goMemLimit" . -}}
{{- if regexMatch "^[0-9]+$" $limit -}}
{{- $ring := include "lsmux.size" .Values.buffer.bytes | int64 -}}
{{- $batch := include "lsmux.size" .Values.buffer.batchMemory | int64 -}}
{{- $need := add (div (mul (add $ring $batch 40960000) 5) 4) (ternary 67108864 0 (eq .Values.mode "single")) 31457280 -}}
{{- if gt $need ($limit | int64) -}}
{{- fail (printf "buffer.bytes=%s needs about %d MiB (docs/operations.md#memory-sizing), more than GOMEMLIMIT (%d MiB, 90 %% of resources.limits.memory): raise the limit or shrink the ring" (toString .Values.buffer.bytes) (div $need 1048576) (div ($limit | int64) 1048576)) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* lsmux.loopback: true when lsmux listens on loopback only. */}}
{{- define "lsmux.loopback" -}}
{{- if or (hasPrefix "127." .Values.listen) (hasPrefix "localhost:" .Values.listen) (hasPrefix "[::1]:" .Values.listen) }}true{{ end -}}
{{- end }}

{{/*
lsmux.execProbes: the kubelet cannot ask lsmux over HTTP (it listens on
the pod's loopback, or wants a token for /healthz and /readyz), so the
probes run `lsmux healthcheck` in the container, which reads the same
LSMUX_LISTEN and token file as the server.
*/}}
{{- define "lsmux.execProbes" -}}
{{- if or (include "lsmux.loopback" .) .Values.auth.protectHealth }}true{{ end -}}
{{- end }}

{{/* lsmux.check: refuse values that would start a broken lsmux. */}}
{{- define "lsmux.check" -}}
{{- if not (has .Values.mode (list "single" "cluster")) }}
{{- fail (printf "mode=%s: want single or cluster" .Values.mode) }}
{{- end }}
{{- include "lsmux.checkMemory" . }}
{{- $managed := list "LSMUX_STREAM_URL" "LSMUX_LISTEN" "LSMUX_CLIENT_ID" "LSMUX_CLIENT_SECRET_FILE" "LSMUX_AUTH_TOKEN_FILE" "LSMUX_PROTECT_HEALTH" "LSMUX_BUFFER_BYTES" "LSMUX_BUFFER_HITS" "LSMUX_BATCH_MEMORY" "LSMUX_HISTORY_MAX_AGE" "LSMUX_HISTORY_MAX_BYTES" "LSMUX_NATS_CREDS" "LSMUX_NATS_CA" "LSMUX_NATS_CERT" "LSMUX_NATS_KEY" "LSMUX_NATS_REPLICAS" "LSMUX_LEASE_TTL" "LSMUX_REPLICA_NAME" "GOMEMLIMIT" }}
{{- range $k, $v := .Values.env }}
{{- if has $k $managed }}
{{- fail (printf "env.%s: the chart sets it from its own values (see values.yaml)" $k) }}
{{- end }}
{{- if eq $k "LSMUX_DATA_DIR" }}
{{- fail "env.LSMUX_DATA_DIR: the chart sets the data dir (mode single with persistence); in cluster mode lsmux refuses it next to LSMUX_NATS_URL" }}
{{- end }}
{{- if has $k (list "LSMUX_CLIENT_SECRET" "LSMUX_AUTH_TOKEN" "LSMUX_ACCESS_TOKEN" "LSMUX_NATS_URL") }}
{{- fail (printf "env.%s: a secret in values ends up in the release history; use the chart's existingSecret settings" $k) }}
{{- end }}
{{- end }}
{{- if and (eq .Values.mode "cluster") (include "lsmux.loopback" .) }}
{{- fail "mode=cluster with listen on loopback: the replicas serve subscribers through the Service; listen on :8080" }}
{{- end }}
{{- if and (eq .Values.mode "cluster") (not .Values.nats.existingSecret) }}
{{- fail "mode=cluster needs nats.existingSecret (a Secret with the NATS URL)" }}
{{- end }}
{{- if not .Values.credentials.existingSecret }}
{{- fail "credentials.existingSecret: name the Secret with the OAuth client id and secret" }}
{{- end }}
{{- end }}
