{{/* Names and labels. */}}
{{- define "mlgw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlgw.fullname" -}}
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

{{- define "mlgw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlgw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mlgw.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mlgw.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mlgw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mlgw.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mlgw.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The gateway's configuration as a dict (JSON): .Values.config with what the chart owns set, and
every kube grant's empty namespace list made the release's namespace. The ConfigMap and the RBAC
are both made from this, so the Roles always match what the gateway is granted.
*/}}
{{- define "mlgw.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%d" (int .Values.service.port)) -}}
{{- $_ := set $cfg "data_dir" "/var/lib/mlgw" -}}
{{- if .Values.metrics.enabled -}}
{{- $obs := get $cfg "observability" | default dict -}}
{{- $_ := set $obs "metrics_listen" (printf "0.0.0.0:%d" (int .Values.metrics.port)) -}}
{{- $_ := set $cfg "observability" $obs -}}
{{- end -}}
{{- $targets := get $cfg "targets" | default dict -}}
{{- if not $targets -}}
{{- /* Not in values.yaml, where Helm would merge it into every user's own targets. */ -}}
{{- $kube := dict "namespaces" (list) "kinds" (list "batch/v1/Job" "v1/Pod") -}}
{{- $_ := set $targets "training" (dict "plugin" "kubeflow" "settings" (dict "kind" "job" "image" "python:3.12") "grants" (dict "kube" $kube)) -}}
{{- $_ := set $cfg "targets" $targets -}}
{{- end -}}
{{- range $name := keys $targets | sortAlpha -}}
{{- $t := get $targets $name -}}
{{- $kube := dig "grants" "kube" nil $t -}}
{{- if $kube -}}
{{- if not (get $kube "namespaces") -}}
{{- $_ := set $kube "namespaces" (list $.Release.Namespace) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $cfg -}}
{{- end -}}

{{/* A TOML key: bare when it can be, else a quoted (JSON-escaped, which TOML reads) string. */}}
{{- define "mlgw.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/*
A TOML value, inline. Numbers from values files arrive as float64: a whole one is written as an
integer, since the gateway's integer keys refuse `10.0`. Maps are inline tables, nulls dropped.
*/}}
{{- define "mlgw.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (float64 $v) (floor $v) -}}{{- printf "%d" (int64 $v) -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) -}}
{{- $v -}}
{{- else if kindIs "slice" $v -}}
{{- $items := list -}}
{{- range $v -}}{{- $items = append $items (include "mlgw.toml.value" .) -}}{{- end -}}
[{{ join ", " $items }}]
{{- else if kindIs "map" $v -}}
{{- $pairs := list -}}
{{- range $k := keys $v | sortAlpha -}}
{{- $e := get $v $k -}}
{{- if not (kindIs "invalid" $e) -}}
{{- $pairs = append $pairs (printf "%s = %s" (include "mlgw.toml.key" $k) (include "mlgw.toml.value" $e)) -}}
{{- end -}}
{{- end -}}
{{- if $pairs -}}{ {{ join ", " $pairs }} }{{- else -}}{}{{- end -}}
{{- else -}}
{{- fail (printf "config: %v (%s) cannot be written as TOML" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/*
A TOML table: its plain keys, then each sub-table under its own [header]. An empty sub-table
still gets its header, since one means "granted, with the defaults" ([targets.x.grants.process]).
Arguments: dict "path" (list of keys) "table" (map).
*/}}
{{- define "mlgw.toml.table" -}}
{{- $t := .table -}}
{{- $path := .path -}}
{{- $plain := list -}}
{{- $tables := list -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := get $t $k -}}
{{- if kindIs "map" $v -}}{{- $tables = append $tables $k -}}
{{- else if not (kindIs "invalid" $v) -}}{{- $plain = append $plain $k -}}
{{- end -}}
{{- end -}}
{{/* A table holding only sub-tables needs no header of its own ([targets] before [targets.x]). */}}
{{- if and $path (or $plain (not $tables)) -}}
{{- $header := list -}}
{{- range $path -}}{{- $header = append $header (include "mlgw.toml.key" .) -}}{{- end }}
[{{ join "." $header }}]
{{ end -}}
{{- range $plain -}}
{{ include "mlgw.toml.key" . }} = {{ include "mlgw.toml.value" (get $t .) }}
{{ end -}}
{{- range $tables -}}
{{ include "mlgw.toml.table" (dict "path" (append $path .) "table" (get $t .)) }}
{{- end -}}
{{- end -}}

{{/*
The RBAC the kube grants need, as JSON: {"namespaces": {ns: {rule key: rule}}, "cluster": {…}}.
A rule is {apiGroups, resources, verbs} from the rbac.kinds table; a kind missing from the table
fails the render, so nothing is granted by guess.
*/}}
{{- define "mlgw.rbac" -}}
{{- $cfg := include "mlgw.config" . | fromJson -}}
{{- $table := .Values.rbac.kinds | default dict -}}
{{- $namespaces := dict -}}
{{- $cluster := dict -}}
{{- range $name, $t := $cfg.targets -}}
{{- $kube := dig "grants" "kube" nil $t -}}
{{- if $kube -}}
{{- range $scope := list "kinds" "cluster_kinds" -}}
{{- range $kind := get $kube $scope | default list -}}
{{- $entry := get $table $kind -}}
{{- if not $entry -}}
{{- fail (printf "rbac: targets.%s.grants.kube.%s grants %s, which rbac.kinds has no entry for; add {resource: <plural>, verbs: [...]} there (the verbs its plugin uses)" $name $scope $kind) -}}
{{- end -}}
{{- if not (and $entry.resource $entry.verbs) -}}
{{- fail (printf "rbac.kinds.%s: needs resource and verbs" $kind) -}}
{{- end -}}
{{- $apiVersion := regexReplaceAll "/[^/]*$" $kind "" -}}
{{- $group := "" -}}
{{- if contains "/" $apiVersion -}}{{- $group = regexReplaceAll "/[^/]*$" $apiVersion "" -}}{{- end -}}
{{- $rules := list (dict "apiGroups" (list $group) "resources" (list $entry.resource) "verbs" $entry.verbs) -}}
{{- range $sub := keys ($entry.subresources | default dict) | sortAlpha -}}
{{- $rules = append $rules (dict "apiGroups" (list $group) "resources" (list (printf "%s/%s" $entry.resource $sub)) "verbs" (get $entry.subresources $sub)) -}}
{{- end -}}
{{- $targetsOf := list -}}
{{- if eq $scope "kinds" -}}
{{- range $ns := $kube.namespaces -}}
{{- $existing := get $namespaces $ns | default dict -}}
{{- $_ := set $namespaces $ns $existing -}}
{{- $targetsOf = append $targetsOf $existing -}}
{{- end -}}
{{- else -}}
{{- $targetsOf = list $cluster -}}
{{- end -}}
{{- range $into := $targetsOf -}}
{{- range $rule := $rules -}}
{{- $key := printf "%s|%s" (first $rule.apiGroups) (first $rule.resources) -}}
{{- $verbs := concat (dig $key "verbs" (list) $into) $rule.verbs | uniq | sortAlpha -}}
{{- $_ := set $into $key (dict "apiGroups" $rule.apiGroups "resources" $rule.resources "verbs" $verbs) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "namespaces" $namespaces "cluster" $cluster) -}}
{{- end -}}
