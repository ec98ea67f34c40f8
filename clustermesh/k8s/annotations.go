package k8s

import (
	"fmt"
	"strings"

	"github.com/braidmesh/braid/clustermesh"
)

// Service annotations. Each setting is read from the first of its
// spellings present: Braid's, then Cilium's current, then Cilium's legacy.
const (
	AnnotationGlobal   = "braid.dev/global"
	AnnotationShared   = "braid.dev/shared"
	AnnotationAffinity = "braid.dev/affinity"
	// AnnotationTopology ("zone" or "region") asks for close backends; a
	// Service's spec.trafficDistribution PreferClose means "zone".
	AnnotationTopology = "braid.dev/topology"
)

var (
	globalKeys   = []string{AnnotationGlobal, "service.cilium.io/global", "io.cilium/global-service"}
	sharedKeys   = []string{AnnotationShared, "service.cilium.io/shared", "io.cilium/shared-service"}
	affinityKeys = []string{AnnotationAffinity, "service.cilium.io/affinity", "io.cilium/service-affinity"}
)

// annotationError names the annotation whose value is invalid and the values
// it accepts.
type annotationError struct {
	Key, Value string
	Allowed    []string
}

func (e *annotationError) Error() string {
	return fmt.Sprintf("annotation %s: invalid value %q (allowed: %s)", e.Key, e.Value, strings.Join(e.Allowed, ", "))
}

// globalSettings are a Service's mesh settings from its annotations.
type globalSettings struct {
	Global   bool
	Shared   bool
	Affinity clustermesh.Affinity
	Topology clustermesh.Topology
}

// parseAnnotations reads the mesh annotations. Shared defaults to true,
// affinity to none. Every present spelling is validated, so a bad Cilium
// value is reported even when a Braid one takes precedence.
func parseAnnotations(ann map[string]string) (globalSettings, error) {
	s := globalSettings{Shared: true, Affinity: clustermesh.AffinityNone}
	var firstErr error
	fail := func(err error) {
		if firstErr == nil {
			firstErr = err
		}
	}
	boolOf := func(keys []string, dst *bool) {
		set := false
		for _, k := range keys {
			v, ok := ann[k]
			if !ok {
				continue
			}
			var b bool
			switch strings.ToLower(strings.TrimSpace(v)) {
			case "true":
				b = true
			case "false":
				b = false
			default:
				fail(&annotationError{Key: k, Value: v, Allowed: []string{"true", "false"}})
				continue
			}
			if !set {
				*dst, set = b, true
			}
		}
	}
	boolOf(globalKeys, &s.Global)
	boolOf(sharedKeys, &s.Shared)
	set := false
	for _, k := range affinityKeys {
		v, ok := ann[k]
		if !ok {
			continue
		}
		a, err := clustermesh.ParseAffinity(strings.ToLower(strings.TrimSpace(v)))
		if err != nil {
			fail(&annotationError{Key: k, Value: v, Allowed: []string{"local", "remote", "none"}})
			continue
		}
		if !set {
			s.Affinity, set = a, true
		}
	}
	if v, ok := ann[AnnotationTopology]; ok {
		tp, err := clustermesh.ParseTopology(strings.ToLower(strings.TrimSpace(v)))
		if err != nil {
			fail(&annotationError{Key: AnnotationTopology, Value: v, Allowed: []string{"zone", "region", "none"}})
		}
		s.Topology = tp
	}
	if firstErr != nil {
		return globalSettings{Shared: true, Affinity: clustermesh.AffinityNone}, firstErr
	}
	return s, nil
}
