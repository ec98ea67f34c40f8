package sim

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"os"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/internal/atomicfile"
)

// State is a cluster's complete local state, as a simulated cluster's state
// file holds it. Records may leave Cluster empty; it is set to the local
// cluster.
type State struct {
	Nodes      []clustermesh.Node     `json:"nodes"`
	Identities []clustermesh.Identity `json:"identities"`
	IPs        []clustermesh.IPEntry  `json:"ips"`
	Services   []clustermesh.Service  `json:"services"`
}

// Records validates s against cfg, with the same decoders remote clusters
// use, and returns it as publishable records by kind. Records without a
// cluster get cfg's name, services without an affinity "none". It fails on
// the first invalid record, naming it.
func (s *State) Records(cfg *clustermesh.ClusterConfig) (map[clustermesh.Kind][]clustermesh.Record, error) {
	for i := range s.Nodes {
		s.Nodes[i].Cluster = cmp.Or(s.Nodes[i].Cluster, cfg.Name)
	}
	for i := range s.Identities {
		s.Identities[i].Cluster = cmp.Or(s.Identities[i].Cluster, cfg.Name)
	}
	for i := range s.IPs {
		s.IPs[i].Cluster = cmp.Or(s.IPs[i].Cluster, cfg.Name)
	}
	for i := range s.Services {
		s.Services[i].Cluster = cmp.Or(s.Services[i].Cluster, cfg.Name)
		s.Services[i].Affinity = cmp.Or(s.Services[i].Affinity, clustermesh.AffinityNone)
	}
	var errs [4]error
	out := make(map[clustermesh.Kind][]clustermesh.Record, len(clustermesh.Kinds))
	out[clustermesh.KindNodes], errs[0] = validated(cfg, s.Nodes, clustermesh.DecodeNode)
	out[clustermesh.KindIdentities], errs[1] = validated(cfg, s.Identities, clustermesh.DecodeIdentity)
	out[clustermesh.KindIPs], errs[2] = validated(cfg, s.IPs, clustermesh.DecodeIPEntry)
	out[clustermesh.KindServices], errs[3] = validated(cfg, s.Services, clustermesh.DecodeService)
	if err := cmp.Or(errs[:]...); err != nil {
		return nil, err
	}
	return out, nil
}

// validated encodes each record and decodes it as a consumer would.
func validated[T any, P interface {
	*T
	clustermesh.Record
}](cfg *clustermesh.ClusterConfig, recs []T, decode func(*clustermesh.ClusterConfig, string, []byte) (T, error)) ([]clustermesh.Record, error) {
	out := make([]clustermesh.Record, 0, len(recs))
	for i := range recs {
		rec := P(&recs[i])
		val, err := json.Marshal(rec)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", rec.Key(), err)
		}
		if _, err := decode(cfg, rec.Key(), val); err != nil {
			return nil, err
		}
		out = append(out, rec)
	}
	return out, nil
}

// ReadStateFile parses a state file strictly.
func ReadStateFile(path string) (State, error) {
	var s State
	raw, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("read state file: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return s, fmt.Errorf("parse state file %s: %w", path, err)
	}
	return s, nil
}

// WriteStateFile writes s atomically (see internal/atomicfile), so a
// reader never sees half a file.
func WriteStateFile(path string, s State) error {
	raw, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("write state file %s: %w", path, err)
	}
	if err := atomicfile.WriteFile(path, raw, 0o644); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	return nil
}
