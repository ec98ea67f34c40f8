package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
)

// DefaultTokenTTL is how long a join token is valid when no TTL is given.
const DefaultTokenTTL = time.Hour

// Errors callers branch on.
var (
	// ErrNoJoinEndpoint is returned by CreateToken when no broker has
	// published a join endpoint.
	ErrNoJoinEndpoint = errors.New("broker has no join endpoint")
)

// CreateToken records a single-use join token for cluster, valid for ttl
// (zero means DefaultTokenTTL), through admin (root), and returns it. It
// refuses a name already in the mesh. The broker must have published its
// join endpoint (Config.JoinURL).
func CreateToken(ctx context.Context, admin *clientv3.Client, cluster clustermesh.ClusterName, ttl time.Duration) (join.Token, error) {
	if err := cluster.Validate(); err != nil {
		return join.Token{}, fmt.Errorf("create token: %w", err)
	}
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	if ttl < 0 {
		return join.Token{}, fmt.Errorf("create token: negative TTL %v", ttl)
	}
	resp, err := admin.Get(ctx, join.BrokerKey)
	if err != nil {
		return join.Token{}, fmt.Errorf("create token: read broker info: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return join.Token{}, fmt.Errorf("create token: %w (start `braid broker` with --join-listen)", ErrNoJoinEndpoint)
	}
	var info join.BrokerInfo
	if err := json.Unmarshal(resp.Kvs[0].Value, &info); err != nil {
		return join.Token{}, fmt.Errorf("create token: broker info: %w", err)
	}
	if err := nameTaken(ctx, admin, cluster); err != nil {
		return join.Token{}, fmt.Errorf("create token: %w", err)
	}
	tok := join.NewToken(cluster, info)
	rec, err := json.Marshal(tok.Record(time.Now(), ttl))
	if err != nil {
		return join.Token{}, err
	}
	key := join.TokenKey(tok.ID)
	txn, err := admin.Txn(ctx).If(clientv3.Compare(clientv3.Version(key), "=", 0)).Then(clientv3.OpPut(key, string(rec))).Commit()
	if err != nil {
		return join.Token{}, fmt.Errorf("create token: %w", err)
	}
	if !txn.Succeeded {
		return join.Token{}, errors.New("create token: token ID collision; run again")
	}
	return tok, nil
}

// nameTaken reports an error if name has a member record, a registered
// config or an etcd user.
func nameTaken(ctx context.Context, admin *clientv3.Client, name clustermesh.ClusterName) error {
	for _, key := range []string{join.MemberKey(name), clustermesh.ClusterKey(name), clustermesh.GrantKey(name)} {
		resp, err := admin.Get(ctx, key, clientv3.WithCountOnly())
		if err != nil {
			return fmt.Errorf("check name %s: %w", name, err)
		}
		if resp.Count > 0 {
			return fmt.Errorf("cluster name %q is taken: a cluster of that name is in the mesh; choose another name or run `braid leave` in that cluster first", name)
		}
	}
	if _, err := admin.UserGet(ctx, ClusterUser(name)); err == nil {
		return fmt.Errorf("cluster name %q is taken: it has an etcd user (added with `braid broker add-cluster`); choose another name or `braid broker remove-cluster %s`", name, name)
	} else if !errors.Is(err, rpctypes.ErrUserNotFound) {
		return fmt.Errorf("check name %s: %w", name, err)
	}
	return nil
}

// meshConfigs returns every cluster config the mesh knows: registered ones
// and members that joined but have not registered yet. Invalid entries are
// skipped: they cannot hold a name, ID or CIDR.
func meshConfigs(ctx context.Context, admin *clientv3.Client) ([]clustermesh.ClusterConfig, error) {
	var out []clustermesh.ClusterConfig
	resp, err := admin.Get(ctx, clustermesh.ClustersPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list clusters: %w", err)
	}
	for _, kv := range resp.Kvs {
		if c, err := clustermesh.DecodeClusterConfig(string(kv.Key), kv.Value); err == nil {
			out = append(out, c)
		}
	}
	resp, err = admin.Get(ctx, clustermesh.GrantsPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list grants: %w", err)
	}
	for _, kv := range resp.Kvs {
		if g, err := clustermesh.DecodeGrant(string(kv.Key), kv.Value); err == nil {
			out = append(out, g.Config(clustermesh.Capabilities{}))
		}
	}
	resp, err = admin.Get(ctx, join.MembersPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	for _, kv := range resp.Kvs {
		var m join.Member
		if json.Unmarshal(kv.Value, &m) == nil && m.Config.Validate() == nil {
			out = append(out, m.Config)
		}
	}
	return out, nil
}

// joinServer is the broker's HTTPS join endpoint.
type joinServer struct {
	b        *Broker
	admin    *clientv3.Client
	pki      *PKI
	validity time.Duration
}

// refusal is an error shown to the caller as it is, with an HTTP status.
type refusal struct {
	status int
	msg    string
}

func (r *refusal) Error() string { return r.msg }

func refuse(status int, format string, args ...any) error {
	return &refusal{status: status, msg: fmt.Sprintf(format, args...)}
}

func (s *joinServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+join.CheckPath, s.serve(func(r *http.Request) (any, error) {
		var req join.Request
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		_, _, err := s.check(r.Context(), req)
		return struct{}{}, err
	}))
	mux.HandleFunc("POST "+join.JoinPath, s.serve(func(r *http.Request) (any, error) {
		var req join.Request
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return s.join(r.Context(), req)
	}))
	mux.HandleFunc("POST "+join.RenewPath, s.serve(func(r *http.Request) (any, error) {
		name, err := s.caller(r)
		if err != nil {
			return nil, err
		}
		var req join.RenewRequest
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
		return s.renew(r.Context(), name, req)
	}))
	mux.HandleFunc("POST "+join.LeavePath, s.serve(func(r *http.Request) (any, error) {
		name, err := s.caller(r)
		if err != nil {
			return nil, err
		}
		return struct{}{}, s.leave(r.Context(), name)
	}))
	return mux
}

func (s *joinServer) serve(fn func(*http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		out, err := fn(r)
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			status := http.StatusInternalServerError
			var rf *refusal
			if errors.As(err, &rf) {
				status = rf.status
			} else {
				s.b.log.Error("join endpoint", "path", r.URL.Path, "err", err)
			}
			w.WriteHeader(status)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		_ = json.NewEncoder(w).Encode(out)
	}
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return refuse(http.StatusBadRequest, "decode request: %v", err)
	}
	return nil
}

// caller is the cluster whose verified, unrevoked client certificate made
// r.
func (s *joinServer) caller(r *http.Request) (clustermesh.ClusterName, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return "", refuse(http.StatusUnauthorized, "no client certificate: renew and leave need the cluster's certificate from its braid-join Secret")
	}
	cert := r.TLS.VerifiedChains[0][0]
	if revoked, err := s.pki.Revoked(cert); err != nil {
		return "", err
	} else if revoked {
		return "", refuse(http.StatusUnauthorized, "client certificate %x was revoked (the cluster left the mesh)", cert.SerialNumber)
	}
	name, ok := strings.CutPrefix(cert.Subject.CommonName, "cluster-")
	cn := clustermesh.ClusterName(name)
	if !ok || cn.Validate() != nil {
		return "", refuse(http.StatusForbidden, "certificate %q is not a cluster's", cert.Subject.CommonName)
	}
	return cn, nil
}

// check validates req against its token and the mesh, changing nothing. It
// returns the token record and its revision.
func (s *joinServer) check(ctx context.Context, req join.Request) (join.TokenRecord, int64, error) {
	if err := req.Config.Validate(); err != nil {
		return join.TokenRecord{}, 0, refuse(http.StatusBadRequest, "cluster config: %v", err)
	}
	resp, err := s.admin.Get(ctx, join.TokenKey(req.TokenID))
	if err != nil {
		return join.TokenRecord{}, 0, fmt.Errorf("read token: %w", err)
	}
	if len(resp.Kvs) == 0 || req.TokenID == "" || strings.Contains(req.TokenID, "/") {
		return join.TokenRecord{}, 0, refuse(http.StatusForbidden, "unknown token: create one with `braid token create --cluster %s`", req.Config.Name)
	}
	var rec join.TokenRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		return join.TokenRecord{}, 0, fmt.Errorf("decode token record: %w", err)
	}
	if err := rec.Check(req.Secret, req.Config.Name, time.Now()); err != nil {
		return join.TokenRecord{}, 0, refuse(http.StatusForbidden, "%v", err)
	}
	if err := nameTaken(ctx, s.admin, req.Config.Name); err != nil {
		return join.TokenRecord{}, 0, refuse(http.StatusConflict, "%v", err)
	}
	existing, err := meshConfigs(ctx, s.admin)
	if err != nil {
		return join.TokenRecord{}, 0, err
	}
	if err := clustermesh.CheckRegistration(req.Config, existing); err != nil {
		return join.TokenRecord{}, 0, refuse(http.StatusConflict, "%v", err)
	}
	grant := clustermesh.Grant{Name: req.Config.Name, ID: req.Config.ID, PodCIDRs: req.Config.PodCIDRs, ServiceCIDRs: req.Config.ServiceCIDRs}
	if err := grant.Validate(); err != nil {
		return join.TokenRecord{}, 0, refuse(http.StatusBadRequest, "cluster %s: %v", req.Config.Name, err)
	}
	return rec, resp.Kvs[0].ModRevision, nil
}

func (s *joinServer) join(ctx context.Context, req join.Request) (join.Response, error) {
	s.b.joinMu.Lock()
	defer s.b.joinMu.Unlock()
	rec, rev, err := s.check(ctx, req)
	if err != nil {
		return join.Response{}, err
	}
	name := req.Config.Name
	csr, err := join.ParseCSR([]byte(req.CSR), name)
	if err != nil {
		return join.Response{}, refuse(http.StatusBadRequest, "%v", err)
	}
	cert, certPEM, err := s.pki.SignClient(csr.PublicKey, ClusterUser(name), s.validity)
	if err != nil {
		return join.Response{}, err
	}
	now := time.Now()
	rec.Used, rec.UsedAt = true, now
	recJSON, _ := json.Marshal(rec)
	member, _ := json.Marshal(join.Member{Config: req.Config, Serials: []string{cert.SerialNumber.Text(16)}, NotAfter: cert.NotAfter, Joined: now})
	tokKey, memKey := join.TokenKey(req.TokenID), join.MemberKey(name)
	// Consume the token and reserve the name in one compare-and-swap: a
	// second use of the token, or a concurrent join of the name, fails.
	txn, err := s.admin.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(tokKey), "=", rev),
		clientv3.Compare(clientv3.Version(memKey), "=", 0),
	).Then(clientv3.OpPut(tokKey, string(recJSON)), clientv3.OpPut(memKey, string(member))).Commit()
	if err != nil {
		return join.Response{}, fmt.Errorf("consume token: %w", err)
	}
	if !txn.Succeeded {
		return join.Response{}, refuse(http.StatusConflict, "token already used, or cluster %q joined meanwhile: create a new token", name)
	}
	grant := clustermesh.Grant{Name: name, ID: req.Config.ID, PodCIDRs: req.Config.PodCIDRs, ServiceCIDRs: req.Config.ServiceCIDRs}
	if err := s.addUser(ctx, grant); err != nil {
		// Leave nothing: the member record goes, the token stays used.
		_, _ = s.admin.Delete(ctx, memKey)
		_ = RemoveCluster(ctx, s.admin, name)
		_ = s.pki.Revoke(cert.SerialNumber)
		return join.Response{}, err
	}
	keys, err := ensureGossipKeys(ctx, s.admin)
	if err != nil {
		_, _ = s.admin.Delete(ctx, memKey)
		_ = RemoveCluster(ctx, s.admin, name)
		_ = s.pki.Revoke(cert.SerialNumber)
		return join.Response{}, fmt.Errorf("add cluster %s: %w", name, err)
	}
	s.b.log.Info("cluster joined", "cluster", name, "id", req.Config.ID, "notAfter", cert.NotAfter)
	return join.Response{Cluster: name, Endpoints: s.b.Endpoints(), CertPEM: string(certPEM), CAPEM: string(s.pki.CACertPEM), NotAfter: cert.NotAfter, GossipKeys: keys}, nil
}

// addUser writes g, the broker's grant of name, ID and CIDRs that every
// consumer checks the cluster against, and creates the cluster's role and a
// user without password: only its client certificate authenticates it.
func (s *joinServer) addUser(ctx context.Context, g clustermesh.Grant) error {
	name := g.Name
	if err := writeGrant(ctx, s.admin, g); err != nil {
		return refuse(http.StatusConflict, "add cluster %s: %v", name, err)
	}
	user := ClusterUser(name)
	if err := ensureRole(ctx, s.admin, user, clusterPermissions(name)); err != nil {
		return fmt.Errorf("add cluster %s: %w", name, err)
	}
	if _, err := s.admin.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil {
		return fmt.Errorf("add cluster %s: add user: %w", name, err)
	}
	if _, err := s.admin.UserGrantRole(ctx, user, user); err != nil {
		return fmt.Errorf("add cluster %s: grant role: %w", name, err)
	}
	return nil
}

func (s *joinServer) member(ctx context.Context, name clustermesh.ClusterName) (join.Member, int64, error) {
	resp, err := s.admin.Get(ctx, join.MemberKey(name))
	if err != nil {
		return join.Member{}, 0, fmt.Errorf("read member %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return join.Member{}, 0, refuse(http.StatusNotFound, "cluster %s did not join with a token (or left)", name)
	}
	var m join.Member
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
		return join.Member{}, 0, fmt.Errorf("decode member %s: %w", name, err)
	}
	return m, resp.Kvs[0].ModRevision, nil
}

func (s *joinServer) renew(ctx context.Context, name clustermesh.ClusterName, req join.RenewRequest) (join.Response, error) {
	csr, err := join.ParseCSR([]byte(req.CSR), name)
	if err != nil {
		return join.Response{}, refuse(http.StatusBadRequest, "%v", err)
	}
	m, rev, err := s.member(ctx, name)
	if err != nil {
		return join.Response{}, err
	}
	cert, certPEM, err := s.pki.SignClient(csr.PublicKey, ClusterUser(name), s.validity)
	if err != nil {
		return join.Response{}, err
	}
	m.Serials = append(m.Serials, cert.SerialNumber.Text(16))
	m.NotAfter = cert.NotAfter
	b, _ := json.Marshal(m)
	key := join.MemberKey(name)
	txn, err := s.admin.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(clientv3.OpPut(key, string(b))).Commit()
	if err != nil {
		return join.Response{}, fmt.Errorf("record renewal of %s: %w", name, err)
	}
	if !txn.Succeeded {
		return join.Response{}, refuse(http.StatusConflict, "cluster %s changed during renewal; retry", name)
	}
	keys, err := ensureGossipKeys(ctx, s.admin)
	if err != nil {
		return join.Response{}, fmt.Errorf("renew %s: %w", name, err)
	}
	s.b.log.Info("certificate renewed", "cluster", name, "notAfter", cert.NotAfter)
	return join.Response{Cluster: name, Endpoints: s.b.Endpoints(), CertPEM: string(certPEM), CAPEM: string(s.pki.CACertPEM), NotAfter: cert.NotAfter, GossipKeys: keys}, nil
}

// leave withdraws name: its keys are deleted, its user and role removed,
// every certificate it was issued revoked and its member record deleted.
func (s *joinServer) leave(ctx context.Context, name clustermesh.ClusterName) error {
	m, _, err := s.member(ctx, name)
	if err != nil {
		return err
	}
	if err := Withdraw(ctx, s.admin, name); err != nil {
		return err
	}
	if err := RemoveCluster(ctx, s.admin, name); err != nil {
		return err
	}
	var serials []*big.Int
	for _, h := range m.Serials {
		if n, ok := new(big.Int).SetString(h, 16); ok {
			serials = append(serials, n)
		}
	}
	if err := s.pki.Revoke(serials...); err != nil {
		return err
	}
	if _, err := s.admin.Delete(ctx, join.MemberKey(name)); err != nil {
		return fmt.Errorf("leave %s: delete member: %w", name, err)
	}
	s.b.log.Info("cluster left", "cluster", name, "revoked", len(serials))
	return nil
}

// Withdraw deletes every key cluster name owns: its config and everything
// under its OwnedPrefixes and AgentPrefixes. Other clusters see its entries vanish.
func Withdraw(ctx context.Context, admin *clientv3.Client, name clustermesh.ClusterName) error {
	ops := []clientv3.Op{clientv3.OpDelete(clustermesh.ClusterKey(name))}
	for _, p := range append(clustermesh.OwnedPrefixes(name), clustermesh.AgentPrefixes(name)...) {
		ops = append(ops, clientv3.OpDelete(p, clientv3.WithPrefix()))
	}
	if _, err := admin.Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("withdraw cluster %s: %w", name, err)
	}
	return nil
}

// serveJoin publishes the broker's join endpoint and serves it until ctx is
// done.
func (b *Broker) serveJoin(ctx context.Context, admin *clientv3.Client, pki *PKI, bound chan<- struct{}) error {
	u, err := parseHTTPSURL(b.cfg.JoinURL)
	if err != nil {
		return fmt.Errorf("join endpoint: %w", err)
	}
	fp, err := join.Fingerprint(pki.CACertPEM)
	if err != nil {
		return err
	}
	leaf, err := tls.LoadX509KeyPair(pki.CertFile, pki.KeyFile)
	if err != nil {
		return fmt.Errorf("join endpoint: %w", err)
	}
	// The CA goes with the leaf so that joiners can pin it.
	caDER, _ := pemDecode(pki.CACertPEM)
	leaf.Certificate = append(leaf.Certificate, caDER)
	pool := x509.NewCertPool()
	pool.AddCert(pki.caCert)
	ln, err := net.Listen("tcp", u.Host)
	if err != nil {
		return fmt.Errorf("join endpoint: %w", err)
	}
	b.mu.Lock()
	b.joinAddr = ln.Addr().String()
	b.mu.Unlock()
	info := join.BrokerInfo{Endpoints: b.Endpoints(), JoinURL: b.JoinURL(), CAFingerprint: fp}
	ib, _ := json.Marshal(info)
	if _, err := admin.Put(ctx, join.BrokerKey, string(ib)); err != nil {
		ln.Close()
		return fmt.Errorf("join endpoint: publish broker info: %w", err)
	}
	close(bound)
	s := &joinServer{b: b, admin: admin, pki: pki, validity: b.cfg.ClientCertValidity}
	srv := &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: 5 * time.Second,
		// Refused handshakes (a wrong pin) are the client's business.
		ErrorLog: slog.NewLogLogger(b.log.With("component", "join").Handler(), slog.LevelDebug),
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{leaf},
			ClientAuth:   tls.VerifyClientCertIfGiven,
			ClientCAs:    pool,
		},
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("join endpoint: %w", err)
	}
	return nil
}

// JoinURL is the join endpoint's URL; with port 0 configured, the bound
// port once Run serves it. Empty when the broker has no join endpoint.
func (b *Broker) JoinURL() string {
	if b.cfg.JoinURL == "" {
		return ""
	}
	b.mu.Lock()
	addr := b.joinAddr
	b.mu.Unlock()
	if addr == "" {
		return b.cfg.JoinURL
	}
	u, _ := url.Parse(b.cfg.JoinURL)
	_, port, _ := net.SplitHostPort(addr)
	return "https://" + net.JoinHostPort(u.Hostname(), port)
}

// CAFingerprint is the hex SHA-256 of the broker's CA certificate, once
// Run has prepared it.
func (b *Broker) CAFingerprint() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pki == nil {
		return ""
	}
	fp, _ := join.Fingerprint(b.pki.CACertPEM)
	return fp
}
