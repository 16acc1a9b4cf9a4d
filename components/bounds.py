"""How long every remote wait may last: the bounds each rendered script enforces on itself.

pulumi-command does not stop a remote script when a resource's custom timeout expires (the
timeout bounds the SSH dial, not the command), so a script that waits forever hangs `pulumi up`
forever. Every wait in a script is therefore bounded here, and each script fails on its own with
a message naming node and step before the engine's timeout would fire.
"""

from __future__ import annotations

from dataclasses import dataclass

# The engine's custom timeouts for one bootstrap step and for a node's SSH gate, in seconds.
STEP_TIMEOUT_SECONDS = 20 * 60
SSH_READY_TIMEOUT_SECONDS = 15 * 60

# cloud-init on a fresh GCE image finishes in about a minute; ten is a broken image, not a slow one.
CLOUD_INIT_TIMEOUT_SECONDS = 600

# apt-get: wait this long for the dpkg lock (unattended-upgrades on a fresh VM), give one call at
# most the second bound (its downloads included), and try this many times with a growing pause.
APT_LOCK_TIMEOUT_SECONDS = 240
APT_CALL_TIMEOUT_SECONDS = 300
APT_ATTEMPTS = 3

# systemctl waits for the job it queues; stop and start each time out after 90 s by default
# (etcd's start is queued with --no-block), so a call that outlives this is systemd itself stuck.
SYSTEMCTL_TIMEOUT_SECONDS = 240

# One kubectl request on a controller or worker; a watch that waits on purpose (rollout status)
# gets its own wait on top of this.
KUBECTL_CALL_TIMEOUT_SECONDS = 30
# etcdctl's own dial and command timeouts are short; this bounds the process as a whole.
ETCDCTL_TIMEOUT_SECONDS = 30
# An etcd snapshot streams the whole database (etcdctl's command timeout is 120 s for it).
ETCD_SNAPSHOT_TIMEOUT_SECONDS = 150

# How long an add-on's `kubectl apply` is retried while a fresh API server settles (RBAC bootstrap).
APPLY_RETRY_SECONDS = 150
# How long a controller waits for its services and its API's /healthz and /readyz, a worker for
# its services and its Node's Ready, CoreDNS for its rollout, and the smoke test for each check.
CONTROL_PLANE_HEALTH_SECONDS = 300
WORKER_READY_SECONDS = 300
DNS_ROLLOUT_SECONDS = 300
SMOKE_CHECK_SECONDS = 300
# The load balancer needs a few health-check intervals before it sends traffic to a new backend.
PUBLIC_PROBE_SECONDS = 300

# A worker's turn in a rolling change: `kubectl drain` may take this long (evictions honour
# PodDisruptionBudgets and wait for replacements elsewhere) before the step fails naming the pods.
DRAIN_SECONDS = 300
# An upgrade slot (a Lease) expires this long after it was taken: a whole turn (drain, the service
# restarts, the ready wait) ends well within it. A worker waiting for a slot gives up when no slot
# changed hands for this long, and a dead holder's slot is taken over after it, never while the
# holder is still cordoned by the program.
WORKER_TURN_SECONDS = 15 * 60
# The whole wait for a slot, while slots keep changing hands (the turns of the workers ahead); not
# a function of the worker count, so adding a worker changes no other worker's steps.
WORKER_SLOT_WAIT_SECONDS = 12 * 60 * 60
# How long a controller waits, after its control plane is healthy, for the load balancer's health
# check to have seen it healthy long enough to send it traffic again.
IN_SERVICE_SECONDS = 300

# The controller manager's and the scheduler's leader election (Kubernetes' own defaults): the lease
# lasts this long, its holder must renew it within the deadline, and candidates retry this often.
LEADER_LEASE_SECONDS = 15
LEADER_RENEW_SECONDS = 10
LEADER_RETRY_SECONDS = 2

# A node's pace: how many times the bounds above its scripts may take. 1 on GCE and on machines a
# user lists; the local platform's VMs under software emulation (TCG) run everything, kubectl's own
# start included, several times slower, and there a cloud's bounds fail a healthy cluster.
CLOUD_PACE = 1
EMULATED_PACE = 4


@dataclass(frozen=True)
class Curl:
    """curl's bounds: connect, one attempt as a whole, and bounded retries of transient failures."""

    connect_timeout: int = 10
    # One attempt at the largest artifact (kube-apiserver, ~90 MB) at a slow 0.3 MB/s; a server that
    # accepts and never answers costs this per attempt.
    max_time: int = 300
    retries: int = 2
    retry_delay: int = 5

    def template_values(self) -> dict[str, int]:
        """The values a script template's curl_* placeholders take."""
        return {
            "curl_connect_timeout": self.connect_timeout,
            "curl_max_time": self.max_time,
            "curl_retries": self.retries,
            "curl_retry_delay": self.retry_delay,
        }

    @property
    def worst_case_seconds(self) -> int:
        """The longest one call can take: every attempt times out, with the pauses between them."""
        return (self.retries + 1) * self.max_time + self.retries * self.retry_delay


CURL = Curl()
# The public probe's single request: the API answers /version at once or not at all; the probe's
# own deadline (PUBLIC_PROBE_SECONDS) covers the retries.
PROBE_CURL = Curl(connect_timeout=5, max_time=10, retries=0, retry_delay=0)


def apt_values(*, timeout: int = APT_CALL_TIMEOUT_SECONDS, attempts: int = APT_ATTEMPTS) -> dict[str, int]:
    """The values a script template's apt_* placeholders take (tests pass short ones)."""
    return {
        "apt_attempts": attempts,
        "apt_timeout": timeout,
        "apt_lock_timeout": min(APT_LOCK_TIMEOUT_SECONDS, timeout),
    }


def duration(seconds: int) -> str:
    """A Pulumi custom-timeout string (a Go duration) for `seconds`: "20m", or "90s"."""
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"
