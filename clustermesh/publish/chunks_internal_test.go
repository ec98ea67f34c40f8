package publish

import (
	"reflect"
	"testing"

	"github.com/braidmesh/braid/clustermesh"
)

// TestSameBackendComparesEveryField: chunks are re-encoded only when
// sameBackend says a backend changed, so it must compare every field.
func TestSameBackendComparesEveryField(t *testing.T) {
	typ := reflect.TypeFor[clustermesh.Backend]()
	compared := map[string]bool{"IP": true, "Ports": true, "Node": true, "Zone": true, "Hostname": true, "Ready": true, "Serving": true, "Terminating": true}
	for i := range typ.NumField() {
		if f := typ.Field(i); !compared[f.Name] {
			t.Errorf("clustermesh.Backend.%s is not compared by sameBackend: a change to it alone would not be published", f.Name)
		}
	}
	base := clustermesh.Backend{Ports: []clustermesh.BackendPort{{Name: "http", Port: 80}}}
	for name, change := range map[string]func(*clustermesh.Backend){
		"Ports":       func(b *clustermesh.Backend) { b.Ports = []clustermesh.BackendPort{{Name: "http", Port: 81}} },
		"Node":        func(b *clustermesh.Backend) { b.Node = "n" },
		"Zone":        func(b *clustermesh.Backend) { b.Zone = "z" },
		"Hostname":    func(b *clustermesh.Backend) { b.Hostname = "h" },
		"Ready":       func(b *clustermesh.Backend) { b.Ready = true },
		"Serving":     func(b *clustermesh.Backend) { b.Serving = true },
		"Terminating": func(b *clustermesh.Backend) { b.Terminating = true },
	} {
		b := base
		change(&b)
		if sameBackend(base, b) {
			t.Errorf("sameBackend misses a change of %s", name)
		}
	}
}
