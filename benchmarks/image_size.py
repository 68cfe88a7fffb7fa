"""6. Image sizes: the proxy, DinD and sandbox images against plain Debian references.

Sizes are what `docker image inspect` reports (uncompressed, all layers), in MiB. The
references are built on the same machine: plain Debian is the debootstrap minbase image that
every isofeat image starts from; "plain Debian plus the agents" is that image plus the layer the
`ai-agents` Feature adds to the sandbox (Node.js and the agents' npm packages, as installed
there), so the sandbox's own overhead is what remains: isofeat's Features (the CLI's venv, the
user, the proxy client).

The sandbox image is the newest one the devcontainer CLI built for an isofeat template (label
`devcontainer.metadata` naming the isofeat Feature); without one, that row is left out.
"""

from __future__ import annotations

import json

from benchmarks.harness import BenchError, Context, sh

MIB = 1 << 20


def size_of(ref: str) -> int | None:
    out = sh(["docker", "image", "inspect", "--format", "{{.Size}}", ref], check=False).strip()
    return int(out) if out.isdigit() else None


def newest_sandbox_image() -> str | None:
    out = sh(["docker", "images", "--filter", "label=com.docker.compose.service=dev",
              "--format", "{{.ID}} {{.CreatedAt}}"], check=False)
    for line in out.splitlines():  # newest first
        image_id = line.split()[0]
        labels = sh(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}",
                     image_id], check=False)
        if "features/isofeat" in labels or "/isofeat:" in labels:
            return image_id
    return None


def agents_layer(image: str) -> int:
    """Bytes of the layer(s) the ai-agents Feature added to `image`."""
    out = sh(["docker", "history", "--no-trunc", "--human=false", "--format",
              "{{json .}}", image])
    total = 0
    for line in out.splitlines():
        row = json.loads(line)
        if "ai-agents" in row.get("CreatedBy", "") and "RUN" in row.get("CreatedBy", ""):
            total += int(row["Size"])
    return total


def run(ctx: Context) -> None:
    m = "images"
    plain_ref = "isofeat/rootfs:bookworm" if size_of("isofeat/rootfs:bookworm") else \
        "isofeat/base:bookworm"
    plain = size_of(plain_ref)
    if plain is None:
        raise BenchError("no isofeat/base:bookworm image: run scripts/bootstrap")
    base_name = f"plain Debian bookworm ({plain_ref}, debootstrap minbase)"
    ctx.add(m, base_name, "MiB", [plain / MIB])
    for label, ref in (("isofeat/base:bookworm (Debian + CA setup)", "isofeat/base:bookworm"),
                       ("isofeat/proxy (tinyproxy)", "isofeat/proxy:latest"),
                       ("isofeat/dind (Docker engine)", "isofeat/dind:latest")):
        size = size_of(ref)
        if size is not None:
            ctx.add(m, label, "MiB", [size / MIB], baseline=base_name)
    sandbox = newest_sandbox_image()
    if sandbox is None:
        ctx.progress("images: no sandbox image built yet (devcontainer up on the template)")
        return
    size = size_of(sandbox)
    agents = agents_layer(sandbox)
    assert size is not None
    ref_name = "reference: plain Debian + the agents (Node.js and npm packages)"
    ctx.add(m, ref_name, "MiB", [(plain + agents) / MIB])
    ctx.add(m, f"sandbox image (template, {sandbox})", "MiB", [size / MIB], baseline=ref_name,
            note=f"agents layer {agents / MIB:.0f} MiB")
