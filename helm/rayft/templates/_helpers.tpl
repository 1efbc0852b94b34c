{{/*
Names, labels, the image, and the checks that values.schema.json cannot express (they span several keys).
*/}}

{{/* The name of every object: the release name. KubeRay appends 6 characters to a RayJob's or RayService's
name for its RayCluster and caps that at 53, and wants a DNS-1035 label (a letter first). */}}
{{- define "rayft.name" -}}
{{- $name := .Release.Name -}}
{{- if gt (len $name) 47 -}}
{{- fail (printf "release name %q: KubeRay allows at most 47 characters, got %d" $name (len $name)) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) -}}
{{- fail (printf "release name %q: KubeRay needs lowercase letters, digits and '-', starting with a letter" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{- define "rayft.labels" -}}
app.kubernetes.io/name: rayft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .Values.kind }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* true when a worker group asks for GPUs: the CUDA image then, else the CPU image. */}}
{{- define "rayft.hasGpu" -}}
{{- $gpu := false -}}
{{- range .Values.workers }}{{ if eq .type "gpu" }}{{ $gpu = true }}{{ end }}{{ end -}}
{{- $gpu -}}
{{- end -}}

{{- define "rayft.image" -}}
{{- $variant := ternary "cuda" "cpu" (eq (include "rayft.hasGpu" .) "true") -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default (printf "%s-%s" .Chart.AppVersion $variant)) -}}
{{- end -}}

{{/* Is the run config mounted? job, tune, and a cluster given one. */}}
{{- define "rayft.hasRunConfig" -}}
{{- or (has .Values.kind (list "job" "tune")) (and (eq .Values.kind "cluster") (not (empty (.Values.run).config))) -}}
{{- end -}}

{{/* A config given as text (run.config, serve.config), parsed; a YAML error names the key. */}}
{{- define "rayft.parse" -}}
{{- $parsed := fromYaml .text -}}
{{- if hasKey $parsed "Error" -}}
{{- fail (printf "%s: not valid YAML: %s" .key $parsed.Error) -}}
{{- end -}}
{{- toJson $parsed -}}
{{- end -}}

{{/* The serving config's auth section, with rayft_core.serve_config's defaults. */}}
{{- define "rayft.serveAuth" -}}
{{- $cfg := include "rayft.parse" (dict "text" .Values.serve.config "key" "serve.config") | fromJson -}}
{{- $auth := $cfg.auth | default dict -}}
{{- $required := true -}}
{{- if hasKey $auth "required" }}{{ $required = $auth.required }}{{ end -}}
{{- dict "env" ($auth.api_key_env | default "RAYFT_API_KEY") "file" ($auth.api_key_file | default "") "required" $required | toJson -}}
{{- end -}}

{{/* Checks across keys; each message names the key to change. */}}
{{- define "rayft.check" -}}
{{- $names := list -}}
{{- range $i, $g := .Values.workers -}}
{{- if gt (int $g.minReplicas) (int $g.maxReplicas) -}}
{{- fail (printf "workers[%d].minReplicas (%d) must not exceed maxReplicas (%d)" $i (int $g.minReplicas) (int $g.maxReplicas)) -}}
{{- end -}}
{{- if or (lt (int $g.replicas) (int $g.minReplicas)) (gt (int $g.replicas) (int $g.maxReplicas)) -}}
{{- fail (printf "workers[%d].replicas (%d) must lie between minReplicas (%d) and maxReplicas (%d)" $i (int $g.replicas) (int $g.minReplicas) (int $g.maxReplicas)) -}}
{{- end -}}
{{- if has $g.name $names -}}
{{- fail (printf "workers[%d].name: %q names another group too; group names must be unique" $i $g.name) -}}
{{- end -}}
{{- $names = append $names $g.name -}}
{{- end -}}
{{- if has .Values.kind (list "job" "tune") -}}
{{- $run := include "rayft.parse" (dict "text" .Values.run.config "key" "run.config") | fromJson -}}
{{- if not (and (hasKey $run "model") (hasKey $run "data")) -}}
{{- fail "run.config: a run config needs model: and data: sections" -}}
{{- end -}}
{{- if and (eq .Values.kind "job") (hasKey $run "tune") -}}
{{- fail "run.config: has a tune: section (a sweep); use kind: tune, or remove the section to train once" -}}
{{- end -}}
{{- if and (eq .Values.kind "tune") (not (hasKey $run "tune")) -}}
{{- fail "run.config: kind tune needs a tune: section (the sweep)" -}}
{{- end -}}
{{- range $i, $r := .Values.job.deletion.rules -}}
{{- if and (eq $.Values.job.deletion.mode "rules") $.Values.autoscaling.enabled (eq $r.policy "DeleteWorkers") -}}
{{- fail (printf "job.deletion.rules[%d].policy: KubeRay refuses DeleteWorkers with autoscaling.enabled; use DeleteCluster" $i) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.kind "service" -}}
{{- $cfg := include "rayft.parse" (dict "text" .Values.serve.config "key" "serve.config") | fromJson -}}
{{- if not $cfg.models -}}
{{- fail "serve.config: a serving config needs models: (at least one)" -}}
{{- end -}}
{{- $auth := include "rayft.serveAuth" . | fromJson -}}
{{- if and $auth.required (not .Values.secrets.apiKey.name) -}}
{{- fail "secrets.apiKey.name: the serving config requires an API key (auth.required); name the Secret that holds it" -}}
{{- end -}}
{{- end -}}
{{- end -}}
