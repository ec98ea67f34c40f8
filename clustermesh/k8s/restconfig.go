package k8s

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// RESTConfig returns the client config for a kubeconfig file or, with
// inCluster, the pod's service account; nil when neither is asked for.
func RESTConfig(path string, inCluster bool) (*rest.Config, error) {
	switch {
	case path != "" && inCluster:
		return nil, fmt.Errorf("--kubeconfig and --in-cluster are exclusive")
	case inCluster:
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("--in-cluster: %w", err)
		}
		return c, nil
	case path != "":
		c, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", path, err)
		}
		return c, nil
	}
	return nil, nil
}
