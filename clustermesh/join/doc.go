// Package join is a cluster's join bundle: the Credentials a broker issues
// to one cluster (endpoints, the CA that signs the broker's certificate, the
// cluster's etcd user and password), their file form, and Connect, which
// opens a kvstore over the broker with them.
//
// It links the etcd client only, never the etcd server, so braid-agent and
// braid-operator can read a bundle and connect without linking the broker.
// Credentials print and log without their password; LoadCredentials
// validates what it reads and names the file and what is wrong. Everything
// here is safe for concurrent use.
package join
