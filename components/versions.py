"""Default component versions; the Pulumi.yaml defaults and the pinned digests follow them."""

KUBERNETES = "1.36.4"
ETCD = "3.6.14"
CONTAINERD = "2.3.4"
RUNC = "1.4.3"
CNI = "1.9.1"
CRICTL = "1.36.0"
# The metrics-server add-on (kthw:metricsServer); its image is registry.k8s.io's release of this tag.
METRICS_SERVER = "0.8.1"
