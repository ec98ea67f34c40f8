package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/braidmesh/braid/clustermesh"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// RootUser is etcd's superuser, whose role ("root") etcd requires before it
// enables authentication.
const RootUser = "root"

const rootRole = "root"

// ClusterUser is the etcd user and role name of cluster name.
func ClusterUser(name clustermesh.ClusterName) string { return "cluster-" + string(name) }

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
// its ClusterKey and OwnedPrefixes, read on everything under Root.
func clusterPermissions(name clustermesh.ClusterName) []permission {
	rw := clientv3.PermissionType(clientv3.PermReadWrite)
	perms := []permission{{key: clustermesh.ClusterKey(name), typ: rw}}
	for _, p := range clustermesh.OwnedPrefixes(name) {
		perms = append(perms, permission{key: p, rangeEnd: clientv3.GetPrefixRangeEnd(p), typ: rw})
	}
	return append(perms, permission{
		key:      clustermesh.Root,
		rangeEnd: clientv3.GetPrefixRangeEnd(clustermesh.Root),
		typ:      clientv3.PermissionType(clientv3.PermRead),
	})
}

// AddCluster makes etcd user and role ClusterUser(name) through admin, a
// client with root credentials, and returns the user's credentials.
//
// The role may read and write name's ClusterKey and OwnedPrefixes and read
// everything under clustermesh.Root; etcd refuses any other write. AddCluster
// reconciles: running it again restores the role's permissions and the user's
// role to exactly these, and rotates the password (etcd stores only a hash, so
// the old one cannot be returned). A rotation invalidates the earlier join
// bundle and the old password's tokens.
//
// The credentials' Endpoints are admin's endpoints and CACertPEM is empty; a
// caller handing them to another cluster sets both to what that cluster
// should use (Broker.AddCluster does this for its own broker).
func AddCluster(ctx context.Context, admin *clientv3.Client, name clustermesh.ClusterName) (Credentials, error) {
	if err := name.Validate(); err != nil {
		return Credentials{}, fmt.Errorf("add cluster: %w", err)
	}
	if err := ensureRole(ctx, admin, ClusterUser(name), clusterPermissions(name)); err != nil {
		return Credentials{}, fmt.Errorf("add cluster %s: %w", name, err)
	}
	user, pw := ClusterUser(name), newPassword()
	if err := ensureUser(ctx, admin, user, pw, user); err != nil {
		return Credentials{}, fmt.Errorf("add cluster %s: %w", name, err)
	}
	return Credentials{
		Cluster:   name,
		Endpoints: admin.Endpoints(),
		Username:  user,
		Password:  pw,
	}, nil
}

// RemoveCluster deletes cluster name's etcd user and role; its tokens stop
// working at once. Missing ones are not an error. The cluster's keys are left
// in place.
func RemoveCluster(ctx context.Context, admin *clientv3.Client, name clustermesh.ClusterName) error {
	if err := name.Validate(); err != nil {
		return fmt.Errorf("remove cluster: %w", err)
	}
	user := ClusterUser(name)
	if _, err := admin.UserDelete(ctx, user); err != nil && !errors.Is(err, rpctypes.ErrUserNotFound) {
		return fmt.Errorf("remove cluster %s: delete user: %w", name, err)
	}
	if _, err := admin.RoleDelete(ctx, user); err != nil && !errors.Is(err, rpctypes.ErrRoleNotFound) {
		return fmt.Errorf("remove cluster %s: delete role: %w", name, err)
	}
	return nil
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
	type rng struct{ key, end string }
	have := make(map[rng]clientv3.PermissionType, len(resp.Perm))
	for _, p := range resp.Perm {
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
			return fmt.Errorf("grant %q: %w", p.key, err)
		}
	}
	for r := range have {
		if wanted[r] {
			continue
		}
		if _, err := c.RoleRevokePermission(ctx, role, r.key, r.end); err != nil {
			return fmt.Errorf("revoke %q: %w", r.key, err)
		}
	}
	return nil
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
