{{/* Names, labels and the shared pieces of the pod templates. */}}

{{- define "appliance.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "appliance.fullname" -}}
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

{{/* The worker's and the flusher's names: the full name leaves room for the suffix (and a StatefulSet pod's
ordinal, and its PVC's name, within 63 characters). */}}
{{- define "appliance.workerName" -}}
{{- printf "%s-worker" (include "appliance.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}

{{- define "appliance.flusherName" -}}
{{- printf "%s-flusher" (include "appliance.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}

{{- define "appliance.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "appliance.labels" -}}
helm.sh/chart: {{ include "appliance.chart" . }}
{{ include "appliance.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "appliance.selectorLabels" -}}
app.kubernetes.io/name: {{ include "appliance.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "appliance.workerSelectorLabels" -}}
{{ include "appliance.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "appliance.flusherSelectorLabels" -}}
{{ include "appliance.selectorLabels" . }}
app.kubernetes.io/component: flusher
{{- end }}

{{- define "appliance.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "appliance.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "appliance.secretName" -}}
{{- default (printf "%s-secrets" (include "appliance.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "appliance.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The worker's terminationGracePeriodSeconds: the drain SIGTERM starts, then the margin to close what is
left and exit. No preStop hook adds to it (see the StatefulSet). */}}
{{- define "appliance.workerGracePeriod" -}}
{{- add (int .Values.worker.drainTimeoutSeconds) (int .Values.worker.terminationMarginSeconds) }}
{{- end }}

{{/* A TOML document from a map of [section] -> key -> value. Values go through toJson: a JSON string, number,
boolean or array of those is the same TOML value. A null value leaves its key out (the appliance's default). */}}
{{- define "appliance.toml" -}}
{{- range $section, $keys := . }}
[{{ $section }}]
{{- range $key, $value := $keys }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{ end }}
{{- end }}

{{/* appliance.toml: the settings derived from the values, over `config`. */}}
{{- define "appliance.config" -}}
{{- $v := .Values }}
{{- $redis := dict "host" $v.redis.host "port" $v.redis.port "db" $v.redis.db "tls" $v.redis.tls }}
{{- with $v.redis.username }}{{ $_ := set $redis "username" . }}{{ end }}
{{- with $v.redis.tlsCaFile }}{{ $_ := set $redis "tls_ca_file" . }}{{ end }}
{{- $postgres := dict "host" $v.postgres.host "port" $v.postgres.port "dbname" $v.postgres.dbname "user" $v.postgres.user "sslmode" $v.postgres.sslmode }}
{{- with $v.postgres.sslrootcert }}{{ $_ := set $postgres "sslrootcert" . }}{{ end }}
{{- $worker := dict "max_rooms" $v.worker.maxRooms "drain_timeout_s" $v.worker.drainTimeoutSeconds "health_port" $v.worker.healthPort "status_port" $v.worker.statusPort "health_bind" "0.0.0.0" }}
{{- if $v.metrics.enabled }}{{ $_ := set $worker "prometheus_port" $v.metrics.port }}{{ end }}
{{- $derived := dict
  "control" (dict "role" "worker")
  "livekit_server" (dict "enabled" false)
  "livekit" (dict "url" $v.livekit.url)
  "redis" $redis
  "postgres" $postgres
  "store" (dict "spool_dir" "/var/lib/appliance/spool")
  "worker" $worker
  "logging" (dict "journal" false)
}}
{{- $config := mustMergeOverwrite (deepCopy (default (dict) $v.config)) $derived }}
# Rendered by the livekit-appliance chart from its values; see config/appliance.toml for every setting.
{{ include "appliance.toml" $config | trim }}
{{- end }}

{{/* The security context of every container: the image's user, nothing else. */}}
{{- define "appliance.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "appliance.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
# The group of the volumes' files (the spool, the copied config): the image's group.
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The environment of every appliance container: where its settings are. */}}
{{- define "appliance.env" -}}
- name: APPLIANCE_CONFIG
  value: /etc/appliance/appliance.toml
- name: APPLIANCE_SECRETS
  value: /etc/appliance/secrets.toml
# The root filesystem is read-only; anything that writes under $HOME writes to /tmp (an emptyDir).
- name: HOME
  value: /tmp
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "appliance.settingsMounts" -}}
- name: settings
  mountPath: /etc/appliance
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The init container that puts appliance.toml (0444) and secrets.toml (0600, owned by 10001) into the
memory-backed `settings` volume: the appliance refuses a secrets file its group can read, and a Secret volume's
files are group-readable under fsGroup (and root's without it). The Secret is mounted here only. */}}
{{- define "appliance.settingsInit" -}}
- name: settings
  image: {{ include "appliance.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - sh
    - -ec
    - install -m 0444 /run/appliance-src/config/appliance.toml /etc/appliance/appliance.toml && install -m 0600 /run/appliance-src/secret/secrets.toml /etc/appliance/secrets.toml
  securityContext:
    {{- include "appliance.containerSecurityContext" . | nindent 4 }}
  resources:
    requests:
      cpu: 10m
      memory: 16Mi
    limits:
      memory: 32Mi
  volumeMounts:
    - name: settings
      mountPath: /etc/appliance
    - name: config-source
      mountPath: /run/appliance-src/config
      readOnly: true
    - name: secret-source
      mountPath: /run/appliance-src/secret
      readOnly: true
{{- end }}

{{- define "appliance.settingsVolumes" -}}
- name: settings
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: config-source
  configMap:
    name: {{ include "appliance.fullname" . }}-config
    defaultMode: 0444
- name: secret-source
  secret:
    secretName: {{ include "appliance.secretName" . }}
    items:
      - key: {{ .Values.secrets.key }}
        path: secrets.toml
    # Read by the init container only (as 10001, through fsGroup: group read is added to this mode).
    defaultMode: 0400
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod annotations that roll the pods when their settings change. */}}
{{- define "appliance.checksums" -}}
checksum/config: {{ include "appliance.config" . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secrets: {{ include "appliance.toml" .Values.secrets.values | sha256sum }}
{{- end }}
{{- end }}
