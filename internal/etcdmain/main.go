// Command etcdmain is a plain etcd server, built from the etcd version in
// go.mod. Tests use it to run real multi-member etcd clusters as separate
// processes; it takes etcd's own flags.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
