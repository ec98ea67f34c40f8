package join

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/braidmesh/braid/clustermesh"
)

// Paths of the broker's join API.
const (
	JoinPath  = "/v1/join"
	RenewPath = "/v1/renew"
	LeavePath = "/v1/leave"
	CheckPath = "/v1/check"
)

// Request asks the broker to admit Config with token ID and Secret, signing
// CSR. A check (CheckPath) sends the same without CSR and changes nothing.
type Request struct {
	TokenID string                    `json:"tokenID"`
	Secret  string                    `json:"secret"`
	Config  clustermesh.ClusterConfig `json:"config"`
	CSR     string                    `json:"csr,omitempty"`
}

// RenewRequest asks for a new certificate for the caller's cluster (known
// from the client certificate it presents).
type RenewRequest struct {
	CSR string `json:"csr"`
}

// Response carries a signed client certificate and where to use it.
type Response struct {
	Cluster   clustermesh.ClusterName `json:"cluster"`
	Endpoints []string                `json:"endpoints"`
	CertPEM   string                  `json:"cert"`
	CAPEM     string                  `json:"ca"`
	NotAfter  time.Time               `json:"notAfter"`
	// GossipKeys are the mesh's gossip keys, as in Credentials.
	GossipKeys [][]byte `json:"gossipKeys,omitempty"`
}

// APIError is an error the broker returned; Message says what was refused
// and what to do.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// Client talks to a broker's join endpoint over a pinned connection.
type Client struct {
	base string
	http *http.Client
}

// NewClient returns a client for the join endpoint joinURL whose CA has
// fingerprint. cert, if not nil, authenticates the cluster (renew, leave).
func NewClient(joinURL, fingerprint string, cert *tls.Certificate) (*Client, error) {
	u, err := url.Parse(joinURL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("join URL %q: want https://host:port", joinURL)
	}
	tr := &http.Transport{TLSClientConfig: PinnedTLSConfig(fingerprint, u.Hostname(), cert), ForceAttemptHTTP2: true}
	return &Client{base: u.Scheme + "://" + u.Host, http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}, nil
}

// Check asks whether req would be admitted, changing nothing: token, name,
// ID and CIDR clashes.
func (c *Client) Check(ctx context.Context, req Request) error {
	req.CSR = ""
	return c.do(ctx, CheckPath, req, nil)
}

// Join sends req and returns the signed certificate.
func (c *Client) Join(ctx context.Context, req Request) (Response, error) {
	var resp Response
	err := c.do(ctx, JoinPath, req, &resp)
	return resp, err
}

// Renew returns a new certificate for csrPEM, signed for the cluster the
// client's certificate names.
func (c *Client) Renew(ctx context.Context, csrPEM []byte) (Response, error) {
	var resp Response
	err := c.do(ctx, RenewPath, RenewRequest{CSR: string(csrPEM)}, &resp)
	return resp, err
}

// Leave withdraws the client certificate's cluster from the mesh: its
// entries are deleted, its user removed and its certificates revoked.
func (c *Client) Leave(ctx context.Context) error { return c.do(ctx, LeavePath, struct{}{}, nil) }

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

func (c *Client) do(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) && errors.Is(ue.Err, ErrFingerprintMismatch) {
			return ue.Err
		}
		return fmt.Errorf("broker join endpoint %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("broker join endpoint %s: %w", c.base, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("broker answered HTTP %s", resp.Status)
		}
		return &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("broker join endpoint %s: decode answer: %w", c.base, err)
	}
	return nil
}
