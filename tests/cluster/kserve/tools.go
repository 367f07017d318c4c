//go:build tools

// KServe's manager, built by tests/cluster/build from this module's requirements: its own
// module graph (other k8s library versions than ../go.mod), and `go install pkg@version` needs
// a version list the module proxy here does not serve.
package kserve

import (
	_ "github.com/kserve/kserve/cmd/manager"
)
