// Package join is how a cluster joins the mesh, in two ways.
//
// A join bundle: the Credentials a broker issues to one cluster (endpoints,
// the CA that signs the broker's certificate, the mesh's gossip keys, and
// either the cluster's etcd user and password, which `braid broker
// add-cluster` writes, or a client certificate), their file form, and
// Connect, which opens a kvstore over the broker with them.
//
// A token: the token format, the broker's pinned TLS identity, the key and
// certificate request a joining cluster makes, and the small HTTPS API
// (join, renew, leave) it speaks to the broker's join endpoint.
//
// It links the etcd client only, never the etcd server, so braid-agent and
// braid-operator can read a bundle and connect without linking the broker.
// Credentials print and log without their password or key;
// LoadCredentials validates what it reads and names the file and what is
// wrong.
//
// # Trust
//
// A Token carries the SHA-256 fingerprint of the broker's CA. PinnedTLSConfig
// accepts a server only if it presents, in its chain, a CA certificate with
// that fingerprint that signed its leaf for the dialled host name: there is
// no trust on first use. The joining cluster generates its private key
// locally (NewKey) and sends only a certificate request; the broker returns a
// client certificate whose common name is the cluster's etcd user, so etcd
// authenticates the cluster by its certificate and no password exists.
//
// # What the broker stores
//
// Tokens and members live outside clustermesh.Root (under AdminPrefix), so
// no cluster role can read them. A TokenRecord holds the SHA-256 of the
// token's secret, never the secret; it is consumed with a compare-and-swap,
// so a token joins at most one cluster.
//
// # Concurrency
//
// Everything here is stateless or immutable once built and safe for
// concurrent use; Client is safe for concurrent use. Errors returned by the
// broker are *APIError with the broker's message, which names what was
// refused and why.
package join
