"""kthw: Kubernetes The Hard Way on Google Cloud, as one Pulumi program."""

import pulumi

from components import config, rollout
from components.cluster import Cluster, ClusterArgs

cluster_config = config.from_stack()
if warning := config.even_controller_warning(cluster_config):
    pulumi.log.warn(warning)

# Against the last update: warn when controllers will be replaced, refuse too large a shrink.
rollout.check_previous(cluster_config)
cluster = Cluster("kthw", ClusterArgs(cluster_config))

pulumi.export("kubernetes_public_address", cluster.public_address)
pulumi.export("admin_kubeconfig", cluster.admin_kubeconfig)
pulumi.export("ca_certificate", cluster.ca_certificate)
pulumi.export("controllers", cluster.node_addresses(cluster.controllers))
pulumi.export("workers", cluster.node_addresses(cluster.workers))
pulumi.export("ssh_private_key", cluster.ssh_private_key)
pulumi.export(rollout.FINGERPRINTS_OUTPUT, rollout.fingerprints(cluster_config))
