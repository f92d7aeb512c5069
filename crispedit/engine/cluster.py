"""Refusing outputs the cluster cannot share, before any work is done.

Shards are written by whichever worker built them. On a Ray cluster of several nodes a
plain local path names a different disk on every node, so each node would commit its own
fraction of the dataset and the driver would see only its own: the build would "finish"
with most of its shards missing. That is refused up front unless the output is an object
store URL or the recipe declares the path shared (NFS, Lustre, a mounted bucket).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from crispedit.core.storage import is_url


class UnreachableOutputError(RuntimeError):
    """The output location is not visible to every node of the cluster."""


def alive_nodes(nodes: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The entries of ``ray.nodes()`` that are alive."""
    return [node for node in nodes if node.get("Alive", node.get("alive", False))]


def check_output_reachable(
    output_url: str | os.PathLike[str],
    nodes: list[dict[str, Any]],
    shared_paths: list[str],
) -> None:
    """Raise UnreachableOutputError when a node-local output is used on a multi-node cluster.

    ``nodes`` is ``ray.nodes()``; ``shared_paths`` are local paths the recipe declares to be
    mounted on every node (the output counts as shared when it is one of them or inside one).
    """
    if is_url(output_url):
        return  # s3://, gs://, hf://, ...: every node reaches the same objects
    alive = alive_nodes(nodes)
    if len(alive) <= 1:
        return
    local = Path(os.fspath(output_url).removeprefix("file://")).expanduser().resolve()
    for shared in shared_paths:
        root = Path(shared).expanduser().resolve()
        if local == root or root in local.parents:
            return
    hosts = sorted({str(n.get("NodeManagerHostname") or n.get("NodeManagerAddress") or n.get("NodeID", "?")) for n in alive})
    raise UnreachableOutputError(
        f"the output {local} is a local path, but the Ray cluster has {len(alive)} alive nodes ({', '.join(hosts)}): "
        "each node would write its shards to its own disk and the build would miss most of them. "
        "Write to an object store instead (output.dir: s3://bucket/prefix, gs://..., or --out s3://...), "
        "or, if this path is on storage every node mounts (NFS, Lustre), say so in the recipe with `output.shared: true`."
    )
