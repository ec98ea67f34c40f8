package k8s

import (
	"errors"
	"strings"
	"testing"

	"github.com/braidmesh/braid/clustermesh"
)

func TestParseAnnotations(t *testing.T) {
	tests := []struct {
		name    string
		ann     map[string]string
		want    globalSettings
		wantErr string
	}{
		{"none", nil, globalSettings{Shared: true, Affinity: clustermesh.AffinityNone}, ""},
		{"braid", map[string]string{AnnotationGlobal: "true", AnnotationShared: "false", AnnotationAffinity: "local"},
			globalSettings{Global: true, Affinity: clustermesh.AffinityLocal}, ""},
		{"cilium", map[string]string{"service.cilium.io/global": "True", "service.cilium.io/affinity": "remote"},
			globalSettings{Global: true, Shared: true, Affinity: clustermesh.AffinityRemote}, ""},
		{"cilium legacy", map[string]string{"io.cilium/global-service": "true", "io.cilium/shared-service": "false", "io.cilium/service-affinity": "none"},
			globalSettings{Global: true, Affinity: clustermesh.AffinityNone}, ""},
		{"braid wins", map[string]string{AnnotationGlobal: "false", "service.cilium.io/global": "true"},
			globalSettings{Shared: true, Affinity: clustermesh.AffinityNone}, ""},
		{"topology", map[string]string{AnnotationGlobal: "true", AnnotationTopology: "Region"},
			globalSettings{Global: true, Shared: true, Affinity: clustermesh.AffinityNone, Topology: clustermesh.TopologyRegion}, ""},
		{"bad topology", map[string]string{AnnotationGlobal: "true", AnnotationTopology: "rack"}, globalSettings{},
			`annotation braid.dev/topology: invalid value "rack" (allowed: zone, region, none)`},
		{"bad global", map[string]string{AnnotationGlobal: "yes"}, globalSettings{}, `annotation braid.dev/global: invalid value "yes" (allowed: true, false)`},
		{"bad affinity", map[string]string{AnnotationGlobal: "true", "service.cilium.io/affinity": "nearest"}, globalSettings{},
			`annotation service.cilium.io/affinity: invalid value "nearest" (allowed: local, remote, none)`},
		{"bad shadowed", map[string]string{AnnotationShared: "true", "io.cilium/shared-service": "maybe"}, globalSettings{},
			`annotation io.cilium/shared-service: invalid value "maybe"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseAnnotations(tt.ann)
			if tt.wantErr != "" {
				var ae *annotationError
				if err == nil || !errors.As(err, &ae) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if got.Global {
					t.Errorf("invalid annotations gave a global service")
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}
