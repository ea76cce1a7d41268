{{/* Pod template shared by the Deployment and the StatefulSet. */}}
{{- define "hookbus.podTemplate" -}}
metadata:
  annotations:
    checksum/config: {{ include "hookbus.configToml" . | sha256sum }}
    {{- with include "hookbus.chartSecretData" . }}
    checksum/secret: {{ . | sha256sum }}
    {{- end }}
    {{- if and (not .Values.secretFiles.existingSecret) .Values.secretFiles.files }}
    checksum/secret-files: {{ toJson .Values.secretFiles.files | sha256sum }}
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
      {{- with .Values.extraEnv }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if .Values.probes.startup.enabled }}
      startupProbe:
        httpGet:
          path: {{ .Values.probes.startup.path }}
          port: admin
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
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
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: config
          mountPath: /etc/hookbus/config.toml
          subPath: config.toml
          readOnly: true
        - name: spool
          mountPath: {{ .Values.config.spool.dir }}
        - name: tmp
          mountPath: /tmp
        {{- if include "hookbus.filesSecretName" . }}
        - name: secret-files
          mountPath: {{ .Values.secretFiles.mountPath }}
          readOnly: true
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
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- with include "hookbus.filesSecretName" . }}
    - name: secret-files
      secret:
        secretName: {{ . }}
        defaultMode: 0440
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- range . }}
    - {{ toYaml (merge (dict) . (dict "labelSelector" (dict "matchLabels" (include "hookbus.selectorLabels" $ | fromYaml)))) | nindent 6 | trim }}
    {{- end }}
  {{- end }}
{{- end }}
