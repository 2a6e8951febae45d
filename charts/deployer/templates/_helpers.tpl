{{- define "deployer.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "deployer.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "deployer.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "deployer.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Every namespace an app may deploy into, once. */}}
{{- define "deployer.namespaces" -}}
{{- $all := list -}}
{{- range $app, $spec := .Values.apps -}}
{{- range $environment, $namespace := $spec.environments -}}
{{- if not (hasKey ($spec.clusters | default dict) $environment) -}}{{/* another cluster's: its RBAC is set there */}}
{{- $all = append $all $namespace -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $all | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/* Where kaniko build Jobs fetch their context: builder.kaniko.contextUrl, else this release's http Service
over https (tls.secret). */}}
{{- define "deployer.contextUrl" -}}
{{- if .Values.builder.kaniko.contextUrl -}}
{{- .Values.builder.kaniko.contextUrl -}}
{{- else if .Values.tls.secret -}}
https://{{ include "deployer.fullname" . }}-http.{{ .Release.Namespace }}.svc:{{ .Values.service.httpPort }}
{{- else -}}
{{- fail "builder.kind kaniko: build Jobs fetch their context over https: set tls.secret (this deployer serves https) or builder.kaniko.contextUrl" -}}
{{- end -}}
{{- end -}}

{{/* The pod's and the container's security contexts: kaniko builds need no privilege in the deployer, so its
pod runs with the RuntimeDefault seccomp profile and no capabilities; buildah needs what values.yaml says. */}}
{{- define "deployer.podSecurityContext" -}}
{{- if eq .Values.builder.kind "kaniko" -}}
{{- toYaml (merge (dict "seccompProfile" (dict "type" "RuntimeDefault")) (deepCopy .Values.podSecurityContext)) -}}
{{- else -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}
{{- end -}}

{{- define "deployer.securityContext" -}}
{{- if eq .Values.builder.kind "kaniko" -}}
{{- toYaml (dict "allowPrivilegeEscalation" false "readOnlyRootFilesystem" false "capabilities" (dict "drop" (list "ALL"))) -}}
{{- else -}}
{{- toYaml .Values.securityContext -}}
{{- end -}}
{{- end -}}
