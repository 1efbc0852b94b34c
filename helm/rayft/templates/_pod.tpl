{{/*
The pods: what the head, every worker group and the job submitter share.
Called with (dict "root" $ "role" "head"|"worker"|"submitter" "group" <head values | worker group>).
*/}}

{{/* Environment of every Ray container. Secrets are referenced by name; nothing secret is inlined. */}}
{{- define "rayft.env" -}}
{{- $v := .Values -}}
# Token authentication stays on: Ray's processes and clients send and check this token.
- name: RAY_AUTH_MODE
  value: token
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ $v.rayAuth.secretName }}, key: auth_token}
{{- with ($v.storage).endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with $v.secrets.hfToken.name }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: {{ $v.secrets.hfToken.key }}}
{{- end }}
{{- if eq $v.kind "service" }}
{{- $auth := include "rayft.serveAuth" . | fromJson }}
{{- if and $v.secrets.apiKey.name (not $auth.file) }}
# rayft.serve:build_app reads the key where the app is built (the head); workers get it too, so any pod can build it.
- name: {{ $auth.env }}
  valueFrom:
    secretKeyRef: {name: {{ $v.secrets.apiKey.name }}, key: {{ $v.secrets.apiKey.key }}}
{{- end }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Every pod runs as a non-root user (securityContext in the values; the image's user is "ray", uid 1000) under the
runtime's default seccomp profile, and every container without privilege escalation or Linux capabilities: what
Kubernetes' "restricted" Pod Security Standard asks. fsGroup makes mounted volumes readable by that user (the API
key's file is mode 0400, owned by root). An id set to null is left out, for platforms that assign their own (OpenShift). */}}
{{- define "rayft.podSecurityContext" -}}
runAsNonRoot: true
{{- range $key := list "runAsUser" "runAsGroup" "fsGroup" }}
{{- $id := index ($.Values.securityContext | default dict) $key }}
{{- if not (kindIs "invalid" $id) }}
{{ $key }}: {{ int64 $id }}
{{- end }}
{{- end }}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "rayft.containerSecurityContext" -}}
allowPrivilegeEscalation: false
capabilities: {drop: [ALL]}
{{- end -}}

{{- define "rayft.volumeMounts" -}}
- {name: shm, mountPath: /dev/shm}
{{- if eq (include "rayft.hasRunConfig" .) "true" }}
- {name: run-config, mountPath: /config, readOnly: true}
{{- end }}
{{- if eq .Values.kind "service" }}
{{- $auth := include "rayft.serveAuth" . | fromJson }}
{{- if and .Values.secrets.apiKey.name $auth.file }}
# Only the key's file (subPath), so that the folder keeps whatever else the image has there.
- {name: api-key, mountPath: {{ $auth.file }}, subPath: {{ .Values.secrets.apiKey.key }}, readOnly: true}
{{- end }}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "rayft.volumes" -}}
- name: shm
  emptyDir: {medium: Memory, sizeLimit: {{ .Values.shmSize | quote }}}
{{- if eq (include "rayft.hasRunConfig" .) "true" }}
- name: run-config
  configMap: {name: {{ include "rayft.name" . }}-config}
{{- end }}
{{- if eq .Values.kind "service" }}
{{- $auth := include "rayft.serveAuth" . | fromJson }}
{{- if and .Values.secrets.apiKey.name $auth.file }}
- name: api-key
  secret: {secretName: {{ .Values.secrets.apiKey.name }}, defaultMode: 0400}
{{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "rayft.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $g := .group -}}
{{- $isGpu := eq ($g.type | default "cpu") "gpu" -}}
{{- $cpu := $g.cpu | default $v.workerDefaults.cpu -}}
{{- $memory := $g.memory | default $v.workerDefaults.memory -}}
{{- $nodeSelector := merge (dict) ($g.nodeSelector | default dict) (ternary $v.gpu.nodeSelector dict $isGpu) ($v.nodeSelector | default dict) -}}
{{- $tolerations := concat ($v.tolerations | default list) (ternary $v.gpu.tolerations list $isGpu) ($g.tolerations | default list) -}}
metadata:
  labels:
    {{- include "rayft.labels" $root | nindent 4 }}
spec:
  {{- with $v.serviceAccountName }}
  serviceAccountName: {{ . }}
  {{- end }}
  securityContext:
    {{- include "rayft.podSecurityContext" $root | nindent 4 }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with $nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: ray-{{ .role }}
      image: {{ include "rayft.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      securityContext:
        {{- include "rayft.containerSecurityContext" $root | nindent 8 }}
      {{- if eq .role "head" }}
      ports:
        - {name: gcs-server, containerPort: 6379}
        - {name: dashboard, containerPort: 8265}
        - {name: client, containerPort: 10001}
        - {name: serve, containerPort: {{ ($v.serve).port | default 8000 }}}
      {{- else if eq $v.kind "service" }}
      # Serve's proxy runs on every pod; KubeRay checks each one's health at its port named serve.
      ports:
        - {name: serve, containerPort: {{ $v.serve.port }}}
      {{- end }}
      # KubeRay tells Ray the CPUs and GPUs from the limits; requests equal them so the pod is not squeezed.
      resources:
        requests: {cpu: {{ $cpu | quote }}, memory: {{ $memory | quote }}}
        limits:
          cpu: {{ $cpu | quote }}
          memory: {{ $memory | quote }}
          {{- if $isGpu }}
          {{ $v.gpu.resourceName }}: {{ $g.gpu }}
          {{- end }}
      env:
        {{- include "rayft.env" $root | nindent 8 }}
      {{- with ($v.storage).credentialsSecret }}
      envFrom:
        - secretRef: {name: {{ . }}}
      {{- end }}
      volumeMounts:
        {{- include "rayft.volumeMounts" $root | nindent 8 }}
  volumes:
    {{- include "rayft.volumes" $root | nindent 4 }}
{{- end -}}

{{/* The RayCluster spec, shared by RayJob (rayClusterSpec), RayService (rayClusterConfig) and RayCluster (spec). */}}
{{- define "rayft.clusterSpec" -}}
{{- $v := .Values -}}
rayVersion: {{ $v.rayVersion | quote }}
# KubeRay's token authentication: the operator reads this Secret to reach the dashboard (job status, Serve
# deployments). It would also add the env vars below to each container; the pod templates name them anyway.
authOptions:
  mode: token
  secretName: {{ $v.rayAuth.secretName }}
enableInTreeAutoscaling: {{ $v.autoscaling.enabled }}
{{- if $v.autoscaling.enabled }}
autoscalerOptions:
  idleTimeoutSeconds: {{ $v.autoscaling.idleTimeoutSeconds }}
  upscalingMode: {{ $v.autoscaling.upscalingMode }}
  # The autoscaler is a container KubeRay adds to the head pod: the pod's securityContext applies, this is its own.
  securityContext:
    {{- include "rayft.containerSecurityContext" . | nindent 4 }}
  env:
    - {name: RAY_AUTH_MODE, value: token}
    - name: RAY_AUTH_TOKEN
      valueFrom:
        secretKeyRef: {name: {{ $v.rayAuth.secretName }}, key: auth_token}
{{- end }}
headGroupSpec:
  rayStartParams:
    {{- toYaml ($v.head.rayStartParams | default dict) | nindent 4 }}
  template:
    {{- include "rayft.podTemplate" (dict "root" . "role" "head" "group" $v.head) | nindent 4 }}
workerGroupSpecs:
{{- range $v.workers }}
  - groupName: {{ .name }}
    replicas: {{ .replicas }}
    minReplicas: {{ .minReplicas }}
    maxReplicas: {{ .maxReplicas }}
    rayStartParams: {}
    template:
      {{- include "rayft.podTemplate" (dict "root" $ "role" "worker" "group" .) | nindent 6 }}
{{- end }}
{{- end -}}
