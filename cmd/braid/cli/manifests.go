package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// kustomization is the part of deploy/kustomization.yaml that braid join
// renders: the same base `kubectl apply -k deploy/` installs.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Labels     []struct {
		Pairs map[string]string `json:"pairs"`
	} `json:"labels"`
	ConfigMapGenerator []struct {
		Name     string   `json:"name"`
		Literals []string `json:"literals"`
	} `json:"configMapGenerator"`
	Images []struct {
		Name   string `json:"name"`
		NewTag string `json:"newTag"`
	} `json:"images"`
}

// clusterScoped kinds get no namespace.
var clusterScoped = map[string]bool{
	"Namespace": true, "CustomResourceDefinition": true, "ClusterRole": true, "ClusterRoleBinding": true,
}

// renderManifests reads the kustomize base in dir and returns its objects
// in apply order (namespace and CRDs first), with the generated ConfigMap's
// literals overridden by settings (cluster-id, pod-cidr, ...) and images
// tagged imageTag when it is not empty. It supports what deploy/ uses:
// namespace, labels, resources, configMapGenerator literals and image tags.
// The generated ConfigMap keeps its plain name (no hash suffix): join
// applies it in place.
func renderManifests(dir string, settings map[string]string, imageTag string) ([]*unstructured.Unstructured, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, fmt.Errorf("read manifests: %w (pass --manifests with the path of Braid's deploy/ directory)", err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		// Fields braid does not render (patches, ...) are refused, so a
		// customised base is not silently applied without them.
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, "kustomization.yaml"), err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range k.Resources {
		data, err := os.ReadFile(filepath.Join(dir, r))
		if err != nil {
			return nil, fmt.Errorf("read manifests: %w", err)
		}
		docs, err := decodeYAML(data)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", r, err)
		}
		objs = append(objs, docs...)
	}
	for _, g := range k.ConfigMapGenerator {
		data := map[string]any{}
		for _, l := range g.Literals {
			key, val, ok := strings.Cut(l, "=")
			if !ok {
				return nil, fmt.Errorf("configMapGenerator %s: literal %q is not key=value", g.Name, l)
			}
			data[key] = val
		}
		for key, val := range settings {
			if _, ok := data[key]; !ok {
				return nil, fmt.Errorf("configMapGenerator %s has no key %q to set", g.Name, key)
			}
			data[key] = val
		}
		cm := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "v1", "kind": "ConfigMap",
			"metadata": map[string]any{"name": g.Name}, "data": data,
		}}
		objs = append(objs, cm)
	}
	for _, o := range objs {
		if !clusterScoped[o.GetKind()] && k.Namespace != "" {
			o.SetNamespace(k.Namespace)
		}
		labels := o.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		for _, l := range k.Labels {
			for key, v := range l.Pairs {
				labels[key] = v
			}
		}
		labels[managedLabel] = "join"
		o.SetLabels(labels)
		for _, img := range k.Images {
			tag := img.NewTag
			if imageTag != "" {
				tag = imageTag
			}
			if err := retag(o, img.Name, tag); err != nil {
				return nil, err
			}
		}
	}
	orderForApply(objs)
	return objs, nil
}

// managedLabel marks every object braid join applied, so that leave (and a
// failed join) removes exactly those.
const managedLabel = "braid.io/managed-by"

func decodeYAML(data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err == io.EOF {
			return out, nil
		} else if err != nil {
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
}

// retag sets the tag of every container image named name in o's pod
// template.
func retag(o *unstructured.Unstructured, name, tag string) error {
	containers, found, err := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if err != nil || !found {
		return nil
	}
	for i, c := range containers {
		cm, ok := c.(map[string]any)
		if !ok {
			continue
		}
		img, _ := cm["image"].(string)
		if img == name || strings.HasPrefix(img, name+":") {
			cm["image"] = name + ":" + tag
			containers[i] = cm
		}
	}
	return unstructured.SetNestedSlice(o.Object, containers, "spec", "template", "spec", "containers")
}

// orderForApply puts namespaces, then CRDs, then everything else.
func orderForApply(objs []*unstructured.Unstructured) {
	rank := func(o *unstructured.Unstructured) int {
		switch o.GetKind() {
		case "Namespace":
			return 0
		case "CustomResourceDefinition":
			return 1
		}
		return 2
	}
	for i := 1; i < len(objs); i++ {
		for j := i; j > 0 && rank(objs[j]) < rank(objs[j-1]); j-- {
			objs[j], objs[j-1] = objs[j-1], objs[j]
		}
	}
}

// printManifests writes objs as one YAML stream.
func printManifests(w io.Writer, objs []*unstructured.Unstructured) error {
	for _, o := range objs {
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "---\n%s", b)
	}
	return nil
}
