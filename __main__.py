"""kthw: Kubernetes The Hard Way on Google Cloud, as one Pulumi program."""

import pulumi

from components import config
from components.cluster import Cluster, ClusterArgs

cluster_config = config.from_stack()
if warning := config.even_controller_warning(cluster_config):
    pulumi.log.warn(warning)

cluster = Cluster("kthw", ClusterArgs(cluster_config))

pulumi.export("kubernetes_public_address", cluster.public_address)
pulumi.export("admin_kubeconfig", cluster.admin_kubeconfig)
pulumi.export("ca_certificate", cluster.ca_certificate)
pulumi.export("controllers", cluster.node_addresses(cluster.controllers))
pulumi.export("workers", cluster.node_addresses(cluster.workers))
pulumi.export("ssh_private_key", cluster.ssh_private_key)
