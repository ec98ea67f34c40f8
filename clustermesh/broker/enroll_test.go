package broker

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"github.com/braidmesh/braid/internal/testenv"
)

// joinWith redeems tok for cfg the way `braid join` does and returns the
// cluster's credentials.
func joinWith(ctx context.Context, tok join.Token, cfg clustermesh.ClusterConfig) (join.Credentials, error) {
	c, err := join.NewClient(tok.JoinURL, tok.CAFingerprint, nil)
	if err != nil {
		return join.Credentials{}, err
	}
	defer c.Close()
	req := join.Request{TokenID: tok.ID, Secret: tok.Secret, Config: cfg}
	if err := c.Check(ctx, req); err != nil {
		return join.Credentials{}, err
	}
	keyPEM, csrPEM, err := join.NewKey(cfg.Name)
	if err != nil {
		return join.Credentials{}, err
	}
	req.CSR = string(csrPEM)
	resp, err := c.Join(ctx, req)
	if err != nil {
		return join.Credentials{}, err
	}
	return join.Credentials{Cluster: resp.Cluster, Endpoints: resp.Endpoints, CACertPEM: []byte(resp.CAPEM),
		CertPEM: []byte(resp.CertPEM), KeyPEM: keyPEM, JoinURL: tok.JoinURL, CAFingerprint: tok.CAFingerprint,
		GossipKeys: resp.GossipKeys}, nil
}

func TestJoinWithToken(t *testing.T) {
	ports := testenv.FreePorts(t, 2)
	b := startBrokerConfig(t, Config{
		DataDir:    t.TempDir(),
		ClientURLs: []string{fmt.Sprintf("https://127.0.0.1:%d", ports[0])},
		PeerURL:    fmt.Sprintf("https://127.0.0.1:%d", ports[1]),
		JoinURL:    "https://127.0.0.1:0",
	})
	ctx := t.Context()
	admin, err := AdminClient(ctx, mustLocalAdmin(t, b))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	// A cluster already in the mesh, registered the old way.
	west := clustermesh.ClusterConfig{Name: "west", ID: 2, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}}
	wb, _ := json.Marshal(west)
	if _, err := admin.Put(ctx, clustermesh.ClusterKey("west"), string(wb)); err != nil {
		t.Fatal(err)
	}
	north := clustermesh.ClusterConfig{Name: "north", ID: 3, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.3.0.0/16")}}

	tok, err := CreateToken(ctx, admin, "north", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := join.ParseToken(tok.String())
	if err != nil || parsed.String() != tok.String() {
		t.Fatalf("token round trip: %+v, %v", parsed, err)
	}
	if parsed.JoinURL != b.JoinURL() || parsed.CAFingerprint != b.CAFingerprint() {
		t.Fatalf("token names %s %s, broker is %s %s", parsed.JoinURL, parsed.CAFingerprint, b.JoinURL(), b.CAFingerprint())
	}

	refused := func(t *testing.T, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v, want an error containing %q", err, want)
		}
	}
	// Nothing below may change the mesh: no member, no user, no key.
	unchanged := func(t *testing.T, name clustermesh.ClusterName) {
		t.Helper()
		if err := nameTaken(ctx, admin, name); err != nil {
			t.Fatalf("refused join left something behind: %v", err)
		}
	}

	t.Run("clashes refused before any change", func(t *testing.T) {
		idClash := north
		idClash.ID = 2
		_, err := joinWith(ctx, tok, idClash)
		refused(t, err, `cluster ID 2 taken by cluster "west"`)
		overlap := north
		overlap.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.2.128.0/17")}
		_, err = joinWith(ctx, tok, overlap)
		refused(t, err, `10.2.128.0/17 (north) overlaps 10.2.0.0/16 (west)`)
		other := north
		other.Name = "south"
		_, err = joinWith(ctx, tok, other)
		refused(t, err, `token is for cluster "north", not "south"`)
		unchanged(t, "north")
		unchanged(t, "south")
	})

	t.Run("name taken", func(t *testing.T) {
		_, err := CreateToken(ctx, admin, "west", time.Hour)
		refused(t, err, `cluster name "west" is taken`)
	})

	t.Run("wrong fingerprint", func(t *testing.T) {
		bad := tok
		bad.CAFingerprint = strings.Repeat("0", 64)
		_, err := joinWith(ctx, bad, north)
		if !errors.Is(err, join.ErrFingerprintMismatch) {
			t.Fatalf("got %v, want %v", err, join.ErrFingerprintMismatch)
		}
		unchanged(t, "north")
	})

	t.Run("expired token", func(t *testing.T) {
		old, err := CreateToken(ctx, admin, "north", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		rec := old.Record(time.Now().Add(-2*time.Hour), time.Hour)
		rb, _ := json.Marshal(rec)
		if _, err := admin.Put(ctx, join.TokenKey(old.ID), string(rb)); err != nil {
			t.Fatal(err)
		}
		_, err = joinWith(ctx, old, north)
		refused(t, err, "token expired at")
		unchanged(t, "north")
	})

	var creds join.Credentials
	t.Run("join", func(t *testing.T) {
		creds, err = joinWith(ctx, tok, north)
		if err != nil {
			t.Fatal(err)
		}
		if creds.Password != "" || creds.Username != "" {
			t.Fatal("token join produced a password")
		}
		if err := creds.Validate(); err != nil {
			t.Fatal(err)
		}
		if len(creds.GossipKeys) == 0 {
			t.Fatal("token join returned no gossip keys")
		}
		// The grant every consumer checks north's entries against.
		g, err := admin.Get(ctx, clustermesh.GrantKey("north"))
		if err != nil || len(g.Kvs) != 1 {
			t.Fatalf("token join wrote no grant: %v", err)
		}
		if gr, err := clustermesh.DecodeGrant(string(g.Kvs[0].Key), g.Kvs[0].Value); err != nil || gr.ID != north.ID {
			t.Fatalf("north's grant: %+v, %v", gr, err)
		}
		// etcd authenticates the cluster by its certificate alone.
		s, err := join.Connect(ctx, creds, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		nb, _ := json.Marshal(north)
		if err := s.Put(ctx, clustermesh.ClusterKey("north"), nb, 0); err != nil {
			t.Fatalf("write own config with certificate: %v", err)
		}
		if err := s.Put(ctx, clustermesh.ClusterKey("west"), nb, 0); err == nil {
			t.Fatal("north may write west's config")
		}
	})

	t.Run("password bundle beside certificates", func(t *testing.T) {
		// `braid broker add-cluster` bundles carry a password and no
		// certificate; they keep working on a broker that also accepts
		// client certificates.
		east, err := b.AddCluster(ctx, clustermesh.Grant{Name: "east", ID: 4, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.4.0.0/16")}})
		if err != nil {
			t.Fatal(err)
		}
		if len(east.CertPEM) != 0 || east.Password == "" {
			t.Fatalf("add-cluster bundle: certificate %d bytes, password set %v; want a password only", len(east.CertPEM), east.Password != "")
		}
		s, err := join.Connect(ctx, east, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		eb, _ := json.Marshal(clustermesh.ClusterConfig{Name: "east", ID: 4, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.4.0.0/16")}})
		if err := s.Put(ctx, clustermesh.ClusterKey("east"), eb, 0); err != nil {
			t.Fatalf("write own config with password: %v", err)
		}
	})

	t.Run("reused token", func(t *testing.T) {
		_, err := joinWith(ctx, tok, clustermesh.ClusterConfig{Name: "north", ID: 9})
		refused(t, err, "token already used")
	})

	t.Run("renew", func(t *testing.T) {
		cert, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		c, err := join.NewClient(creds.JoinURL, creds.CAFingerprint, &cert)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		keyPEM, csrPEM, err := join.NewKey("north")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Renew(ctx, csrPEM)
		if err != nil {
			t.Fatal(err)
		}
		renewed := creds
		renewed.CertPEM, renewed.KeyPEM = []byte(resp.CertPEM), keyPEM
		s, err := join.Connect(ctx, renewed, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		creds = renewed
	})

	t.Run("leave", func(t *testing.T) {
		cert, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		c, err := join.NewClient(creds.JoinURL, creds.CAFingerprint, &cert)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A watch the cluster holds open with its certificate ends on leave.
		tlsCfg, err := creds.TLSConfig()
		if err != nil {
			t.Fatal(err)
		}
		cc, err := clientv3.New(clientv3.Config{Endpoints: creds.Endpoints, TLS: tlsCfg, DialTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		if _, err := cc.Get(ctx, clustermesh.ClusterKey("north")); err != nil {
			t.Fatalf("read with certificate before leave: %v", err)
		}
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		wch := cc.Watch(clientv3.WithRequireLeader(wctx), clustermesh.Root, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		if r := <-wch; !r.Created {
			t.Fatalf("watch not created: %v", r.Err())
		}
		if err := c.Leave(ctx); err != nil {
			t.Fatal(err)
		}
		// Until the stream ends, the cluster would see leftover events;
		// each response is either such an event or the end.
		ended := false
		deadline := time.After(30 * time.Second)
		for !ended {
			select {
			case r, ok := <-wch:
				ended = !ok || r.Canceled || r.Err() != nil
			case <-deadline:
				t.Fatal("the watch of a cluster that left, opened with its certificate, is still open")
			}
		}
		if _, err := cc.Get(ctx, clustermesh.ClusterKey("north")); err == nil {
			t.Fatal("a cluster that left still reads with its certificate")
		}
		resp, err := admin.Get(ctx, clustermesh.ClusterKey("north"), clientv3.WithCountOnly())
		if err != nil || resp.Count != 0 {
			t.Fatalf("north's config after leave: %d keys, %v", resp.Count, err)
		}
		unchanged(t, "north")
		// Its certificate is revoked: etcd refuses the connection.
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if s, err := join.Connect(sctx, creds, nil); err == nil {
			s.Close()
			t.Fatal("revoked certificate still connects")
		}
		if err := c.Leave(ctx); err == nil || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("second leave: %v, want revoked", err)
		}
	})
}

// An operator's renewer replaces a certificate nearing expiry with a new
// one from the broker, saves it, and presents it on new connections.
func TestRenewerRenewsBeforeExpiry(t *testing.T) {
	ports := testenv.FreePorts(t, 2)
	b := startBrokerConfig(t, Config{
		DataDir:            t.TempDir(),
		ClientURLs:         []string{fmt.Sprintf("https://127.0.0.1:%d", ports[0])},
		PeerURL:            fmt.Sprintf("https://127.0.0.1:%d", ports[1]),
		JoinURL:            "https://127.0.0.1:0",
		ClientCertValidity: time.Minute, // due at once: backdated 5 minutes
	})
	ctx := t.Context()
	admin, err := AdminClient(ctx, mustLocalAdmin(t, b))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	tok, err := CreateToken(ctx, admin, "north", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := joinWith(ctx, tok, clustermesh.ClusterConfig{Name: "north", ID: 3})
	if err != nil {
		t.Fatal(err)
	}
	saved := make(chan join.Credentials, 1)
	r, err := join.NewRenewer(creds, func(_ context.Context, c join.Credentials) error {
		select {
		case saved <- c:
		default:
		}
		return nil
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	var next join.Credentials
	select {
	case next = <-saved:
	case <-time.After(30 * time.Second):
		t.Fatal("certificate not renewed")
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if string(next.CertPEM) == string(creds.CertPEM) || string(next.KeyPEM) == string(creds.KeyPEM) {
		t.Fatal("renewal kept the old certificate or key")
	}
	if !next.NotAfter().After(creds.NotAfter()) && !next.NotAfter().Equal(creds.NotAfter()) {
		t.Errorf("renewed certificate expires %v, before the old one's %v", next.NotAfter(), creds.NotAfter())
	}
	s, err := join.ConnectRenewing(ctx, r, nil)
	if err != nil {
		t.Fatalf("connect with the renewed certificate: %v", err)
	}
	defer s.Close()
	if err := s.Put(ctx, clustermesh.ClusterKey("north"), []byte(`{}`), 0); err != nil {
		t.Fatalf("write as north with the renewed certificate: %v", err)
	}
	resp, err := admin.Get(ctx, join.MemberKey("north"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatal(err)
	}
	var m join.Member
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil || len(m.Serials) < 2 {
		t.Errorf("member record %s lists serials %v; leave must revoke both", resp.Kvs[0].Value, m.Serials)
	}
}
