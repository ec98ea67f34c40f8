// Command etcd is a plain etcd server built from the etcd version in this
// module's go.mod, for the kube-apiserver of test lab clusters. It takes etcd's
// own flags.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
