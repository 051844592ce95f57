{{/*
Names and labels shared by every template. Names are cut to 63 characters, the limit of a
DNS label, which Service names and label values must satisfy.
*/}}

{{- define "jobqueue.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "jobqueue.fullname" -}}
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

{{- define "jobqueue.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The labels that pick the operator's pods; they never change across upgrades. */}}
{{- define "jobqueue.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jobqueue.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "jobqueue.labels" -}}
helm.sh/chart: {{ include "jobqueue.chart" . }}
app.kubernetes.io/name: {{ include "jobqueue.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jobqueue
{{- end -}}

{{- define "jobqueue.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "jobqueue.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "jobqueue.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* HOST:PORT worker pods dial: config.operator.service_address, else this release's Service. */}}
{{- define "jobqueue.serviceAddress" -}}
{{- $default := printf "%s.%s.svc:%d" (include "jobqueue.fullname" .) .Release.Namespace (int .Values.ports.grpc) -}}
{{- default $default (.Values.config.operator).service_address -}}
{{- end -}}

{{/*
TLS of the gRPC API. "jobqueue.plaintext" is "true" only when the settings ask for plaintext
by name; otherwise the certificate Secret is mounted as a directory (never with subPath, which
would freeze the files the kubelet replaces on renewal) and the settings point into it.
*/}}
{{- define "jobqueue.plaintext" -}}
{{- if ((.Values.config.operator).tls).insecure_plaintext -}}true{{- end -}}
{{- end -}}

{{- define "jobqueue.tlsMountPath" -}}/etc/jobqueue/tls{{- end -}}

{{- define "jobqueue.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "jobqueue.fullname" .)) .Values.tls.secretName -}}
{{- end -}}

{{/*
The settings file. The listen addresses come from `ports`, so the container's ports, the
probes and the Service always agree with what the operator binds; the address workers are
given defaults to this release's Service; the certificate files are the mounted Secret's.
*/}}
{{- define "jobqueue.settings" -}}
{{- $derived := dict
  "grpc_address" (printf "0.0.0.0:%d" (int .Values.ports.grpc))
  "http_address" (printf "0.0.0.0:%d" (int .Values.ports.http))
  "service_address" (include "jobqueue.serviceAddress" .)
-}}
{{- $operator := mergeOverwrite (deepCopy $derived) (deepCopy (default dict .Values.config.operator)) -}}
{{- $_ := set $operator "grpc_address" (get $derived "grpc_address") -}}
{{- $_ := set $operator "http_address" (get $derived "http_address") -}}
{{- $tls := default dict $operator.tls -}}
{{- if not (include "jobqueue.plaintext" .) -}}
{{- $_ := set $tls "cert_file" (printf "%s/tls.crt" (include "jobqueue.tlsMountPath" .)) -}}
{{- $_ := set $tls "key_file" (printf "%s/tls.key" (include "jobqueue.tlsMountPath" .)) -}}
{{- end -}}
{{- $_ := set $operator "tls" $tls -}}
{{- $settings := merge (dict "operator" $operator) (deepCopy .Values.config) -}}
{{- toYaml $settings -}}
{{- end -}}

{{- define "jobqueue.peeringName" -}}
{{- default "jobqueue" (.Values.config.operator).peering_name -}}
{{- end -}}

{{/* One env entry per configured password Secret. */}}
{{- define "jobqueue.secretEnv" -}}
{{- range $variable, $secret := dict "JQ_DATABASE_PASSWORD" .Values.secrets.databasePassword "JQ_REDIS_PASSWORD" .Values.secrets.redisPassword "JQ_KAFKA_SASL_PASSWORD" .Values.secrets.kafkaSaslPassword }}
{{- if $secret.name }}
- name: {{ $variable }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret.name }}
      key: {{ $secret.key }}
{{- end }}
{{- end }}
{{- end -}}
