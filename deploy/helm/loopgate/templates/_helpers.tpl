{{/* The chart's name, cut to 63 characters (a label value's limit). */}}
{{- define "loopgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of every object: `<release>-loopgate`, or the release name when it contains the chart name. */}}
{{- define "loopgate.fullname" -}}
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

{{- define "loopgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "loopgate.labels" -}}
helm.sh/chart: {{ include "loopgate.chart" . }}
{{ include "loopgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: app
app.kubernetes.io/part-of: loopgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the App's pods; never change them in an upgrade (a Deployment's selector is immutable). */}}
{{- define "loopgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loopgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "loopgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "loopgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "loopgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret the chart creates with `secrets.create`. */}}
{{- define "loopgate.secretName" -}}
{{- include "loopgate.fullname" . }}
{{- end }}

{{/*
Where a secret value comes from: the chart's own Secret when `secrets.create` is on and the value is given,
else the configured existing Secret. Called with (list $ <value> <existingSecret>); prints the Secret name,
or nothing when neither is set.
*/}}
{{- define "loopgate.secretRef" -}}
{{- $root := index . 0 }}
{{- $value := index . 1 }}
{{- $existing := index . 2 }}
{{- if and $root.Values.secrets.create $value }}
{{- include "loopgate.secretName" $root }}
{{- else if $existing }}
{{- $existing }}
{{- end }}
{{- end }}

{{/*
The rules of the Role/ClusterRole: exactly what the Kubernetes runtime uses, and nothing for objects it does
not make. docs/kubernetes.md explains each verb.
*/}}
{{- define "loopgate.rbacRules" -}}
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["services/proxy"]
  verbs: ["get", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "create", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "delete"]
{{- if eq .Values.routing "istio" }}
- apiGroups: ["networking.istio.io"]
  resources: ["virtualservices"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- else if eq .Values.routing "gateway-api" }}
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["grpcroutes"]
  verbs: ["get", "list", "create", "update", "delete", "deletecollection"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["referencegrants"]
  verbs: ["get", "list", "create", "delete", "deletecollection"]
{{- end }}
{{- end }}
