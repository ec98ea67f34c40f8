package join

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/braidmesh/braid/kvstore/etcd"
)

// RenewDue reports whether a certificate valid from notBefore to notAfter
// should be renewed at now: when less than a third of its life remains.
func RenewDue(notBefore, notAfter, now time.Time) bool {
	return notAfter.Sub(now) < notAfter.Sub(notBefore)/3
}

// renewRetry is how long a Renewer waits after a failed renewal.
const renewRetry = time.Minute

// Renewer keeps the client certificate of a cluster that joined with a
// token current: it renews it at the broker's join endpoint, authenticated
// by the certificate it replaces, when a third of its life remains, and
// hands the new credentials to Save (which stores them, for example in the
// cluster's join Secret). Connections made through TLSConfig present the
// newest certificate. Safe for concurrent use; run Run once.
type Renewer struct {
	save func(context.Context, Credentials) error
	log  *slog.Logger

	mu    sync.Mutex
	creds Credentials
	cert  *tls.Certificate
}

// NewRenewer returns a renewer for creds, which must carry a client
// certificate and the join endpoint (JoinURL, CAFingerprint).
func NewRenewer(creds Credentials, save func(context.Context, Credentials) error, log *slog.Logger) (*Renewer, error) {
	if creds.JoinURL == "" || creds.CAFingerprint == "" {
		return nil, fmt.Errorf("renew certificate of cluster %s: no join endpoint in its credentials (it did not join with a token)", creds.Cluster)
	}
	cert, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("renew certificate of cluster %s: %w", creds.Cluster, err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Renewer{save: save, log: log, creds: creds, cert: &cert}, nil
}

// Credentials returns the current credentials.
func (r *Renewer) Credentials() Credentials {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.creds
}

// TLSConfig trusts the broker's CA and presents the current certificate on
// every new connection.
func (r *Renewer) TLSConfig() (*tls.Config, error) {
	cfg, err := ClientTLSConfig(r.Credentials().CACertPEM)
	if err != nil {
		return nil, err
	}
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.cert, nil
	}
	return cfg, nil
}

// Run renews the certificate whenever it is due, until ctx is done.
// Failures are logged and retried after a minute; it returns nil.
func (r *Renewer) Run(ctx context.Context) error {
	for {
		creds := r.Credentials()
		cert, err := parseCert(creds.CertPEM)
		if err != nil {
			return fmt.Errorf("renew certificate of cluster %s: %w", creds.Cluster, err)
		}
		wait := time.Until(cert.NotAfter.Add(-cert.NotAfter.Sub(cert.NotBefore) / 3))
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		if err := r.renew(ctx); err != nil {
			r.log.Error("certificate renewal failed; retrying", "cluster", creds.Cluster, "notAfter", cert.NotAfter, "err", err)
			t := time.NewTimer(renewRetry)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
	}
}

func (r *Renewer) renew(ctx context.Context) error {
	creds := r.Credentials()
	r.mu.Lock()
	current := r.cert
	r.mu.Unlock()
	c, err := NewClient(creds.JoinURL, creds.CAFingerprint, current)
	if err != nil {
		return err
	}
	defer c.Close()
	keyPEM, csrPEM, err := NewKey(creds.Cluster)
	if err != nil {
		return err
	}
	resp, err := c.Renew(ctx, csrPEM)
	if err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	next := creds
	next.CertPEM, next.KeyPEM, next.CACertPEM = []byte(resp.CertPEM), keyPEM, []byte(resp.CAPEM)
	cert, err := tls.X509KeyPair(next.CertPEM, next.KeyPEM)
	if err != nil {
		return fmt.Errorf("renew: broker's certificate: %w", err)
	}
	// Save first: a certificate the cluster cannot find after a restart
	// is worth nothing.
	if r.save != nil {
		if err := r.save(ctx, next); err != nil {
			return fmt.Errorf("renew: save: %w", err)
		}
	}
	r.mu.Lock()
	r.creds, r.cert = next, &cert
	r.mu.Unlock()
	r.log.Info("certificate renewed", "cluster", creds.Cluster, "notAfter", resp.NotAfter)
	return nil
}

// ConnectRenewing is Connect with the renewer's current certificate on
// every new connection.
func ConnectRenewing(ctx context.Context, r *Renewer, log *slog.Logger) (*etcd.Store, error) {
	creds := r.Credentials()
	tlsCfg, err := r.TLSConfig()
	if err != nil {
		return nil, err
	}
	s, err := etcd.New(ctx, etcd.Config{Endpoints: creds.Endpoints, TLS: tlsCfg, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", creds, err)
	}
	return s, nil
}
