"""kthw: Kubernetes The Hard Way as one Pulumi program, on Google Cloud, on your machines or on local VMs."""

import pulumi

import platforms
from components import config, rollout
from components.cluster import Cluster, ClusterArgs

cluster_config = config.from_stack()
if warning := config.even_controller_warning(cluster_config):
    pulumi.log.warn(warning)

platform = platforms.choose(cluster_config)
fingerprints = platform.fingerprints(cluster_config)
# Against the last update: warn when controllers will be replaced, refuse too large a shrink.
rollout.check_previous(cluster_config, fingerprints)
cluster = Cluster("kthw", ClusterArgs(cluster_config, platform.build))

pulumi.export("kubernetes_public_address", cluster.public_address)
pulumi.export("admin_kubeconfig", cluster.admin_kubeconfig)
pulumi.export("ca_certificate", cluster.ca_certificate)
pulumi.export("controllers", cluster.node_addresses(cluster.controllers))
pulumi.export("workers", cluster.node_addresses(cluster.workers))
pulumi.export("ssh_private_key", cluster.ssh_private_key)
pulumi.export(rollout.FINGERPRINTS_OUTPUT, fingerprints)
