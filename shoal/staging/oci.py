"""A minimal OCI distribution client: push a store image to a registry, pull and unpack it on a node.

STANDARD LIBRARY ONLY, Python 3.6 syntax: the pull runs on the nodes inside the agent bundle (the
``registry`` method), the push in the storage host's network namespace (shoal.cluster.storage).

The image is one layer, the store's own gzip'd tarball (its blob digest is the SHA-256 the store's
manifest lists for it), plus an OCI image config and an OCI image manifest, under the repository
``shoal/<image>`` with a tag derived from that digest, so a re-exported image gets a new tag and a
node can compute the tag from the store's manifest alone. A node trusts nothing the registry says:
the layer digest it asks for comes from the store's manifest, and the bytes it unpacks are hashed
as they stream and compared with it before the tree is used.

Protocol (OCI distribution spec, what docker-registry 2.8 speaks): ``GET /v2/<name>/manifests/<tag>``,
``GET /v2/<name>/blobs/<digest>``; push: ``HEAD`` the blob, else ``POST /v2/<name>/blobs/uploads/``
then ``PUT <location>&digest=<digest>`` with the whole blob, then ``PUT`` the manifest.
"""

import hashlib
import http.client
import json
import os
import subprocess
import tempfile
import time
import urllib.parse
import zlib

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
DEFAULT_REGISTRY = "http://storage:5000"  # the virtual cluster's storage host (hosts file)
REGISTRY_ENV = "SHOAL_REGISTRY"
ADMIN_PORT = 5001  # the writable instance, on the storage host's loopback only
PUBLIC_PORT = 5000
BLOCK = 1 << 20


class RegistryError(Exception):
    """A registry request failed; the message names the URL and the status."""


def repository(image: str) -> str:
    return f"shoal/{image.lower()}"


def tag_for(layer_sha256: str) -> str:
    """The tag of a store image: its tarball's digest (a new export gets a new tag)."""
    return "t" + layer_sha256[:40]


def registry_url() -> str:
    return os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY


class Client:
    """HTTP/1.1 to one registry, one connection at a time (plain HTTP on the cluster network)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise RegistryError(f"registry URL {url!r}: only http://HOST[:PORT] is supported")
        self.url = url.rstrip("/")
        self.host = u.hostname
        self.port = u.port or 80
        self.timeout = timeout

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: "object" = None,
                headers: "dict[str, str] | None" = None, want: "tuple[int, ...]" = (200,)
                ) -> "tuple[int, dict[str, str], bytes]":
        conn = self._conn()
        try:
            conn.request(method, path, body=body, headers=headers or {})  # type: ignore[arg-type]
            resp = conn.getresponse()
            data = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
        except OSError as exc:
            raise RegistryError(f"{method} {self.url}{path}: {exc}") from None
        finally:
            conn.close()
        if resp.status not in want:
            raise RegistryError(f"{method} {self.url}{path}: HTTP {resp.status} "
                                f"{data[:200].decode(errors='replace')}")
        return resp.status, hdrs, data

    def has_blob(self, repo: str, digest: str) -> bool:
        st, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", want=(200, 404))
        return st == 200

    def push_blob(self, repo: str, digest: str, path: "str | None" = None,
                  data: "bytes | None" = None) -> None:
        if self.has_blob(repo, digest):
            return
        _, hdrs, _ = self.request("POST", f"/v2/{repo}/blobs/uploads/", want=(202,))
        loc = hdrs.get("location", "")
        u = urllib.parse.urlsplit(loc)
        q = (u.query + "&" if u.query else "") + "digest=" + urllib.parse.quote(digest)
        target = (u.path or loc) + "?" + q
        if path is not None:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                self.request("PUT", target, body=f, want=(201,), headers={
                    "Content-Type": "application/octet-stream", "Content-Length": str(size)})
        else:
            assert data is not None
            self.request("PUT", target, body=data, want=(201,), headers={
                "Content-Type": "application/octet-stream", "Content-Length": str(len(data))})

    def manifest(self, repo: str, tag: str) -> "dict[str, object]":
        _, _, data = self.request("GET", f"/v2/{repo}/manifests/{tag}",
                                  headers={"Accept": MANIFEST_TYPE})
        m = json.loads(data.decode())
        if not isinstance(m, dict):
            raise RegistryError(f"{repo}:{tag}: the manifest is not a JSON object")
        return m


def _gunzip_sha256(path: str) -> str:
    """SHA-256 of the uncompressed tar (the layer's diff_id in the image config)."""
    h = hashlib.sha256()
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(d.decompress(block))
    h.update(d.flush())
    return h.hexdigest()


def push(url: str, image: str, tarball: str, layer_sha256: str) -> "dict[str, object]":
    """Push the store's tarball as a one-layer OCI image; return what was done (idempotent)."""
    c = Client(url, timeout=600.0)
    repo, tag = repository(image), tag_for(layer_sha256)
    t0 = time.monotonic()
    try:
        have = c.manifest(repo, tag)
        layers = have.get("layers")
        if isinstance(layers, list) and layers and \
                layers[0].get("digest") == "sha256:" + layer_sha256:
            return {"repository": repo, "tag": tag, "pushed": False, "seconds": 0.0}
    except RegistryError:
        pass
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + _gunzip_sha256(tarball)]},
    }, sort_keys=True).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    c.push_blob(repo, config_digest, data=config)
    c.push_blob(repo, "sha256:" + layer_sha256, path=tarball)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": LAYER_TYPE, "digest": "sha256:" + layer_sha256,
                    "size": os.path.getsize(tarball)}],
    }, sort_keys=True).encode()
    c.request("PUT", f"/v2/{repo}/manifests/{tag}", body=manifest, want=(201,),
              headers={"Content-Type": MANIFEST_TYPE})
    return {"repository": repo, "tag": tag, "pushed": True,
            "seconds": round(time.monotonic() - t0, 3)}


def pull(url: str, image: str, layer_sha256: str, dest: str, timeout: float = 600.0
         ) -> "dict[str, object]":
    """Pull the image's manifest and layer, unpack the layer into dest as it streams.

    The layer digest asked for is the store's (layer_sha256); the streamed bytes are hashed and
    must match it, else the partial tree is left for the caller to remove and this raises.
    """
    c = Client(url, timeout=min(timeout, 120.0))
    repo, tag = repository(image), tag_for(layer_sha256)
    t0 = time.monotonic()
    m = c.manifest(repo, tag)
    want = "sha256:" + layer_sha256
    layers = m.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or layers[0].get("digest") != want:
        raise RegistryError(f"{repo}:{tag} in {url} is not the store's image (layers "
                            f"{[x.get('digest') for x in layers] if isinstance(layers, list) else layers})")
    t_manifest = time.monotonic() - t0
    os.makedirs(dest, exist_ok=True)
    conn = c._conn()
    h = hashlib.sha256()
    got = 0
    with tempfile.TemporaryFile() as err:
        tar = subprocess.Popen(["tar", "--numeric-owner", "-x", "-z", "-f", "-", "-C", dest],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                               start_new_session=True)
        assert tar.stdin is not None
        try:
            conn.request("GET", f"/v2/{repo}/blobs/{want}")
            resp = conn.getresponse()
            if resp.status != 200:
                raise RegistryError(f"GET {url}/v2/{repo}/blobs/{want}: HTTP {resp.status}")
            while True:
                block = resp.read(BLOCK)
                if not block:
                    break
                h.update(block)
                got += len(block)
                tar.stdin.write(block)
            tar.stdin.close()
            rc = tar.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        except BaseException:
            if tar.poll() is None:
                tar.kill()
                tar.wait()
            raise
        finally:
            conn.close()
        if h.hexdigest() != layer_sha256:
            raise RegistryError(f"the layer pulled from {url} has sha256 {h.hexdigest()}, "
                                f"the store's manifest says {layer_sha256}")
        if rc != 0:
            err.seek(0)
            msg = " | ".join(err.read().decode(errors="replace").strip().splitlines()[-2:])
            raise RegistryError(f"unpacking the layer failed: tar exited {rc}: {msg}")
    return {"registry": url, "repository": repo, "tag": tag, "pulled_bytes": got,
            "manifest_seconds": round(t_manifest, 6),
            "pull_seconds": round(time.monotonic() - t0, 6)}
