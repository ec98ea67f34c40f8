package operator

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/sim"
)

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
	s, err := sim.ReadStateFile(o.cfg.StateFile)
	if err != nil {
		return err
	}
	return o.Apply(s)
}

// Apply validates s and makes it the desired local state. On error nothing
// changes.
func (o *Operator) Apply(s sim.State) error {
	recs, err := s.Records(&o.cfg.Cluster)
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
