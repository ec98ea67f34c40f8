package k8s

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// The mcs-api fake clientset predates streaming lists: without this,
	// its informers wait 10s for a bookmark before falling back to a list.
	// Real apiservers are unaffected.
	os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	os.Exit(m.Run())
}
