{{/*
Helpers shared by the templates. Component helpers take (dict "root" $ "component" NAME), where NAME is one of
generation, learner, rollout, reward, control, redis (its values are .Values.NAME) or a chart-wide object's role.
*/}}

{{- define "cfpo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's prefix for every object name; the release name alone when it already contains the chart's. */}}
{{- define "cfpo.fullname" -}}
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

{{/* The name of a component's objects (Deployment, Service, ...). */}}
{{- define "cfpo.componentName" -}}
{{- printf "%s-%s" (include "cfpo.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Quoted: a release named 123 must stay a string label. */}}
{{- define "cfpo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cfpo.name" .root | quote }}
app.kubernetes.io/instance: {{ .root.Release.Name | quote }}
app.kubernetes.io/component: {{ .component | quote }}
{{- end }}

{{- define "cfpo.labels" -}}
{{ include "cfpo.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: cfpo
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The port each component serves on (/metrics included), in one place. */}}
{{- define "cfpo.port" -}}
{{- index (dict "generation" 8000 "reward" 8011 "control" 8080 "learner" 9101 "rollout" 9102 "redis" 6379) . }}
{{- end }}

{{- define "cfpo.url" -}}
{{- printf "http://%s:%s" (include "cfpo.componentName" .) (include "cfpo.port" .component) }}
{{- end }}

{{/* Every generation pod by its own name, comma-separated (the StatefulSet's pods behind its headless Service). */}}
{{- define "cfpo.generationUrls" -}}
{{- $service := include "cfpo.componentName" (dict "root" . "component" "generation") }}
{{- $urls := list }}
{{- range $index := until (int .Values.generation.replicas) }}
{{- $urls = append $urls (printf "http://%s-%d.%s:%s" $service $index $service (include "cfpo.port" "generation")) }}
{{- end }}
{{- join "," $urls }}
{{- end }}

{{/* Where models and runs live, the same path in every pod: weight files are handed over by path. */}}
{{- define "cfpo.dataPath" -}}/data{{- end }}

{{- define "cfpo.modelPath" -}}
{{- .Values.model.path | default (printf "%s/models/smollm2-135m-instruct" (include "cfpo.dataPath" .)) }}
{{- end }}

{{- define "cfpo.dataClaimName" -}}
{{- .Values.persistence.existingClaim | default (include "cfpo.componentName" (dict "root" . "component" "data")) }}
{{- end }}

{{- define "cfpo.apiTokenSecretName" -}}
{{- .Values.control.apiToken.existingSecret | default (include "cfpo.componentName" (dict "root" . "component" "api-token")) }}
{{- end }}

{{- define "cfpo.apiTokenSecretKey" -}}
{{- if .Values.control.apiToken.existingSecret }}{{ .Values.control.apiToken.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* image and imagePullPolicy: the component's image values over the chart-wide ones. */}}
{{- define "cfpo.image" -}}
{{- $image := merge (deepCopy ((index .root.Values .component).image | default dict)) .root.Values.image -}}
image: {{ printf "%s:%s" $image.repository ($image.tag | default .root.Chart.AppVersion) | quote }}
imagePullPolicy: {{ $image.pullPolicy }}
{{- end }}

{{/* Pod-level settings every component shares: no API credentials (no pod talks to Kubernetes), pull secrets,
the security context, and the component's placement. With persistence.node, the pods that mount the data volume
(generation, learner, rollout, control) go to that node, where a ReadWriteOnce volume serves them all. */}}
{{- define "cfpo.podSpec" -}}
{{- $values := index .root.Values .component -}}
{{- $nodeSelector := deepCopy ($values.nodeSelector | default dict) }}
{{- if and .root.Values.persistence.node (has .component (list "generation" "learner" "rollout" "control")) }}
{{- $_ := set $nodeSelector "kubernetes.io/hostname" .root.Values.persistence.node }}
{{- end }}
automountServiceAccountToken: false
{{- with $values.terminationGracePeriodSeconds }}
terminationGracePeriodSeconds: {{ . }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml ($values.podSecurityContext | default .root.Values.podSecurityContext) | nindent 2 }}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The pod template's metadata: labels, and Prometheus' scrape annotations unless ServiceMonitors scrape
instead. */}}
{{- define "cfpo.podMetadata" -}}
labels:
  {{- include "cfpo.labels" . | nindent 2 }}
{{- if not .root.Values.serviceMonitor.enabled }}
annotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ include "cfpo.port" .component | quote }}
  prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* A container's resources plus the component's GPUs: nvidia.com/gpu as request and limit (extended resources
need both equal). */}}
{{- define "cfpo.resources" -}}
{{- $values := index .root.Values .component }}
{{- $resources := deepCopy ($values.resources | default dict) }}
{{- with $values.gpus }}
{{- $_ := set $resources "requests" (merge (dict "nvidia.com/gpu" .) ($resources.requests | default dict)) }}
{{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" .) ($resources.limits | default dict)) }}
{{- end -}}
{{- with $values.memoryPerRankGiB }}
{{- /* Each rank loads the model on CPU first, and the memory-backed /dev/shm counts against the limit too. */}}
{{- $shm := $values.shmSize | default "0Gi" }}
{{- if not (hasSuffix "Gi" $shm) }}
{{- fail (printf "%s.shmSize: %s; with memoryPerRankGiB give it in Gi (e.g. 16Gi)" $.component $shm) }}
{{- end }}
{{- $memory := printf "%dGi" (add (mul (max 1 (int $values.gpus)) (int .)) (int (trimSuffix "Gi" $shm))) }}
{{- $_ := set $resources "requests" (merge (dict "memory" $memory) (omit ($resources.requests | default dict) "memory")) }}
{{- $_ := set $resources "limits" (merge (dict "memory" $memory) (omit ($resources.limits | default dict) "memory")) }}
{{- end -}}
resources:
  {{- toYaml $resources | nindent 2 }}
{{- end }}

{{/* Startup, readiness and liveness probes on one HTTP path of the named container port. The startup probe gives
the process .startupSeconds to answer; after that, a minute without an answer restarts it. */}}
{{- define "cfpo.httpProbes" -}}
startupProbe:
  httpGet: {path: {{ .path }}, port: {{ .port }}}
  periodSeconds: 5
  failureThreshold: {{ div .startupSeconds 5 }}
readinessProbe:
  httpGet: {path: {{ .path }}, port: {{ .port }}}
  periodSeconds: 10
  timeoutSeconds: 5
livenessProbe:
  httpGet: {path: {{ .path }}, port: {{ .port }}}
  periodSeconds: 20
  timeoutSeconds: 10
  failureThreshold: 3
{{- end }}

{{/* REDIS_URL: the chart's Redis, or the external one (from its Secret or its URL). */}}
{{- define "cfpo.env.redis" -}}
- name: REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ printf "redis://%s:%s/0" (include "cfpo.componentName" (dict "root" . "component" "redis")) (include "cfpo.port" "redis") | quote }}
{{- else if .Values.externalRedis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.existingSecretKey }}
{{- else }}
  value: {{ required "redis.enabled is false: set externalRedis.url or externalRedis.existingSecret" .Values.externalRedis.url | quote }}
{{- end }}
{{- end }}

{{/* The environment of the pipeline's workers: Redis, generation, and the reward service (the rollout workers
score samples there, the learner its held-out evaluations). */}}
{{- define "cfpo.env.worker" -}}
{{ include "cfpo.env.redis" . }}
- name: CFPO_GENERATION_URL
  value: {{ include "cfpo.generationUrls" . | quote }}
- name: CFPO_WEIGHT_TRANSFER
  value: {{ .Values.weightTransfer | quote }}
- name: CFPO_REWARD_URL
  value: {{ include "cfpo.url" (dict "root" . "component" "reward") | quote }}
{{- end }}

{{/* The data volume and, for components with a shmSize (generation, learner), a memory-backed /dev/shm larger
than the runtime's 64 MiB default: NCCL and vLLM exchange tensors through it. */}}
{{- define "cfpo.volumes" -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "cfpo.dataClaimName" .root }}
{{- with (index .root.Values .component).shmSize }}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ . }}
{{- end }}
{{- end }}

{{/* A Service in front of a component's named container port: (dict "root" "component" "portName", optional
"type" and "port"). */}}
{{- define "cfpo.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "cfpo.componentName" . }}
  labels:
    {{- include "cfpo.labels" . | nindent 4 }}
spec:
  type: {{ .type | default "ClusterIP" }}
  {{- if .headless }}
  clusterIP: None
  {{- end }}
  selector:
    {{- include "cfpo.selectorLabels" . | nindent 4 }}
  ports:
    - name: {{ .portName }}
      port: {{ .port | default (include "cfpo.port" .component) }}
      targetPort: {{ .portName }}
{{- end }}

{{/* NetworkPolicy peers: the pipeline's own clients of generation and Redis. */}}
{{- define "cfpo.pipelinePeers" -}}
{{- $peers := list }}
{{- range list "learner" "rollout" "control" }}
{{- $selector := include "cfpo.selectorLabels" (dict "root" $.root "component" .) | fromYaml }}
{{- $peers = append $peers (dict "podSelector" (dict "matchLabels" $selector)) }}
{{- end }}
{{- toYaml $peers }}
{{- end }}
