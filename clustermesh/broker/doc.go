// Package broker runs and administers the etcd where clusters meet.
//
// A Broker runs an embedded etcd on a data directory, serving TLS with a CA it
// creates on first start, with etcd authentication on. The same
// administration code (EnableAuth, AddCluster, RemoveCluster, AdminClient)
// works against any etcd, so an external etcd cluster with TLS can be the
// broker instead.
//
// # What is persisted where
//
// In Config.DataDir (mode 0700):
//
//	pki/ca.crt, pki/ca.key          CA, ECDSA P-256, 10 years; created once, never replaced
//	pki/server.crt, pki/server.key  server (and peer) certificate for 127.0.0.1, ::1,
//	                                localhost, the listen hosts and Config.ExtraSANs; reissued on start
//	                                when a name is missing or it expires within 90 days
//	pki/token.key, pki/token.pub    ECDSA P-256 key pair etcd signs and checks client tokens
//	                                (ES256 JWTs, valid TokenTTL) with; created once, never replaced,
//	                                so tokens stay valid across restarts
//	root.json                       etcd root user's name and password
//	etcd/                           etcd's data (member WAL and snapshots)
//
// Private keys and root.json are mode 0600, certificates 0644; every file is
// replaced atomically. The root password is written before etcd learns it, so
// an interrupted first start is completed by the next one. Saved Credentials
// (join bundles) are 0600 too.
//
// # Authorization
//
// Each cluster gets an etcd user and role named ClusterUser(name). The role
// may read and write the cluster's clustermesh.ClusterKey (that exact key) and
// its clustermesh.OwnedPrefixes (each ends in "/", so cluster "a" cannot write
// under "ab"), and read everything under clustermesh.Root. etcd itself refuses
// other writes, with rpctypes.ErrPermissionDenied. AddCluster is idempotent
// as a reconciler and rotates the password on every call: etcd keeps only a
// password hash, so an earlier password cannot be handed out again.
// RemoveCluster deletes user and role but not the cluster's keys.
//
// # Concurrency and blocking
//
// New starts nothing. Run blocks until its context is done or etcd fails, and
// stops etcd (exactly once) before returning; it may be called once. Ready is
// closed when etcd serves with authentication on. Broker.AddCluster and
// Broker.RemoveCluster are safe for concurrent use while the broker is ready
// and return ErrNotRunning otherwise. EnsurePKI and Run must not race another
// process on the same directory. The package-level functions are as safe as
// the *clientv3.Client they are given.
//
// Nothing here logs or returns passwords or keys in errors; Credentials print
// and log without their password.
package broker
