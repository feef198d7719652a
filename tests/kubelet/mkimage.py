#!/usr/bin/env python3
"""Writes a one-layer OCI image-layout tar holding Debian's static busybox, for the kubelet
live test: no registry is reachable, so containerd imports it (`ctr images import`).

usage: mkimage.py OUT.tar NAME:TAG ENTRYPOINT...
"""
import hashlib
import io
import json
import sys
import tarfile

APPLETS = [
    "sh", "sleep", "dd", "head", "tail", "cat", "echo", "true", "false",
    # A TCP server and client for the incident scenarios (tests/e2e/incidents.rs); not wget,
    # whose name lookup crashes in the static binary without the host's /etc.
    "httpd", "nc",
    # The DNS outage scenario runs the host's dnsmasq and dig in pods, chrooted into the host's
    # root filesystem (a hostPath volume).
    "chroot",
]


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def main(path, ref, entrypoint):
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ["bin", "tmp", "proc", "sys", "dev", "etc"]:
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        with open("/bin/busybox", "rb") as busybox:
            data = busybox.read()
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
    layer = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as out:
        layer_desc = blob(out, layer)
        config_desc = blob(out, config)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
        }).encode()
        manifest_desc = blob(out, manifest)
        index = json.dumps({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
                },
            }],
        }).encode()
        for name, data in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
