{{/* Pod template shared by the Deployment and the StatefulSet. */}}
{{- define "hookbus.podTemplate" -}}
{{- include "hookbus.guardRails" . }}
{{- $spoolDir := .Values.config.spool.dir | trimSuffix "/" }}
metadata:
  annotations:
    {{- /* The bridge's sections only: a roster-only change rolls the roster alone. */}}
    checksum/config: {{ include "hookbus.configTomlBase" . | sha256sum }}
    {{- if .Values.rollOnSecretChange }}
    {{- /* hookbus reads its Secrets at start: a changed one rolls the pods on helm upgrade. */}}
    {{- with include "hookbus.chartSecretData" . }}
    checksum/secret: {{ . | sha256sum }}
    {{- end }}
    {{- if and (not .Values.secretFiles.existingSecret) .Values.secretFiles.files }}
    checksum/secret-files: {{ toJson .Values.secretFiles.files | sha256sum }}
    {{- end }}
    {{- with include "hookbus.externalSecretsData" . }}
    checksum/external-secrets: {{ . | sha256sum }}
    {{- end }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "hookbus.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "hookbus.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  # Larger than preStop sleep + shutdown.grace, so the drain finishes before SIGKILL.
  terminationGracePeriodSeconds: {{ include "hookbus.terminationGracePeriodSeconds" . }}
  {{- with .Values.initContainers }}
  initContainers:
    {{- tpl (toYaml .) $ | nindent 4 }}
  {{- end }}
  containers:
    - name: hookbus
      image: {{ include "hookbus.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: ["/usr/local/bin/hookbus"]
      args: ["--config", "/etc/hookbus/config.toml"]
      ports:
        - name: http
          containerPort: {{ .Values.containerPorts.http }}
          protocol: TCP
        - name: admin
          containerPort: {{ .Values.containerPorts.admin }}
          protocol: TCP
      {{- $envSecret := include "hookbus.envSecretName" . }}
      {{- if $envSecret }}
      envFrom:
        - secretRef:
            name: {{ $envSecret }}
      {{- end }}
      env:
        {{- include "hookbus.containerEnv" . | nindent 8 }}
      {{- if .Values.probes.startup.enabled }}
      startupProbe:
        httpGet:
          path: {{ .Values.probes.startup.path }}
          port: admin
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
        # Covers reading a full spool back (hookbus.startupFailureThreshold).
        failureThreshold: {{ include "hookbus.startupFailureThreshold" . }}
      {{- end }}
      livenessProbe:
        httpGet:
          path: {{ .Values.probes.liveness.path }}
          port: admin
        initialDelaySeconds: {{ .Values.probes.liveness.initialDelaySeconds }}
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: {{ .Values.probes.readiness.path }}
          port: admin
        initialDelaySeconds: {{ .Values.probes.readiness.initialDelaySeconds }}
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      lifecycle:
        # Keep serving while endpoints and the ingress forget the pod, then SIGTERM starts the drain.
        preStop:
          {{- if .Values.lifecycle.useSleepAction }}
          sleep:
            seconds: {{ .Values.lifecycle.preStopSleepSeconds }}
          {{- else }}
          exec:
            command: ["/bin/sleep", "{{ .Values.lifecycle.preStopSleepSeconds }}"]
          {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      {{- with include "hookbus.resources" . }}
      resources:
        {{- . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: config
          mountPath: /etc/hookbus/config.toml
          subPath: config.toml
          readOnly: true
        - name: spool
          mountPath: {{ $spoolDir }}
        {{- if ne $spoolDir "/tmp" }}
        - name: tmp
          mountPath: /tmp
        {{- end }}
        {{- if include "hookbus.filesSecretName" . }}
        - name: secret-files
          mountPath: {{ .Values.secretFiles.mountPath }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- tpl (toYaml .) $ | nindent 8 }}
        {{- end }}
    {{- with .Values.sidecars }}
    {{- tpl (toYaml .) $ | nindent 4 }}
    {{- end }}
  volumes:
    - name: config
      {{- if .Values.configAsSecret }}
      secret:
        secretName: {{ include "hookbus.fullname" . }}-config
      {{- else }}
      configMap:
        name: {{ include "hookbus.fullname" . }}-config
      {{- end }}
    {{- if not .Values.persistence.enabled }}
    - name: spool
      emptyDir:
        {{- with .Values.spoolVolume.medium }}
        medium: {{ . }}
        {{- end }}
        {{- with .Values.spoolVolume.sizeLimit }}
        sizeLimit: {{ . }}
        {{- end }}
    {{- end }}
    {{- if ne $spoolDir "/tmp" }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- end }}
    {{- with include "hookbus.filesSecretName" . }}
    - name: secret-files
      secret:
        secretName: {{ . }}
        defaultMode: 0440
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- tpl (toYaml .) $ | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.affinity }}
  affinity:
    {{- toYaml .Values.affinity | nindent 4 }}
  {{- else if ne .Values.podAntiAffinityPreset "none" }}
  # One pod per node where possible (podAntiAffinityPreset: {{ .Values.podAntiAffinityPreset }}).
  affinity:
    podAntiAffinity:
      {{- if eq .Values.podAntiAffinityPreset "hard" }}
      requiredDuringSchedulingIgnoredDuringExecution:
        - topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "hookbus.selectorLabels" . | nindent 14 }}
      {{- else }}
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- include "hookbus.selectorLabels" . | nindent 16 }}
      {{- end }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- range .Values.topologySpreadConstraints }}
    - {{ toYaml (merge (dict) . (dict "labelSelector" (dict "matchLabels" (include "hookbus.selectorLabels" $ | fromYaml)))) | nindent 6 | trim }}
    {{- end }}
  {{- else if .Values.zoneSpread }}
  # Spread over zones when the nodes have zone labels (best effort: ScheduleAnyway).
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "hookbus.selectorLabels" . | nindent 10 }}
  {{- end }}
{{- end }}
