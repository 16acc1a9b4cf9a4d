"""The local cloud's network plane: GCE firewall rules as nftables, routes, and target-pool load balancers as haproxy.

Everything happens inside the namespace of tests/localcloud/net.py, which acts as the VPC: its
bridge is the subnet, its routing table the VPC's routes, and it is the "internet" the admin and
GCE's health checkers come from. `apply` converges the namespace to exactly what the gcp backend's
resources say (a full resync, so it is idempotent and removes what is gone); `leftovers` lists
whatever of it is still there, so a destroyed stack can be checked to leave nothing behind.

The host kernel has no nf_conntrack_bridge (nft's `ct` in the bridge family fails with EPROTO),
so the firewall is stateful through br_netfilter: bridged IPv4 passes the `ip` family's forward
hook with conntrack. The bridge family only marks each frame with the instance behind the bridge
port it leaves by, which is how GCE matches ingress: by instance, whatever the destination IP.
Routed packets (pods' traffic through the VPC's routes) and the namespace's own (the admin, the
health checker, the proxy) are matched by their next hop, which is the instance's address.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.localcloud.net import BRIDGE

TABLE = "kthw_plane"  # family ip: the firewall, the LB's NAT and the transparent proxy's mark
PORT_TABLE = "kthw_plane_ports"  # family bridge: which instance a frame is delivered to
# The admin's "internet" address (TEST-NET-1) and a GCE legacy health checker's (in 35.191.0.0/16,
# a range both GCE's docs and the program's allow-health-check rule name).
ADMIN_SOURCE = "192.0.2.10"
HEALTH_CHECK_SOURCE = "35.191.0.10"
# What the namespace reaches as the internet would: instances' NAT IPs and static addresses.
EXTERNAL_RANGES = ("198.51.100.0/24", "203.0.113.0/24")
ROUTE_PROTOCOL = "99"  # marks the routes this plane owns, so a resync finds and removes stale ones
LB_LABEL = f"{BRIDGE}:lb"  # marks the forwarding rules' addresses on the bridge
# Replies to the proxy's transparent (client-sourced) connections go to the local socket.
TPROXY_MARK = 0x10000
TPROXY_TABLE = "100"
INSTANCE_MARK_MASK = 0xFFFF
HAPROXY_CONFIG = "haproxy.cfg"
HAPROXY_PID = "haproxy.pid"
HAPROXY_LOG = "haproxy.log"
# How long haproxy may take to start or reload a worker: generous, CI shares two cores with VMs.
START_TIMEOUT = 30
TEMPLATES = Path(__file__).parent / "templates"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")
# GCE's legacy HTTP health check defaults (compute.HttpHealthCheck).
CHECK_DEFAULTS = {"checkIntervalSec": 5, "timeoutSec": 5, "healthyThreshold": 2, "unhealthyThreshold": 2}
DEFAULT_PRIORITY = 1000  # of firewall rules and routes alike


@dataclass(frozen=True)
class Port:
    """One instance's NIC on the bridge: the bridge port it hangs off, its tags and both addresses."""

    instance: str
    bridge_port: str
    tags: tuple[str, ...]
    internal_ip: str
    external_ip: str


def _render(name: str, **values: object) -> str:
    """templates/<name> with `{{ key }}` placeholders filled; a missing or unused value raises KeyError."""
    text = (TEMPLATES / name).read_text()
    wanted = set(_PLACEHOLDER.findall(text))
    if wanted != values.keys():
        raise KeyError(
            f"template {name}: missing {sorted(wanted - values.keys())}, unused {sorted(values.keys() - wanted)}"
        )
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def _last(ref: str) -> str:
    """A resource's name from a name, "ZONE/NAME" or a self link."""
    return ref.rstrip("/").rsplit("/", 1)[-1]


def _of_kind(resources: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """Inputs of each resource of `kind`, by name."""
    prefix = f"{kind}/"
    return {
        key[len(prefix) :]: dict(rec.get("inputs") or {}) for key, rec in resources.items() if key.startswith(prefix)
    }


def _chain(instance: str) -> str:
    return "to_" + re.sub(r"[^A-Za-z0-9_]", "_", instance)


def _set(items: Iterable[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def _cidrs(ranges: Iterable[str]) -> list[str]:
    """Source ranges as nft set elements: collapsed, since an anonymous set rejects overlapping intervals."""
    nets = [ipaddress.ip_network(r, strict=False) for r in ranges]
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    return [str(n) for n in ipaddress.collapse_addresses(v4)]


def _protocol_matches(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """GCE's [{protocol, ports}] as nft matches, one per entry; "" matches every packet ("all")."""
    out = []
    for entry in entries:
        protocol = str(entry.get("protocol", "")).lower()
        ports = [str(p) for p in entry.get("ports") or []]
        if protocol == "all":
            out.append("")
            continue
        if not protocol:
            raise ValueError(f"a firewall entry without a protocol: {entry}")
        match = f"meta l4proto {protocol}"
        if ports:
            if protocol not in {"tcp", "udp", "sctp", "6", "17", "132"}:
                raise ValueError(f"ports given for protocol {protocol}, which has none")
            match += f" th dport {_set(ports)}"
        out.append(match)
    return out


def _source_matches(inputs: Mapping[str, Any], ports: Sequence[Port]) -> list[str]:
    """A rule's sources as nft matches: source ranges OR the internal IPs of instances with a source tag."""
    ranges = list(inputs.get("sourceRanges") or [])
    tags = set(inputs.get("sourceTags") or [])
    if not ranges and not tags:
        return [""]  # GCE: an ingress rule without a source applies to 0.0.0.0/0
    out = []
    if ranges:
        out.append(f"ip saddr {_set(_cidrs(ranges))}")
    tagged = sorted({p.internal_ip for p in ports if tags & set(p.tags)}, key=ipaddress.ip_address)
    if tagged:
        out.append(f"ip saddr {_set(tagged)}")
    return out


def _applies(inputs: Mapping[str, Any], port: Port) -> bool:
    targets = set(inputs.get("targetTags") or [])
    return not targets or bool(targets & set(port.tags))


def firewall_rules(resources: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The enabled ingress rules in GCE's evaluation order: lowest priority number first, deny before allow."""
    rules = []
    for name, inputs in _of_kind(resources, "firewall").items():
        if inputs.get("disabled"):
            continue
        direction = str(inputs.get("direction") or "INGRESS").upper()
        if direction != "INGRESS":
            raise ValueError(f"firewall {name}: only INGRESS rules are modelled (GCE's implied egress allows all)")
        if (
            inputs.get("sourceServiceAccounts")
            or inputs.get("targetServiceAccounts")
            or inputs.get("destinationRanges")
        ):
            raise ValueError(f"firewall {name}: service accounts and destination ranges are not modelled")
        rules.append((name, inputs))
    return sorted(
        rules, key=lambda r: (int(r[1].get("priority", DEFAULT_PRIORITY)), 0 if r[1].get("denies") else 1, r[0])
    )


def _instance_chain(
    port: Port, rules: Sequence[tuple[str, dict[str, Any]]], ports: Sequence[Port], forwards: bool
) -> list[str]:
    lines = [f"  chain {_chain(port.instance)} {{"]
    if not forwards:
        # GCE drops packets for an address the instance does not own unless canIpForward is set.
        owned = [a for a in (port.internal_ip, port.external_ip) if a]
        lines.append(f'    ip daddr != {_set(owned)} counter drop comment "{port.instance}: canIpForward is off"')
    for name, inputs in rules:
        if not _applies(inputs, port):
            continue
        verdict, entries = (
            ("drop", inputs["denies"]) if inputs.get("denies") else ("accept", inputs.get("allows") or [])
        )
        for source in _source_matches(inputs, ports):
            for proto in _protocol_matches(entries):
                match = " ".join(m for m in (source, proto) if m)
                lines.append(f'    {match + " " if match else ""}counter {verdict} comment "{name}"')
    lines.append('    counter drop comment "implied deny ingress"')
    lines.append("  }")
    return lines


def _lb_addresses(resources: Mapping[str, Any]) -> list[str]:
    return sorted(
        {str(i["ipAddress"]) for i in _of_kind(resources, "forwardingRule").values()}, key=ipaddress.ip_address
    )


def render_ruleset(resources: Mapping[str, Any], ports: Sequence[Port]) -> str:
    """The nft script that replaces this plane's tables with what `resources` say (pure).

    Both tables are declared, deleted and re-made in one transaction, so `nft -f` applies it
    atomically and re-applying it changes nothing. With no instance and no load balancer it only
    deletes them.
    """
    ports = sorted(ports, key=lambda p: p.instance)
    lbs = _lb_addresses(resources)
    out = [
        f"table ip {TABLE} {{}}",
        f"delete table ip {TABLE}",
        f"table bridge {PORT_TABLE} {{}}",
        f"delete table bridge {PORT_TABLE}",
    ]
    if not ports and not lbs:
        return "\n".join(out) + "\n"
    rules = firewall_rules(resources)
    instances = _of_kind(resources, "instance")
    mark = {p.instance: i + 1 for i, p in enumerate(ports)}
    by_mark = [f"{mark[p.instance]:#x} : jump {_chain(p.instance)}" for p in ports]
    by_address = [f"{a} : jump {_chain(p.instance)}" for p in ports for a in (p.internal_ip, p.external_ip) if a]

    out.append(f"table bridge {PORT_TABLE} {{")
    out.append("  chain forward {")
    # Before br_netfilter hands the frame to the ip family's hooks (bridge priority 0).
    out.append("    type filter hook forward priority -200; policy accept;")
    if ports:
        marks = _set(f'"{p.bridge_port}" : {mark[p.instance]:#x}' for p in ports)
        out.append(f"    meta mark set oifname map {marks}")
    out.append("  }")
    out.append("}")

    out.append(f"table ip {TABLE} {{")
    for port in ports:
        # GCE's default is off; a port with no instance record (a bare test node) forwards.
        forwards = bool(instances[port.instance].get("canIpForward", False)) if port.instance in instances else True
        out.extend(_instance_chain(port, rules, ports, forwards))
    # Between instances (bridged, marked by port) and routed through the VPC router (by next hop).
    out.append("  chain forward {")
    out.append("    type filter hook forward priority filter; policy accept;")
    out.append("    ct state established,related accept")
    if ports:
        out.append(f"    meta mark and {INSTANCE_MARK_MASK:#x} vmap {_set(by_mark)}")
        out.append(f"    rt ip nexthop vmap {_set(by_address)}")
    out.append("  }")
    # From the namespace: the admin, the health checker and the proxy's backend connections.
    out.append("  chain output {")
    out.append("    type filter hook output priority filter; policy accept;")
    out.append(f'    oifname "{BRIDGE}" ct state established,related accept')
    if ports:
        out.append(f'    oifname "{BRIDGE}" rt ip nexthop vmap {_set(by_address)}')
    out.append("  }")
    if lbs:
        # Replies to the proxy's client-sourced connections belong to its local socket.
        out.append("  chain transparent {")
        out.append("    type filter hook prerouting priority mangle; policy accept;")
        out.append(f"    meta l4proto tcp socket transparent 1 meta mark set meta mark or {TPROXY_MARK:#x}")
        out.append("  }")
        nat = [f"{p.internal_ip} : {p.external_ip}" for p in ports if p.external_ip]
        if nat:
            # GCE's 1:1 NAT: an instance reaching the public address does so from its external IP.
            out.append("  chain lb_nat {")
            out.append("    type nat hook input priority 100; policy accept;")
            out.append(f"    ip daddr {_set(lbs)} snat ip to ip saddr map {_set(nat)}")
            out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def _check(resources: Mapping[str, Any], pool: Mapping[str, Any], address: str) -> tuple[str, str]:
    """The backend's check lines and each server's check options, from the pool's legacy HTTP check."""
    refs = pool.get("healthChecks") or []
    names = [_last(r) for r in ([refs] if isinstance(refs, str) else refs)]
    checks = _of_kind(resources, "httpHealthCheck")
    found = [checks[n] for n in names if n in checks]
    if not found:
        return "    # no health check: GCE sends to every instance of the pool", ""
    c = {**CHECK_DEFAULTS, **{k: v for k, v in found[0].items() if v is not None}}
    # GCE's defaults: path "/", and the Host header is the public IP the check is done for.
    path, host = c.get("requestPath") or "/", c.get("host") or address
    lines = [
        "    option httpchk",
        f"    http-check send meth GET uri {path} ver HTTP/1.1 hdr Host {host}",
        "    http-check expect status 200",
        f"    timeout check {int(c['timeoutSec'])}s",
    ]
    interval, rise, fall = int(c["checkIntervalSec"]), int(c["healthyThreshold"]), int(c["unhealthyThreshold"])
    options = f" check port {int(c.get('port', 80))} inter {interval}s rise {rise} fall {fall} disabled"
    return "\n".join(lines), options


def _ports_of(range_: str) -> str:
    low, _, high = str(range_).partition("-")
    return low if not high or high == low else f"{low}-{high}"


def render_haproxy(
    resources: Mapping[str, Any], ports: Sequence[Port], workdir: Path = Path("/run/kthw-plane")
) -> str | None:
    """haproxy's config for every forwarding rule -> target pool -> health check (pure); None when there is none.

    Checked servers start `disabled`: `apply` enables each as unhealthy (or as it was before a
    reload) through the admin socket in `workdir`, since haproxy 2.6 would count it up at once.
    """
    rules = _of_kind(resources, "forwardingRule")
    if not rules:
        return None
    pools = _of_kind(resources, "targetPool")
    internal = {p.instance: p.internal_ip for p in ports}
    for name, inputs in _of_kind(resources, "instance").items():
        nics = inputs.get("networkInterfaces") or [{}]
        if name not in internal and nics[0].get("networkIp"):
            internal[name] = str(nics[0]["networkIp"])
    blocks = []
    for name, rule in sorted(rules.items()):
        protocol = str(rule.get("ipProtocol") or "TCP").upper()
        if protocol != "TCP":
            raise ValueError(f"forwarding rule {name}: only TCP is modelled, not {protocol}")
        pool_name = _last(str(rule["target"]))
        pool = pools.get(pool_name)
        if pool is None:
            raise ValueError(f"forwarding rule {name}: target pool {pool_name} does not exist")
        check, options = _check(resources, pool, str(rule["ipAddress"]))
        members = [_last(m) for m in pool.get("instances") or []]
        # No port on a server: the connection keeps the port the client used, as with GCE.
        servers = [f"    server {m} {internal[m]}{options}" for m in members if m in internal]
        blocks.append(
            _render(
                "haproxy-pool.cfg",
                rule=name,
                pool=pool_name,
                binds=f"{rule['ipAddress']}:{_ports_of(rule.get('portRange') or '1-65535')}",
                check_source=HEALTH_CHECK_SOURCE,
                check=check,
                servers="\n".join(servers) or "    # no member exists",
            )
        )
    return _render("haproxy.cfg", pools="".join(blocks), socket=_socket(workdir))


def _tool(name: str) -> str:
    """A tool's path; Debian keeps nft, haproxy and sysctl in sbin, which a plugin's PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin") or name


def _socket(workdir: Path) -> Path:
    """The admin socket: in `workdir`, or under /tmp when that path is too long for a unix socket."""
    path = workdir / "haproxy.sock"
    if len(str(path)) < 100:
        return path
    return Path("/tmp") / f"kthw-plane-{hashlib.sha256(str(workdir).encode()).hexdigest()[:16]}.sock"


def _cli(workdir: Path, command: str) -> str:
    """One command on the proxy's admin socket (a path socket: reachable from outside the namespace)."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(str(_socket(workdir)))
        conn.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _servers(workdir: Path) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(backend, server, address) -> (operational state, admin state) from `show servers state`; {} if none answers."""
    try:
        text = _cli(workdir, "show servers state")
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 7 and f[0].isdigit() and f[2].isdigit():
            found[f[1], f[3], f[4]] = (int(f[5]), int(f[6]))
    return found


def _checked(config: str) -> set[tuple[str, str, str]]:
    """(backend, server, address) of every server the config starts disabled (those with a health check)."""
    found, backend = set(), ""
    for line in config.splitlines():
        words = line.split()
        if words[:1] == ["backend"]:
            backend = words[1]
        elif words[:1] == ["server"] and words[-1] == "disabled":
            found.add((backend, words[1], words[2]))
    return found


def _enable(workdir: Path, config: str, before: Mapping[tuple[str, str, str], tuple[int, int]]) -> None:
    """Bring the new worker's checked servers out of maintenance: as they were before a reload, else unhealthy."""
    wanted = _checked(config)
    deadline = time.monotonic() + START_TIMEOUT
    # Only the worker that loaded `config` has them all in forced maintenance (admin state bit 0x1).
    while not all(_servers(workdir).get(k, (0, 0))[1] & 0x1 for k in wanted):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"haproxy's new worker did not answer on {_socket(workdir)}; see {workdir / HAPROXY_LOG}"
            )
        time.sleep(0.05)
    commands = []
    for backend, server, address in sorted(wanted):
        commands.append(f"set server {backend}/{server} state ready")
        if before.get((backend, server, address), (0, 0))[0] != 2:  # 2: running (up)
            commands.append(f"set server {backend}/{server} health down")
    if commands:
        _cli(workdir, "; ".join(commands))


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    argv = [_tool(argv[0]), *argv[1:]]
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


def _ip(namespace: str, *argv: str) -> str:
    return _run(["ip", "-n", namespace, *argv])


def _sysctl(namespace: str, key: str, value: str) -> None:
    _run(["ip", "netns", "exec", namespace, _tool("sysctl"), "-qw", f"{key}={value}"])


def internet_setup(namespace_name: str) -> None:
    """The namespace as the internet and the VPC router: sources, routes to external IPs, forwarding (idempotent)."""
    ns = namespace_name
    for address in (ADMIN_SOURCE, HEALTH_CHECK_SOURCE):
        if f" {address}/32 " not in _ip(ns, "-4", "-o", "addr", "show", "dev", "lo"):
            _ip(ns, "addr", "add", f"{address}/32", "dev", "lo")
    # Whatever the namespace sends to an external address comes from the admin's internet address.
    for cidr in EXTERNAL_RANGES:
        _ip(ns, "route", "replace", cidr, "dev", BRIDGE, "src", ADMIN_SOURCE)
    _sysctl(ns, "net.ipv4.ip_forward", "1")
    # A router that answers a hop with a redirect would teach nodes to bypass the VPC's routes.
    for scope in ("all", "default", BRIDGE):
        _sysctl(ns, f"net.ipv4.conf.{scope}.send_redirects", "0")
        _sysctl(ns, f"net.ipv4.conf.{scope}.rp_filter", "0")
    # Bridged IPv4 through the ip family's hooks, with conntrack: the firewall is stateful.
    _sysctl(ns, "net.bridge.bridge-nf-call-iptables", "1")
    mark = f"{TPROXY_MARK:#x}/{TPROXY_MARK:#x}"
    if f"fwmark {mark}" not in _ip(ns, "-4", "rule", "show"):
        _ip(ns, "rule", "add", "fwmark", mark, "lookup", TPROXY_TABLE)
    _ip(ns, "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", TPROXY_TABLE)


def _routes(resources: Mapping[str, Any], ports: Sequence[Port]) -> set[tuple[str, str, int]]:
    """(destination, next hop, metric) of every Route; a next-hop instance resolves to its internal IP."""
    internal = {p.instance: p.internal_ip for p in ports}
    out = set()
    for name, inputs in _of_kind(resources, "route").items():
        if inputs.get("nextHopIp"):
            hop = str(inputs["nextHopIp"])
        elif inputs.get("nextHopInstance") and _last(str(inputs["nextHopInstance"])) in internal:
            hop = internal[_last(str(inputs["nextHopInstance"]))]
        else:
            raise ValueError(f"route {name}: only nextHopIp and nextHopInstance are modelled")
        dest = str(ipaddress.ip_network(str(inputs["destRange"]), strict=False))
        out.add((dest, hop, int(inputs.get("priority", DEFAULT_PRIORITY))))
    return out


def _current_routes(ns: str) -> set[tuple[str, str, int]]:
    found = json.loads(_ip(ns, "-4", "-j", "route", "show", "proto", ROUTE_PROTOCOL) or "[]")
    return {(_dst(r["dst"]), r.get("gateway", ""), int(r.get("metric", 0))) for r in found}


def _dst(shown: str) -> str:
    """A destination as `ip -j route` shows it ("default", a bare host address) as a network."""
    return "0.0.0.0/0" if shown == "default" else str(ipaddress.ip_network(shown, strict=False))


def _sync_routes(ns: str, wanted: set[tuple[str, str, int]]) -> None:
    for dest, hop, metric in _current_routes(ns) - wanted:
        _ip(ns, "route", "del", dest, "via", hop, "metric", str(metric), "proto", ROUTE_PROTOCOL)
    for dest, hop, metric in wanted - _current_routes(ns):
        _ip(ns, "route", "replace", dest, "via", hop, "dev", BRIDGE, "metric", str(metric), "proto", ROUTE_PROTOCOL)


def _current_lb_addresses(ns: str) -> set[str]:
    found = _ip(ns, "-4", "-o", "addr", "show", "dev", BRIDGE, "label", LB_LABEL)
    return {line.split()[3].split("/")[0] for line in found.splitlines() if line.strip()}


def _sync_lb_addresses(ns: str, wanted: set[str]) -> None:
    current = _current_lb_addresses(ns)
    for address in current - wanted:
        _ip(ns, "addr", "del", f"{address}/32", "dev", BRIDGE)
    for address in wanted - current:
        _ip(ns, "addr", "add", f"{address}/32", "dev", BRIDGE, "label", LB_LABEL)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def proxy_pid(workdir: Path) -> int | None:
    """The running haproxy master's pid (it keeps it across reloads), from the pid file in `workdir`."""
    pidfile = workdir / HAPROXY_PID
    if not pidfile.exists():
        return None
    try:
        pid = int(pidfile.read_text().split()[0])
        # A zombie (exited, not yet reaped by the process that started it) is not running.
        alive = Path(f"/proc/{pid}/comm").read_text().strip() == "haproxy" and _state(pid) != "Z"
    except (ValueError, IndexError, OSError):
        return None
    return pid if alive else None


def _sync_haproxy(ns: str, config: str | None, workdir: Path) -> None:
    path = workdir / HAPROXY_CONFIG
    pid = proxy_pid(workdir)
    if config is None:
        _stop_haproxy(workdir)
        return
    if pid is not None and path.exists() and path.read_text() == config:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    candidate = path.with_suffix(".new")
    candidate.write_text(config)
    _run(["haproxy", "-c", "-q", "-f", str(candidate)])
    candidate.replace(path)
    if pid is not None:
        old, before = _children(pid), _servers(workdir)
        os.kill(pid, signal.SIGUSR2)  # master-worker: reload, old workers finish their connections
        _enable(workdir, config, before)
        # The master soft-stops the old workers (closing their listeners) once the new one runs;
        # wait for that, but not for a long-lived connection that keeps an old worker alive.
        deadline = time.monotonic() + 5
        while old & _children(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return
    with (workdir / HAPROXY_LOG).open("ab") as log:
        subprocess.Popen(
            [
                _tool("ip"),
                "netns",
                "exec",
                ns,
                _tool("haproxy"),
                "-W",
                "-db",
                "-f",
                str(path),
                "-p",
                str(workdir / HAPROXY_PID),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the plugin call that started it; stop() ends it
        )
    deadline = time.monotonic() + START_TIMEOUT
    while proxy_pid(workdir) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"haproxy did not start; see {workdir / HAPROXY_LOG}")
        time.sleep(0.05)
    _enable(workdir, config, {})


def apply(namespace_name: str, resources: Mapping[str, Any], ports: Sequence[Port], workdir: Path) -> None:
    """Converge the namespace to `resources`: firewall, routes, load balancer addresses and haproxy (idempotent).

    Calls are serialized by a lock file in `workdir`: the engine runs resource operations in parallel.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "plane.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _apply(namespace_name, resources, ports, workdir)


def _apply(namespace_name: str, resources: Mapping[str, Any], ports: Sequence[Port], workdir: Path) -> None:
    internet_setup(namespace_name)
    config = render_haproxy(resources, ports, workdir)
    # Address first (haproxy binds it), the proxy before the firewall that lets its connections out.
    _sync_lb_addresses(namespace_name, set(_lb_addresses(resources)))
    _run(["ip", "netns", "exec", namespace_name, _tool("nft"), "-f", "-"], stdin=render_ruleset(resources, ports))
    _sync_routes(namespace_name, _routes(resources, ports))
    _sync_haproxy(namespace_name, config, workdir)


def _stop_haproxy(workdir: Path) -> None:
    pid = proxy_pid(workdir)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while proxy_pid(workdir) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proxy_pid(workdir) is not None:
            os.kill(pid, signal.SIGKILL)
        # When this process started it (a plugin that lives on), reap it: no zombie is left.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    (workdir / HAPROXY_PID).unlink(missing_ok=True)


def stop(namespace_name: str, workdir: Path) -> None:
    """Stop the proxy and remove every rule, route and address `apply` made (the namespace's set-up stays)."""
    _stop_haproxy(workdir)
    if namespace_name in _run(["ip", "netns", "list"]).split():
        _run(["ip", "netns", "exec", namespace_name, _tool("nft"), "-f", "-"], stdin=render_ruleset({}, []))
        _sync_routes(namespace_name, set())
        _sync_lb_addresses(namespace_name, set())


def leftovers(namespace_name: str) -> list[str]:
    """What of the plane is still in the namespace: tables, routes, load balancer addresses, haproxy processes."""
    ns = namespace_name
    found = []
    tables = _run(["ip", "netns", "exec", ns, _tool("nft"), "list", "tables"]).splitlines()
    found += [f"nft {t.strip()}" for t in tables if t.split()[-1:] in ([TABLE], [PORT_TABLE])]
    found += [f"route {d} via {h} metric {m}" for d, h, m in sorted(_current_routes(ns))]
    found += [f"address {a}" for a in sorted(_current_lb_addresses(ns))]
    pids = _run(["ip", "netns", "pids", ns]).split()
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "haproxy":
                found.append(f"haproxy pid {pid}")
    return found
