package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/internal/etcdlab"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestMain(m *testing.M) {
	code := m.Run()
	etcdlab.Cleanup()
	os.Exit(code)
}

// TestExternalClusterSurvivesMemberLoss runs the broker administration code
// against a real three-member etcd cluster and checks that a cluster's stream
// of updates reaches a watcher exactly once and in order while the leader is
// killed halfway through.
func TestExternalClusterSurvivesMemberLoss(t *testing.T) {
	bin := etcdlab.Binary(t)
	pki, err := EnsurePKI(filepath.Join(t.TempDir(), "pki"), nil)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := pki.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	since := func() time.Duration { return time.Since(t0).Round(time.Millisecond) }
	members := etcdlab.StartCluster(t, bin, etcdlab.TLS{CertFile: pki.CertFile, KeyFile: pki.KeyFile, CAFile: pki.CAFile}, 3)
	eps := etcdlab.Endpoints(members)
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()

	// Fresh cluster, auth off: the same calls the embedded broker makes.
	var admin *clientv3.Client
	acfg := AdminConfig{Endpoints: eps, TLS: tlsCfg, Password: newPassword()}
	rootPW := acfg.Password
	for {
		admin, err = AdminClient(ctx, acfg)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("etcd cluster not serving: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer admin.Close()
	t.Logf("%v: cluster serving", since())
	if err := EnableAuth(ctx, admin, rootPW); err != nil {
		t.Fatal(err)
	}
	if err := EnableAuth(ctx, admin, rootPW); err != nil {
		t.Fatalf("EnableAuth again: %v", err)
	}
	if err := EnableAuth(ctx, admin, "wrong"); !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Fatalf("EnableAuth with another root password: %v, want %v", err, rpctypes.ErrAuthFailed)
	}
	creds := map[clustermesh.ClusterName]join.Credentials{}
	for _, name := range []clustermesh.ClusterName{"a", "b"} {
		c, err := AddCluster(ctx, admin, testGrant(name))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(c.Endpoints, eps) {
			t.Errorf("credentials endpoints %v, want %v", c.Endpoints, eps)
		}
		c.CACertPEM = pki.CACertPEM
		creds[name] = c
	}
	writer := clusterClient(t, creds["a"])
	reader := clusterClient(t, creds["b"])
	if _, err := writer.Put(ctx, clustermesh.ClusterKey("b"), "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("a writes b's cluster key: %v, want permission denied", err)
	}

	const n = 500
	key := clustermesh.KindPrefix(clustermesh.KindNodes, "a") + "node-1"
	// The key must exist for the Value compare below.
	start, err := writer.Put(ctx, key, "start")
	if err != nil {
		t.Fatal(err)
	}

	// Reader: cluster b watches a's prefix from just after "start". etcd
	// may cancel a watch while leadership moves (with "leader changed" or
	// "no leader"); like any watcher it then resumes from the revision
	// after the last event it saw.
	got := make(chan []string, 1)
	var rewatches int
	var wg sync.WaitGroup
	defer wg.Wait() // no t.Log from the reader after the test ends
	watchCtx, stopWatch := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer stopWatch()
	wg.Go(func() {
		var vals []string
		defer func() { got <- vals }()
		next := start.Header.Revision + 1
		for watchCtx.Err() == nil {
			wch := reader.Watch(watchCtx, clustermesh.KindPrefix(clustermesh.KindNodes, "a"),
				clientv3.WithPrefix(), clientv3.WithRev(next))
			for resp := range wch {
				if resp.CompactRevision != 0 {
					t.Errorf("watch compacted at %d", resp.CompactRevision)
					return
				}
				if err := resp.Err(); err != nil {
					t.Logf("%v: watch from revision %d ended: %v", since(), next, err)
					break
				}
				for _, ev := range resp.Events {
					vals = append(vals, string(ev.Kv.Value))
					next = ev.Kv.ModRevision + 1
				}
				if len(vals) >= n {
					return
				}
			}
			rewatches++
		}
	})

	// Find the member serving the watch before writing anything.
	var watched *etcdlab.Member
	for watched == nil {
		if ctx.Err() != nil {
			t.Fatal("no member reports the watch")
		}
		watched = watchingMember(t, ctx, tlsCfg, members)
		time.Sleep(20 * time.Millisecond)
	}

	// Writer: versioned updates; a failed write is retried as a put of the
	// same value guarded by "value differs", so an update that did commit
	// before the error is not applied twice.
	var retries int
	var killed *etcdlab.Member
	for i := range n {
		if i == n/2 {
			// The worst member to lose: the leader that also serves the
			// watch. Both the writes and the watch stream must fail over.
			killed = makeLeader(t, ctx, acfg, watched, members)
			t.Logf("%v: killing %s (leader, serving the watch) after %d updates", since(), killed.Name, i)
			killed.Stop(t, syscall.SIGKILL, 5*time.Second)
		}
		val := fmt.Sprintf("v%04d", i)
		for {
			opCtx, opCancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := writer.Txn(opCtx).
				If(clientv3.Compare(clientv3.Value(key), "!=", val)).
				Then(clientv3.OpPut(key, val)).
				Commit()
			opCancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("write %s: %v (after %d retries)", val, err, retries)
			}
			retries++
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Logf("%v: %d updates written, %d writes retried", since(), n, retries)

	var vals []string
	select {
	case vals = <-got:
		t.Logf("%v: all updates seen; watch re-established %d times", since(), rewatches)
	case <-ctx.Done():
		t.Fatal("watcher did not receive every update in time")
	}
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("v%04d", i)
	}
	if !slices.Equal(vals, want) {
		t.Fatalf("watcher got %d updates, want %d exactly once in order; first difference at %d",
			len(vals), n, firstDiff(vals, want))
	}

	stopWatch()
	for _, c := range []*clientv3.Client{reader, writer, admin} {
		c.Close()
	}
	// The surviving members stop cleanly. etcd shuts down on SIGTERM and
	// then re-raises it, so "killed by SIGTERM" is its clean exit.
	for _, m := range members {
		if m == killed {
			continue
		}
		m.Stop(t, syscall.SIGTERM, 10*time.Second)
		t.Logf("%v: %s stopped", since(), m.Name)
		ws := m.Cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ws.Exited() && !(ws.Signaled() && ws.Signal() == syscall.SIGTERM) || ws.Exited() && ws.ExitStatus() != 0 {
			t.Errorf("%s after SIGTERM: %v", m.Name, m.Cmd.ProcessState)
		}
	}
}

// makeLeader moves raft leadership to m, if it is not the leader already, and
// returns m. acfg reaches the cluster as root.
func makeLeader(t *testing.T, ctx context.Context, acfg AdminConfig, m *etcdlab.Member, ms []*etcdlab.Member) *etcdlab.Member {
	t.Helper()
	admin, err := AdminClient(ctx, acfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for {
		st, err := admin.Status(ctx, m.Endpoint)
		if err != nil {
			t.Fatalf("status of %s: %v", m.Name, err)
		}
		if st.Leader == st.Header.MemberId {
			return m
		}
		var lead *etcdlab.Member
		for _, o := range ms {
			if s, err := admin.Status(ctx, o.Endpoint); err == nil && s.Header.MemberId == st.Leader {
				lead = o
			}
		}
		if lead == nil {
			t.Fatalf("leader %x not found", st.Leader)
		}
		// MoveLeader must reach the current leader.
		lcfg := acfg
		lcfg.Endpoints = []string{lead.Endpoint}
		lc, err := AdminClient(ctx, lcfg)
		if err != nil {
			t.Fatal(err)
		}
		_, err = lc.MoveLeader(ctx, st.Header.MemberId)
		lc.Close()
		if err != nil {
			t.Fatalf("move leader from %s to %s: %v", lead.Name, m.Name, err)
		}
	}
}

// watchingMember returns the member that serves a watcher, or nil.
func watchingMember(t *testing.T, ctx context.Context, tlsCfg *tls.Config, ms []*etcdlab.Member) *etcdlab.Member {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	for _, m := range ms {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.Endpoint+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(body)) {
			if v, ok := strings.CutPrefix(line, "etcd_debugging_mvcc_watcher_total "); ok && strings.TrimSpace(v) != "0" {
				return m
			}
		}
	}
	return nil
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
