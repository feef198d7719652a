#!/usr/bin/env python3
"""Builds the Tapio container image offline, as an OCI image-layout tar that
`ctr images import` (containerd), `podman load` and `skopeo` read: no registry, no base image.

It holds what the Containerfile's image holds at run time: the `tapio` binary, stripped of its
debug information (binutils' strip), at /usr/bin/tapio,
the shared libraries it links (found with ldd, copied from this machine's Debian packages:
libsystemd and its dependencies, glibc), the system CA roots, and /etc/passwd and /etc/group
with root and the unprivileged user tapio (65532), which the image runs as by default.

usage: build_image.py TAPIO_BINARY OUT.tar NAME:TAG
Prints the compressed layer size in bytes.
"""
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

USER = 65532
PASSWD = b"root:x:0:0:root:/root:/usr/sbin/nologin\ntapio:x:65532:65532:tapio:/var/lib/tapio:/usr/sbin/nologin\n"
GROUP = b"root:x:0:\ntapio:x:65532:\n"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def libraries(binary):
    """Absolute paths of the shared objects `binary` loads, the dynamic loader included."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    paths = []
    for line in out.splitlines():
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            paths.append(match.group(1))
        elif "not found" in line:
            sys.exit(f"ldd: {line.strip()}")
    return paths


def add_dir(tar, path, mode=0o755, uid=0):
    info = tarfile.TarInfo(path.strip("/"))
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.uid = info.gid = uid
    tar.addfile(info)


def add_file(tar, path, data, mode=0o644):
    info = tarfile.TarInfo(path.strip("/"))
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    add_file(out, f"blobs/sha256/{digest}", data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def main(binary, path, ref):
    stripped = tempfile.NamedTemporaryFile(prefix="tapio-", delete=False)
    stripped.close()
    try:
        subprocess.run(["strip", "-o", stripped.name, binary], check=True)
        build(binary, stripped.name, path, ref)
    finally:
        os.unlink(stripped.name)


def build(binary, stripped, path, ref):
    files = {"/usr/bin/tapio": (stripped, 0o755)}
    for library in libraries(binary):
        # The loader and libraries go where the binary looks for them; their content is the
        # file the path resolves to (Debian ships them behind version symlinks).
        files[library] = (os.path.realpath(library), 0o755)
    if os.path.exists(CA_BUNDLE):
        files[CA_BUNDLE] = (CA_BUNDLE, 0o644)
    dirs = {"etc", "tmp", "proc", "sys", "dev", "run", "var", "var/lib", "usr", "usr/bin"}
    for dest in files:
        parts = dest.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in sorted(dirs):
            add_dir(tar, directory, 0o1777 if directory == "tmp" else 0o755)
        add_dir(tar, "var/lib/tapio", 0o755, USER)
        add_file(tar, "etc/passwd", PASSWD)
        add_file(tar, "etc/group", GROUP)
        for dest, (source, mode) in sorted(files.items()):
            with open(source, "rb") as handle:
                add_file(tar, dest, handle.read(), mode)
    layer = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    compressed = gzip.compress(layer, compresslevel=9, mtime=0)
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{USER}:{USER}",
            "Entrypoint": ["/usr/bin/tapio"],
            "Cmd": ["run"],
            "Env": ["PATH=/usr/bin:/bin"],
            "WorkingDir": "/var/lib/tapio",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as out:
        layer_desc = blob(out, compressed)
        layer_desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
        config_desc = blob(out, config)
        config_desc["mediaType"] = "application/vnd.oci.image.config.v1+json"
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [layer_desc],
        }).encode()
        manifest_desc = blob(out, manifest)
        manifest_desc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
        manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
        manifest_desc["annotations"] = {
            "io.containerd.image.name": ref,
            "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
        }
        add_file(out, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add_file(out, "index.json", json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}).encode())
    print(len(compressed))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
