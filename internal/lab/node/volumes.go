package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// volumeDir is where a pod volume's files live (there is no mount namespace:
// containers see them here, the stand-in serves them under the mount path).
func volumeDir(podDir, volume string) string { return filepath.Join(podDir, "volumes", volume) }

// syncVolumes writes the files of the pod's configMap, secret, projected and
// emptyDir volumes under podDir. It is rerun periodically so that ConfigMap
// changes reach the files, as with a kubelet.
func (n *node) syncVolumes(ctx context.Context, pod *corev1.Pod, podDir string) error {
	var errs []error
	for _, v := range pod.Spec.Volumes {
		dir := volumeDir(podDir, v.Name)
		var files map[string][]byte
		var err error
		switch {
		case v.ConfigMap != nil:
			files, err = n.configMapFiles(ctx, pod.Namespace, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional)
		case v.Secret != nil:
			files, err = n.secretFiles(ctx, pod.Namespace, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional)
		case v.Projected != nil:
			files = map[string][]byte{}
			for _, src := range v.Projected.Sources {
				var part map[string][]byte
				switch {
				case src.ConfigMap != nil:
					part, err = n.configMapFiles(ctx, pod.Namespace, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional)
				case src.Secret != nil:
					part, err = n.secretFiles(ctx, pod.Namespace, src.Secret.Name, src.Secret.Items, src.Secret.Optional)
				case src.ServiceAccountToken != nil:
					part, err = n.tokenFile(ctx, pod, src.ServiceAccountToken)
				case src.DownwardAPI != nil:
					part, err = n.downwardFiles(pod, src.DownwardAPI.Items)
				}
				if err != nil {
					break
				}
				for k, b := range part {
					files[k] = b
				}
			}
		case v.DownwardAPI != nil:
			files, err = n.downwardFiles(pod, v.DownwardAPI.Items)
		case v.EmptyDir != nil:
			if err := os.MkdirAll(dir, 0o777); err != nil {
				errs = append(errs, fmt.Errorf("volume %s: %w", v.Name, err))
			}
			continue
		default:
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", v.Name, err))
			continue
		}
		if err := writeFiles(dir, files); err != nil {
			errs = append(errs, fmt.Errorf("volume %s: %w", v.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (n *node) configMapFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, optional *bool) (map[string][]byte, error) {
	cm, err := n.client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return map[string][]byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("configmap %s/%s: %w", ns, name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return project(data, items)
}

func (n *node) secretFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, optional *bool) (map[string][]byte, error) {
	s, err := n.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return map[string][]byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", ns, name, err)
	}
	data := map[string][]byte{}
	for k, v := range s.Data {
		data[k] = v
	}
	for k, v := range s.StringData {
		data[k] = []byte(v)
	}
	return project(data, items)
}

// tokenFile requests a service account token bound to the pod, as the
// kubelet does for projected serviceAccountToken sources.
func (n *node) tokenFile(ctx context.Context, pod *corev1.Pod, src *corev1.ServiceAccountTokenProjection) (map[string][]byte, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: src.ExpirationSeconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	tr, err := n.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	return map[string][]byte{src.Path: []byte(tr.Status.Token)}, nil
}

// downwardFiles renders downward API items that name pod fields.
func (n *node) downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			switch it.FieldRef.FieldPath {
			case "metadata.labels":
				v = formatMap(pod.Labels)
			case "metadata.annotations":
				v = formatMap(pod.Annotations)
			default:
				v, err = fieldValue(pod, it.FieldRef.FieldPath, pod.Status.PodIP, n.cfg.NodeIP.String())
			}
		case it.ResourceFieldRef != nil:
			v, err = n.resourceValue(pod, it.ResourceFieldRef)
		}
		if err != nil {
			return nil, fmt.Errorf("downward API %s: %w", it.Path, err)
		}
		out[it.Path] = []byte(v)
	}
	return out, nil
}

func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q\n", k, m[k])
	}
	return b.String()
}

// project maps keys to file paths: every key to its own name, or only the
// listed items to their paths.
func project(data map[string][]byte, items []corev1.KeyToPath) (map[string][]byte, error) {
	if len(items) == 0 {
		return data, nil
	}
	out := map[string][]byte{}
	for _, it := range items {
		b, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("key %q not found", it.Key)
		}
		out[it.Path] = b
	}
	return out, nil
}

// writeFiles makes dir hold exactly files (relative paths, validated).
func writeFiles(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	want := map[string]bool{}
	for rel, b := range files {
		clean := filepath.Clean(rel)
		if filepath.IsAbs(clean) || clean == "." || strings.HasPrefix(clean, "..") {
			return fmt.Errorf("file path %q leaves the volume", rel)
		}
		want[clean] = true
		p := filepath.Join(dir, clean)
		if old, err := os.ReadFile(p); err == nil && string(old) == string(b) {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		tmp := p + ".braid-tmp"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, p); err != nil {
			return err
		}
	}
	return filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if !want[rel] {
			return os.Remove(p)
		}
		return nil
	})
}

// containerEnv computes a container's environment: PATH and HOSTNAME, then
// envFrom, then env (later entries win), with $(VAR) expansion over what
// came before, as in a kubelet.
func (n *node) containerEnv(ctx context.Context, pod *corev1.Pod, c *corev1.Container, podIP string) (map[string]string, error) {
	env := map[string]string{"HOSTNAME": pod.Name}
	for _, from := range c.EnvFrom {
		var data map[string]string
		switch {
		case from.ConfigMapRef != nil:
			cm, err := n.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) && from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("envFrom configmap %s: %w", from.ConfigMapRef.Name, err)
			}
			data = cm.Data
		case from.SecretRef != nil:
			s, err := n.client.CoreV1().Secrets(pod.Namespace).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) && from.SecretRef.Optional != nil && *from.SecretRef.Optional {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("envFrom secret %s: %w", from.SecretRef.Name, err)
			}
			data = map[string]string{}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		}
		for k, v := range data {
			env[from.Prefix+k] = v
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = expand(e.Value, env)
			continue
		}
		v, err := n.envValueFrom(ctx, pod, e.ValueFrom, podIP)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		env[e.Name] = v
	}
	env["PATH"] = searchPath(env["PATH"], n.busybox)
	return env, nil
}

func (n *node) envValueFrom(ctx context.Context, pod *corev1.Pod, src *corev1.EnvVarSource, podIP string) (string, error) {
	switch {
	case src.FieldRef != nil:
		return fieldValue(pod, src.FieldRef.FieldPath, podIP, n.cfg.NodeIP.String())
	case src.ConfigMapKeyRef != nil:
		ref := src.ConfigMapKeyRef
		cm, err := n.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && ref.Optional != nil && *ref.Optional {
				return "", nil
			}
			return "", fmt.Errorf("configmap %s: %w", ref.Name, err)
		}
		return cm.Data[ref.Key], nil
	case src.SecretKeyRef != nil:
		ref := src.SecretKeyRef
		s, err := n.client.CoreV1().Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && ref.Optional != nil && *ref.Optional {
				return "", nil
			}
			return "", fmt.Errorf("secret %s: %w", ref.Name, err)
		}
		return string(s.Data[ref.Key]), nil
	case src.ResourceFieldRef != nil:
		return n.resourceValue(pod, src.ResourceFieldRef)
	}
	return "", errors.New("unsupported valueFrom")
}

// fieldValue resolves a downward API field path.
func fieldValue(pod *corev1.Pod, path, podIP, hostIP string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return podIP, nil
	case "status.hostIP", "status.hostIPs":
		return hostIP, nil
	}
	if rest, ok := strings.CutPrefix(path, "metadata.labels['"); ok {
		return pod.Labels[strings.TrimSuffix(rest, "']")], nil
	}
	if rest, ok := strings.CutPrefix(path, "metadata.annotations['"); ok {
		return pod.Annotations[strings.TrimSuffix(rest, "']")], nil
	}
	return "", fmt.Errorf("field path %q is not supported", path)
}

// resourceValue resolves a resourceFieldRef: the container's limit (or
// request, for requests.*), else the node's capacity, divided by the divisor
// and rounded up, as the kubelet does.
func (n *node) resourceValue(pod *corev1.Pod, ref *corev1.ResourceFieldSelector) (string, error) {
	kind, res, ok := strings.Cut(ref.Resource, ".")
	if !ok || (kind != "limits" && kind != "requests") {
		return "", fmt.Errorf("resource %q is not supported", ref.Resource)
	}
	var q resource.Quantity
	found := false
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name != ref.ContainerName && ref.ContainerName != "" {
			continue
		}
		list := c.Resources.Limits
		if kind == "requests" {
			list = c.Resources.Requests
		}
		q, found = list[corev1.ResourceName(res)]
		break
	}
	if !found {
		if kind == "requests" {
			return "0", nil
		}
		q, found = n.capacity[corev1.ResourceName(res)]
		if !found {
			return "", fmt.Errorf("node has no capacity for %q", res)
		}
	}
	div := ref.Divisor
	if div.IsZero() {
		div = resource.MustParse("1")
	}
	v := (q.MilliValue() + div.MilliValue() - 1) / div.MilliValue()
	return strconv.FormatInt(v, 10), nil
}
