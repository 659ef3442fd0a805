"""The virtual network the cluster and the MLflow database share.

Two subnets: the AKS nodes (pods get overlay addresses, so a /22 is plenty) and one delegated to
PostgreSQL Flexible Server, which then has a private address only (public access disabled).
"""

from __future__ import annotations

import ipaddress

import pulumi
from pulumi_azure_native import network

POSTGRES_DELEGATION = "Microsoft.DBforPostgreSQL/flexibleServers"
# The cluster's overlay pod range and its service range (infra/cluster.py): the VNet must not overlap them.
AKS_POD_CIDR = "192.168.0.0/16"
AKS_SERVICE_CIDR = "10.0.0.0/16"
AKS_DNS_SERVICE_IP = "10.0.0.10"


def subnet_prefixes(vnet_cidr: str) -> tuple[str, str]:
    """(nodes, postgres) subnet prefixes carved from the start of the VNet range."""
    vnet = ipaddress.ip_network(vnet_cidr)
    if vnet.prefixlen > 21:
        raise ValueError(f"vnetCidr {vnet_cidr} is too small: use a /21 or larger (e.g. 10.20.0.0/16)")
    nodes = next(vnet.subnets(new_prefix=22))
    postgres = list(vnet.subnets(new_prefix=24))[4]  # the /24 right after the nodes /22
    return str(nodes), str(postgres)


class Network(pulumi.ComponentResource):
    """VNet + node subnet + PostgreSQL-delegated subnet."""

    vnet_id: pulumi.Output[str]
    node_subnet_id: pulumi.Output[str]
    postgres_subnet_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        resource_group_name: pulumi.Input[str],
        location: str,
        vnet_cidr: str,
        tags: dict[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("ml-delivery:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        nodes_prefix, postgres_prefix = subnet_prefixes(vnet_cidr)
        vnet = network.VirtualNetwork(
            f"{name}-vnet",
            resource_group_name=resource_group_name,
            location=location,
            address_space={"address_prefixes": [vnet_cidr]},
            tags=tags,
            # Subnets are their own resources below; without this the VNet would fight them.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["subnets"]),
        )
        nodes = network.Subnet(
            f"{name}-nodes",
            resource_group_name=resource_group_name,
            virtual_network_name=vnet.name,
            address_prefix=nodes_prefix,
            opts=child,
        )
        postgres = network.Subnet(
            f"{name}-postgres",
            resource_group_name=resource_group_name,
            virtual_network_name=vnet.name,
            address_prefix=postgres_prefix,
            delegations=[{"name": "postgres", "service_name": POSTGRES_DELEGATION}],
            # Azure updates one subnet of a VNet at a time.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[nodes]),
        )
        self.vnet_id = vnet.id
        self.node_subnet_id = nodes.id
        self.postgres_subnet_id = postgres.id
        self.register_outputs({"vnetId": vnet.id, "nodeSubnetId": nodes.id, "postgresSubnetId": postgres.id})
