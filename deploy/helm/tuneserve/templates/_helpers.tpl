{{- define "tuneserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tuneserve.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tuneserve.labels" -}}
{{ include "tuneserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tuneserve.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion .Values.device) -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "tuneserve.gpuCount" -}}
{{- $p := .Values.parallelism -}}
{{- .Values.gpu.count | default (mul $p.tensor $p.pipeline $p.data) -}}
{{- end -}}

{{- define "tuneserve.modelCacheClaim" -}}
{{- .Values.modelCache.existingClaim | default (printf "%s-model-cache" (include "tuneserve.fullname" .)) -}}
{{- end -}}

{{/* The serve flags: every value that is set becomes its `tuneserve serve` flag. */}}
{{- define "tuneserve.args" -}}
- --host
- 0.0.0.0
- --port
- "8000"
- --model
- {{ .Values.serve.model | quote }}
{{- range .Values.serve.servedModelName }}
- --served-model-name
- {{ . | quote }}
{{- end }}
{{- with .Values.serve.maxModelLen }}
- --max-model-len
- {{ . | quote }}
{{- end }}
{{- with .Values.serve.maxNumSeqs }}
- --max-num-seqs
- {{ . | quote }}
{{- end }}
{{- with .Values.serve.kvCacheGib }}
- --kv-cache-gib
- {{ . | quote }}
{{- end }}
{{- range $flag, $size := dict "--tensor-parallel-size" .Values.parallelism.tensor "--pipeline-parallel-size" .Values.parallelism.pipeline "--data-parallel-size" .Values.parallelism.data }}
{{- if gt (int $size) 1 }}
- {{ $flag }}
- {{ $size | quote }}
{{- end }}
{{- end }}
{{- with .Values.serve.gpuMemoryUtilization }}
- --gpu-memory-utilization
- {{ . | quote }}
{{- end }}
- --adapters-file
- /etc/tuneserve/adapters/adapters.yaml
- --adapters-file-poll-s
- {{ .Values.adaptersFilePollSeconds | quote }}
{{- with .Values.serve.maxLoras }}
- --max-loras
- {{ . | quote }}
{{- end }}
- --max-lora-rank
- {{ .Values.serve.maxLoraRank | quote }}
- --drain-timeout-s
- {{ .Values.drainTimeoutSeconds | quote }}
- --log-level
- {{ .Values.serve.logLevel }}
{{- if .Values.auth.keysFileSecret.name }}
- --api-keys
- /etc/tuneserve/keys/{{ .Values.auth.keysFileSecret.key }}
{{- end }}
{{- range .Values.serve.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The router's pods: not matched by the tuneserve Service or the router's own selector. */}}
{{- define "tuneserve.routerSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-router
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tuneserve.routerLabels" -}}
{{ include "tuneserve.routerSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
