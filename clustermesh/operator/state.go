package operator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/publish"
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

// records validates s against cfg and returns it as publishable records by
// kind. It fails on the first invalid record, naming it.
func (s *State) records(cfg *clustermesh.ClusterConfig) (map[clustermesh.Kind][]publish.Record, error) {
	out := make(map[clustermesh.Kind][]publish.Record, len(clustermesh.Kinds))
	check := func(kind clustermesh.Kind, rec publish.Record) error {
		val, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		switch kind {
		case clustermesh.KindNodes:
			_, err = clustermesh.DecodeNode(cfg, rec.Key(), val)
		case clustermesh.KindIdentities:
			_, err = clustermesh.DecodeIdentity(cfg, rec.Key(), val)
		case clustermesh.KindIPs:
			_, err = clustermesh.DecodeIPEntry(cfg, rec.Key(), val)
		case clustermesh.KindServices:
			_, err = clustermesh.DecodeService(cfg, rec.Key(), val)
		}
		if err != nil {
			return err
		}
		out[kind] = append(out[kind], rec)
		return nil
	}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		if n.Cluster == "" {
			n.Cluster = cfg.Name
		}
		if err := check(clustermesh.KindNodes, n); err != nil {
			return nil, err
		}
	}
	for i := range s.Identities {
		id := &s.Identities[i]
		if id.Cluster == "" {
			id.Cluster = cfg.Name
		}
		if err := check(clustermesh.KindIdentities, id); err != nil {
			return nil, err
		}
	}
	for i := range s.IPs {
		ip := &s.IPs[i]
		if ip.Cluster == "" {
			ip.Cluster = cfg.Name
		}
		if err := check(clustermesh.KindIPs, ip); err != nil {
			return nil, err
		}
	}
	for i := range s.Services {
		svc := &s.Services[i]
		if svc.Cluster == "" {
			svc.Cluster = cfg.Name
		}
		if svc.Affinity == "" {
			svc.Affinity = clustermesh.AffinityNone
		}
		if err := check(clustermesh.KindServices, svc); err != nil {
			return nil, err
		}
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

// WriteStateFile writes s atomically (temp file and rename), so a reader
// never sees half a file.
func WriteStateFile(path string, s State) error {
	raw, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("write state file %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o644); err != nil {
		return fmt.Errorf("write state file %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write state file %s: %w", path, err)
	}
	return nil
}

// followStateFile publishes the state file and re-publishes it whenever its
// modification time or size changes.
func (o *Operator) followStateFile(ctx context.Context) {
	var lastMod time.Time
	var lastSize int64 = -1
	t := time.NewTicker(o.cfg.StatePollInterval)
	defer t.Stop()
	for {
		fi, err := os.Stat(o.cfg.StateFile)
		if err != nil {
			o.setSourceError(fmt.Errorf("state file: %w", err))
		} else if !fi.ModTime().Equal(lastMod) || fi.Size() != lastSize {
			lastMod, lastSize = fi.ModTime(), fi.Size()
			if err := o.applyStateFile(); err != nil {
				o.setSourceError(err)
			} else {
				o.setSourceError(nil)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (o *Operator) applyStateFile() error {
	s, err := ReadStateFile(o.cfg.StateFile)
	if err != nil {
		return err
	}
	return o.Apply(s)
}

// Apply validates s and makes it the desired local state. On error nothing
// changes.
func (o *Operator) Apply(s State) error {
	recs, err := s.records(&o.cfg.Cluster)
	if err != nil {
		return fmt.Errorf("local state: %w", err)
	}
	for _, kind := range clustermesh.Kinds {
		if err := o.pub.Replace(kind, recs[kind]); err != nil {
			return fmt.Errorf("local state: %w", err)
		}
	}
	o.log.Info("local state applied", "nodes", len(s.Nodes), "identities", len(s.Identities), "ips", len(s.IPs), "services", len(s.Services))
	return nil
}
