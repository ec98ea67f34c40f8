package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// probeTimeout bounds each endpoint's probe when the caller's context has no
// earlier deadline.
const probeTimeout = 3 * time.Second

// probe dials every endpoint as the etcd client would (TCP, then the TLS
// handshake with tlsCfg for https endpoints) and returns nil if one of them
// completes, else an error naming what stopped each: "connection refused at
// ADDRESS", an x509 verification error, a timeout. Each cause carries a
// hint. The etcd client hides these behind "context deadline exceeded";
// callers run probe after a failed dial to say why.
func probe(ctx context.Context, endpoints []string, tlsCfg *tls.Config) error {
	if len(endpoints) == 0 {
		return errors.New("no endpoints")
	}
	var errs []error
	for _, ep := range endpoints {
		err := probeEndpoint(ctx, ep, tlsCfg)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func probeEndpoint(ctx context.Context, endpoint string, tlsCfg *tls.Config) error {
	addr, useTLS, err := endpointAddr(endpoint, tlsCfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("connection refused at %s (hint: is etcd running and listening on that address?)", addr)
	case err != nil:
		return fmt.Errorf("dial %s: %w (hint: check the address and that the network between here and there is up)", addr, err)
	}
	defer conn.Close()
	if !useTLS {
		return nil
	}
	cfg := &tls.Config{}
	if tlsCfg != nil {
		cfg = tlsCfg.Clone()
	}
	if cfg.ServerName == "" {
		host, _, _ := net.SplitHostPort(addr)
		cfg.ServerName = host
	}
	tc := tls.Client(conn, cfg)
	err = tc.HandshakeContext(ctx)
	var (
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		invalid   x509.CertificateInvalidError
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &unknownCA):
		return fmt.Errorf("TLS handshake with %s: %w (hint: the server's certificate is not signed by the CA this client trusts; use the CA that signed it, e.g. from a fresh join bundle)", addr, err)
	case errors.As(err, &hostErr):
		return fmt.Errorf("TLS handshake with %s: %w (hint: connect by a name the certificate carries, or reissue it with this name)", addr, err)
	case errors.As(err, &invalid):
		return fmt.Errorf("TLS handshake with %s: %w (hint: the server's certificate is expired or not yet valid; check its dates and both clocks)", addr, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("TLS handshake with %s: no answer within %v (hint: is this an etcd client port speaking TLS?)", addr, probeTimeout)
	}
	return fmt.Errorf("TLS handshake with %s: %w (hint: is this an etcd client port speaking TLS?)", addr, err)
}

// endpointAddr returns an endpoint's host:port and whether the client
// speaks TLS to it, as the etcd client decides: https and unixs always,
// a bare host:port when it has a TLS configuration.
func endpointAddr(endpoint string, tlsCfg *tls.Config) (string, bool, error) {
	if !strings.Contains(endpoint, "://") {
		return endpoint, tlsCfg != nil, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", false, fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	switch u.Scheme {
	case "http":
		return u.Host, false, nil
	case "https":
		return u.Host, true, nil
	}
	return "", false, fmt.Errorf("endpoint %q: scheme %q not probed", endpoint, u.Scheme)
}

// ExplainDial adds to err, a failed dial or first call to endpoints, what
// a probe of each endpoint finds (see probe) when err says only that time
// ran out or that no endpoint was available: the etcd client reports "context
// deadline exceeded" for a refused connection and an unknown CA alike. Unless
// ctx was canceled, the probe gets its own bound, since ctx may be the
// deadline that expired.
func ExplainDial(ctx context.Context, err error, endpoints []string, tlsCfg *tls.Config) error {
	if errors.Is(ctx.Err(), context.Canceled) || !(errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.Unavailable) {
		return err
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultDialTimeout)
	defer cancel()
	if perr := probe(pctx, endpoints, tlsCfg); perr != nil {
		return fmt.Errorf("%w: %w", err, perr)
	}
	return err
}
