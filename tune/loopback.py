"""A run's own local Ray cluster stays on this machine: its processes listen on 127.0.0.1 and its token file is
readable by its owner alone. Imports no Ray: bind_to_loopback must run before Ray is first imported."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

# Ray reads this once, when it is imported: "0" makes it pick the loopback address as the node's IP, so the GCS,
# raylet, workers and runtime-env agent bind to 127.0.0.1 (what Ray does on macOS and Windows); ray.init's
# _node_ip_address="127.0.0.1" is turned back into the machine's address on Linux
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# where Ray looks for the token (ray.io/en/latest/ray-security/token-auth.html), and where it writes one
_TOKEN_ENVS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
_TOKEN_BYTES = 32  # as Ray's own generator: 256 bits


def requested_address(address: str | None) -> str | None:
    """The cluster to join: --address, else $RAY_ADDRESS; None: the run starts a private local one."""
    return address or os.environ.get("RAY_ADDRESS") or None


def bind_to_loopback(address: str | None) -> None:
    """For a run that starts its own cluster, before Ray is imported: Ray's processes bind to 127.0.0.1 (unless the
    user set the switch). --address runs are left as they are. tune.cluster.connect says so if it did not hold."""
    if requested_address(address) is None:
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")


def is_loopback(ip: str) -> bool:
    """127.x, ::1, or an IPv4-mapped 127.x (how `ss` shows a loopback socket bound on IPv6)."""
    return ip == "::1" or ip.removeprefix("::ffff:").startswith("127.")


def ensure_private_token(home: Path | None = None) -> Path | None:
    """Ray 2.60 makes ~/.ray/auth_token for a new local cluster with mode 0644: make it first with 0600. A token
    the user already has is theirs: only a note when others can read it. None when Ray's token auth is off or the
    token comes from the environment."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled" or os.environ.get(_TOKEN_ENVS[0]):
        return None
    path = Path(os.environ[_TOKEN_ENVS[1]]) if os.environ.get(_TOKEN_ENVS[1]) else (home or Path.home()) / ".ray" / "auth_token"
    if path.exists():
        if path.stat().st_mode & 0o077:
            print(f"note: the Ray token {path} is readable by other users: chmod 600 {path}", file=sys.stderr)
        return path
    return write_private_token(path)


def write_private_token(path: Path) -> Path:
    """A new token at path, readable by its owner alone and whole from the moment it exists. Two runs started at
    once on a fresh machine both get here: the second keeps the first one's token (Ray may already be using it)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(_TOKEN_BYTES))
    try:
        os.link(draft, path)  # fails if the path exists: never replaces a token
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path
