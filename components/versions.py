"""Default component versions; the Pulumi.yaml defaults and the pinned digests follow them."""

KUBERNETES = "1.36.4"
ETCD = "3.6.14"
CONTAINERD = "2.3.4"
RUNC = "1.4.3"
CNI = "1.9.1"
CRICTL = "1.36.0"
# The metrics-server add-on (kthw:metricsServer, kthw:metricsServerVersion): registry.k8s.io's image of
# this release, pulled by the digest images.PINNED holds. 0.8.1 only rebuilds 0.8.0 with newer Go and
# Kubernetes libraries (its release notes), so it stays the default although the Go module proxy serves
# 0.8.0 and not 0.8.1: the local cloud builds 0.8.0 and sets that version (as it starts Kubernetes a
# patch behind), and users pulling from registry.k8s.io get the fixed release.
METRICS_SERVER = "0.8.1"
