"""Where etcd snapshots leave the controllers: a GCS bucket, and the one identity that may write to it."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_gcp import serviceaccount, storage

from components.config import ClusterConfig

# Objects older than this are deleted by the bucket itself; each controller keeps its newest
# snapshots on its etcd disk as well (etcd.BACKUP_KEEP).
BUCKET_RETENTION_DAYS = 30
# objectCreator: create objects, nothing else (no read, list, overwrite or delete), on this bucket only.
WRITER_ROLE = "roles/storage.objectCreator"


def bucket_import_id(config: ClusterConfig) -> str | None:
    """The ID the provider imports an existing bucket by (PROJECT/NAME), if kthw:etcdBackupBucketImport asks for it."""
    if not config.etcd_backup_bucket_import or not config.etcd_backup_bucket:
        return None
    return f"{config.project}/{config.etcd_backup_bucket}" if config.project else config.etcd_backup_bucket


@dataclass(frozen=True)
class EtcdBackupStoreArgs:
    """The config names the bucket (kthw:etcdBackupBucket)."""

    config: ClusterConfig


class EtcdBackupStore(pulumi.ComponentResource):
    """The snapshot bucket and the controllers' service account, allowed to create objects in it and nothing more."""

    def __init__(self, name: str, args: EtcdBackupStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:EtcdBackupStore", name, None, opts)
        cfg = args.config
        if not cfg.etcd_backup_bucket:
            raise ValueError("EtcdBackupStore needs kthw:etcdBackupBucket")
        # Retained on delete: the snapshots are what you restore from after losing the cluster,
        # so `pulumi destroy` leaves the bucket (and its objects) in the project. Bucket names are
        # global, so the next `up` with the same name would fail creating it ("you already own
        # it"): kthw:etcdBackupBucketImport adopts the kept bucket instead. An explicit switch, not
        # an automatic lookup: adopting whatever bucket holds the name could take over another
        # stack's snapshots, and a bucket that is not there should fail loudly, not be created.
        self.bucket = storage.Bucket(
            f"{name}-bucket",
            name=cfg.etcd_backup_bucket,
            location=cfg.region.upper(),
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            lifecycle_rules=[{"action": {"type": "Delete"}, "condition": {"age": BUCKET_RETENTION_DAYS}}],
            opts=pulumi.ResourceOptions(
                parent=self, delete_before_replace=True, retain_on_delete=True, import_=bucket_import_id(cfg)
            ),
        )
        # The controllers run as this account instead of the project's default compute account
        # (which often holds Editor on the whole project).
        self.account = serviceaccount.Account(
            f"{name}-controllers",
            account_id=cfg.names.backup_account,
            display_name="kthw controllers (etcd snapshot upload)",
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.writer = storage.BucketIAMMember(
            f"{name}-writer",
            bucket=self.bucket.name,
            role=WRITER_ROLE,
            member=pulumi.Output.concat("serviceAccount:", self.account.email),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.service_account_email: pulumi.Output[str] = self.account.email
        self.register_outputs({"bucket": self.bucket.name, "service_account": self.account.email})
