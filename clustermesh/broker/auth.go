package broker

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// RootUser is etcd's superuser, whose role ("root") etcd requires before it
// enables authentication.
const RootUser = "root"

const rootRole = "root"

// ClusterUser is the etcd user and role name of cluster name.
func ClusterUser(name clustermesh.ClusterName) string { return join.User(name) }

// newPassword returns a random password with 128 bits of entropy.
func newPassword() string { return rand.Text() }

// EnableAuth turns on authentication in the etcd cluster that c talks to,
// with rootPassword as the password of RootUser. It works on any etcd
// (embedded or external) and is idempotent: if authentication is already on,
// it only checks that rootPassword is RootUser's password. c may be
// unauthenticated (while auth is off) or carry root credentials.
func EnableAuth(ctx context.Context, c *clientv3.Client, rootPassword string) error {
	if rootPassword == "" {
		return errors.New("enable auth: empty root password")
	}
	st, err := c.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("enable auth: status: %w", err)
	}
	if st.Enabled {
		if _, err := c.Authenticate(ctx, RootUser, rootPassword); err != nil {
			return fmt.Errorf("enable auth: already enabled; check root password: %w", err)
		}
		return nil
	}
	if _, err := c.UserAdd(ctx, RootUser, rootPassword); errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		// Left by an earlier attempt or an operator: take it over.
		if _, err := c.UserChangePassword(ctx, RootUser, rootPassword); err != nil {
			return fmt.Errorf("enable auth: set root password: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("enable auth: add root user: %w", err)
	}
	if _, err := c.UserGrantRole(ctx, RootUser, rootRole); err != nil {
		return fmt.Errorf("enable auth: grant root role: %w", err)
	}
	if _, err := c.AuthEnable(ctx); err != nil {
		return fmt.Errorf("enable auth: %w", err)
	}
	return nil
}

// permission is one key range of a role; rangeEnd "" means the single key.
type permission struct {
	key, rangeEnd string
	typ           clientv3.PermissionType
}

// clusterPermissions is what cluster name's role grants: read and write on
// its ClusterKey, OwnedPrefixes and AgentPrefixes, read on everything under
// Root.
func clusterPermissions(name clustermesh.ClusterName) []permission {
	rw := clientv3.PermissionType(clientv3.PermReadWrite)
	perms := []permission{{key: clustermesh.ClusterKey(name), typ: rw}}
	for _, p := range append(clustermesh.OwnedPrefixes(name), clustermesh.AgentPrefixes(name)...) {
		perms = append(perms, permission{key: p, rangeEnd: clientv3.GetPrefixRangeEnd(p), typ: rw})
	}
	return append(perms, permission{
		key:      clustermesh.Root,
		rangeEnd: clientv3.GetPrefixRangeEnd(clustermesh.Root),
		typ:      clientv3.PermissionType(clientv3.PermRead),
	})
}

// grantsLockKey is rewritten with every grant change, so a grant is
// written only if no other changed since the grants it was checked against
// were read.
const grantsLockKey = clustermesh.Root + "grants-lock"

// AddCluster grants cluster g.Name its ID and CIDRs, then makes etcd user
// and role ClusterUser(g.Name) through admin, a client with root
// credentials, and returns the user's credentials.
//
// The grant is stored at clustermesh.GrantKey, which only root may write;
// consumers check every entry of the cluster against it. AddCluster returns
// a *clustermesh.RegistrationError when another cluster's grant holds the
// ID or overlaps the CIDRs: conflicting grants cannot be made.
//
// The role may read and write the cluster's ClusterKey and OwnedPrefixes and
// read everything under clustermesh.Root; etcd refuses any other write.
// AddCluster reconciles: running it again restores the role's permissions
// and the user's role to exactly these, replaces the grant, and rotates the
// password (etcd stores only a hash, so the old one cannot be returned). A
// rotation invalidates the earlier join bundle and the old password's tokens.
//
// The credentials' Endpoints are admin's endpoints and CACertPEM is empty; a
// caller handing them to another cluster sets both to what that cluster
// should use (Broker.AddCluster does this for its own broker).
func AddCluster(ctx context.Context, admin *clientv3.Client, g clustermesh.Grant) (join.Credentials, error) {
	name := g.Name
	if err := name.Validate(); err != nil {
		return join.Credentials{}, fmt.Errorf("add cluster: %w", err)
	}
	if err := writeGrant(ctx, admin, g); err != nil {
		return join.Credentials{}, fmt.Errorf("add cluster %s: %w", name, err)
	}
	if err := ensureRole(ctx, admin, ClusterUser(name), clusterPermissions(name)); err != nil {
		return join.Credentials{}, fmt.Errorf("add cluster %s: %w", name, err)
	}
	user, pw := ClusterUser(name), newPassword()
	if err := ensureUser(ctx, admin, user, pw, user); err != nil {
		return join.Credentials{}, fmt.Errorf("add cluster %s: %w", name, err)
	}
	keys, err := ensureGossipKeys(ctx, admin)
	if err != nil {
		return join.Credentials{}, fmt.Errorf("add cluster %s: %w", name, err)
	}
	return join.Credentials{
		Cluster:    name,
		Endpoints:  admin.Endpoints(),
		Username:   user,
		Password:   pw,
		GossipKeys: keys,
	}, nil
}

// GossipKeySize is the size of a mesh gossip key: AES-256.
const GossipKeySize = join.GossipKeySize

// GossipKeysKey holds the mesh's gossip keys (JSON, base64), outside
// clustermesh.Root so no cluster role can read it: clusters get the keys
// in their credentials.
const GossipKeysKey = "braid-broker/gossip-keys"

// ensureGossipKeys returns the mesh's gossip keys, generating the first one
// if there is none. Concurrent callers agree: the key is created in a
// transaction that only succeeds if the key is still absent.
func ensureGossipKeys(ctx context.Context, admin *clientv3.Client) ([][]byte, error) {
	key := make([]byte, GossipKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generate gossip key: %w", err)
	}
	fresh, err := json.Marshal([][]byte{key})
	if err != nil {
		return nil, err
	}
	resp, err := admin.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(GossipKeysKey), "=", 0)).
		Then(clientv3.OpPut(GossipKeysKey, string(fresh))).
		Else(clientv3.OpGet(GossipKeysKey)).
		Commit()
	if err != nil {
		return nil, fmt.Errorf("gossip keys: %w", err)
	}
	if resp.Succeeded {
		return [][]byte{key}, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) != 1 {
		return nil, fmt.Errorf("gossip keys: %s vanished; run add-cluster again", GossipKeysKey)
	}
	var keys [][]byte
	if err := json.Unmarshal(kvs[0].Value, &keys); err != nil || len(keys) == 0 {
		return nil, fmt.Errorf("gossip keys at %s are malformed (want a JSON list of base64 keys): %v", GossipKeysKey, err)
	}
	for i, k := range keys {
		if len(k) != GossipKeySize {
			return nil, fmt.Errorf("gossip key %d at %s is %d bytes, want %d", i, GossipKeysKey, len(k), GossipKeySize)
		}
	}
	return keys, nil
}

// writeGrant checks g against every other grant and writes it, atomically:
// the write fails and is retried if any grant changed in between.
func writeGrant(ctx context.Context, admin *clientv3.Client, g clustermesh.Grant) error {
	value, err := json.Marshal(&g)
	if err != nil {
		return fmt.Errorf("encode grant: %w", err)
	}
	for range 10 {
		resp, err := admin.Get(ctx, clustermesh.GrantsPrefix, clientv3.WithPrefix())
		if err != nil {
			return fmt.Errorf("read grants: %w", err)
		}
		var existing []clustermesh.Grant
		for _, kv := range resp.Kvs {
			o, err := clustermesh.DecodeGrant(string(kv.Key), kv.Value)
			if err != nil {
				continue // an unreadable grant holds nothing
			}
			existing = append(existing, o)
		}
		if err := clustermesh.CheckGrant(g, existing); err != nil {
			return err
		}
		lock, err := admin.Get(ctx, grantsLockKey)
		if err != nil {
			return fmt.Errorf("read grants: %w", err)
		}
		var lockRev int64
		if len(lock.Kvs) > 0 {
			lockRev = lock.Kvs[0].ModRevision
		}
		if lockRev > resp.Header.Revision {
			continue // a grant changed between the two reads
		}
		txn, err := admin.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(grantsLockKey), "=", lockRev)).
			Then(clientv3.OpPut(g.Key(), string(value)), clientv3.OpPut(grantsLockKey, string(g.Name))).
			Commit()
		if err != nil {
			return fmt.Errorf("write grant: %w", err)
		}
		if txn.Succeeded {
			return nil
		}
	}
	return errors.New("write grant: grants keep changing; try again")
}

// RemoveCluster takes cluster name out of the mesh at once: it revokes the
// leases its keys (its operator's and its agents' node status) are bound to (consumers drop its entries), deletes its
// etcd user and role (its tokens stop working; etcd bumps its auth
// revision) and finally its grant, which makes a Broker end the cluster's
// open watches. Missing pieces are not an error; keys not bound to a lease
// are left in place.
func RemoveCluster(ctx context.Context, admin *clientv3.Client, name clustermesh.ClusterName) error {
	if err := name.Validate(); err != nil {
		return fmt.Errorf("remove cluster: %w", err)
	}
	leases := map[clientv3.LeaseID]bool{}
	for _, p := range append(append(clustermesh.OwnedPrefixes(name), clustermesh.AgentPrefixes(name)...), clustermesh.ClusterKey(name)) {
		// Not WithKeysOnly: etcd answers a keys-only range from its
		// in-memory index, which holds no leases (every Lease is 0).
		resp, err := admin.Get(ctx, p, clientv3.WithPrefix())
		if err != nil {
			return fmt.Errorf("remove cluster %s: list its keys: %w", name, err)
		}
		for _, kv := range resp.Kvs {
			if kv.Lease != 0 {
				leases[clientv3.LeaseID(kv.Lease)] = true
			}
		}
	}
	user := ClusterUser(name)
	if _, err := admin.UserDelete(ctx, user); err != nil && !errors.Is(err, rpctypes.ErrUserNotFound) {
		return fmt.Errorf("remove cluster %s: delete user: %w", name, err)
	}
	if _, err := admin.RoleDelete(ctx, user); err != nil && !errors.Is(err, rpctypes.ErrRoleNotFound) {
		return fmt.Errorf("remove cluster %s: delete role: %w", name, err)
	}
	for id := range leases {
		if _, err := admin.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return fmt.Errorf("remove cluster %s: revoke lease %x: %w", name, id, err)
		}
	}
	if _, err := admin.Txn(ctx).Then(clientv3.OpDelete(clustermesh.GrantKey(name)), clientv3.OpPut(grantsLockKey, string(name))).Commit(); err != nil {
		return fmt.Errorf("remove cluster %s: delete grant: %w", name, err)
	}
	return nil
}

// SyncClusterRoles brings the role of every cluster with a grant to the
// permissions the current key schema gives it (what AddCluster grants), so
// a cluster registered before a kind was added to the schema (such as
// clustermesh.KindServicesV2) may write that kind's prefix and the others
// read it. It changes nothing else: users, passwords and grants stay, and
// a cluster whose role is missing (removed half-way) is left alone. It is
// idempotent: a second call makes no write. It returns the clusters whose
// role it changed. A Broker calls it whenever it starts; for an external
// etcd, `braid broker enable-auth` does.
func SyncClusterRoles(ctx context.Context, admin *clientv3.Client) ([]clustermesh.ClusterName, error) {
	resp, err := admin.Get(ctx, clustermesh.GrantsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("sync cluster roles: read grants: %w", err)
	}
	var changed []clustermesh.ClusterName
	for _, kv := range resp.Kvs {
		name := clustermesh.ClusterName(strings.TrimPrefix(string(kv.Key), clustermesh.GrantsPrefix))
		if name.Validate() != nil {
			continue // not a grant AddCluster wrote; it grants nothing
		}
		role, err := admin.RoleGet(ctx, ClusterUser(name))
		if errors.Is(err, rpctypes.ErrRoleNotFound) {
			continue
		}
		if err != nil {
			return changed, fmt.Errorf("sync cluster roles: get role of cluster %s: %w", name, err)
		}
		n, err := reconcilePermissions(ctx, admin, ClusterUser(name), role.Perm, clusterPermissions(name))
		if err != nil {
			return changed, fmt.Errorf("sync cluster roles: cluster %s: %w", name, err)
		}
		if n > 0 {
			changed = append(changed, name)
		}
	}
	return changed, nil
}

// ensureRole makes role exist with exactly want.
func ensureRole(ctx context.Context, c *clientv3.Client, role string, want []permission) error {
	if _, err := c.RoleAdd(ctx, role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("add role: %w", err)
	}
	resp, err := c.RoleGet(ctx, role)
	if err != nil {
		return fmt.Errorf("get role: %w", err)
	}
	_, err = reconcilePermissions(ctx, c, role, resp.Perm, want)
	return err
}

// reconcilePermissions grants and revokes so that role, which has the
// permissions have, has exactly want. It returns how many it changed.
func reconcilePermissions(ctx context.Context, c *clientv3.Client, role string, haveList []*authpb.Permission, want []permission) (int, error) {
	changes := 0
	type rng struct{ key, end string }
	have := make(map[rng]clientv3.PermissionType, len(haveList))
	for _, p := range haveList {
		have[rng{string(p.Key), string(p.RangeEnd)}] = clientv3.PermissionType(p.PermType)
	}
	wanted := make(map[rng]bool, len(want))
	for _, p := range want {
		r := rng{p.key, p.rangeEnd}
		wanted[r] = true
		if t, ok := have[r]; ok && t == p.typ {
			continue
		}
		if _, err := c.RoleGrantPermission(ctx, role, p.key, p.rangeEnd, p.typ); err != nil {
			return changes, fmt.Errorf("grant %q: %w", p.key, err)
		}
		changes++
	}
	for r := range have {
		if wanted[r] {
			continue
		}
		if _, err := c.RoleRevokePermission(ctx, role, r.key, r.end); err != nil {
			return changes, fmt.Errorf("revoke %q: %w", r.key, err)
		}
		changes++
	}
	return changes, nil
}

// ensureUser makes user exist with password and role as its only role.
func ensureUser(ctx context.Context, c *clientv3.Client, user, password, role string) error {
	if _, err := c.UserAdd(ctx, user, password); errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		if _, err := c.UserChangePassword(ctx, user, password); err != nil {
			return fmt.Errorf("change password: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("add user: %w", err)
	}
	resp, err := c.UserGet(ctx, user)
	if err != nil {
		return fmt.Errorf("get user: %w", err)
	}
	granted := false
	for _, r := range resp.Roles {
		if r == role {
			granted = true
			continue
		}
		if _, err := c.UserRevokeRole(ctx, user, r); err != nil {
			return fmt.Errorf("revoke role %s: %w", r, err)
		}
	}
	if !granted {
		if _, err := c.UserGrantRole(ctx, user, role); err != nil {
			return fmt.Errorf("grant role: %w", err)
		}
	}
	return nil
}
