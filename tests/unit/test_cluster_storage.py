"""`storage = "bind" | "sshfs"`: config validation, state, and the storage host's rendered files."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from shoal.cluster import config as ccfg
from shoal.cluster import scripts, storage
from shoal.cluster.slurmconf import Addressing
from shoal.cluster.state import ClusterDir, ClusterState
from shoal.errors import ConfigError


def test_default_is_bind() -> None:
    assert ccfg.ClusterConfig().storage == "bind"
    assert ccfg.validate({}).storage == "bind"


@pytest.mark.parametrize("mode", ["bind", "sshfs"])
def test_known_modes_accepted(mode: str) -> None:
    assert ccfg.validate({"storage": mode}).storage == mode


def test_unknown_mode_quotes_key_value_and_line(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[cluster]\nname = "sfs"\nstorage = "nfs"\n')
    with pytest.raises(ConfigError) as e:
        ccfg.load(f, {})
    assert f"{f}:3" in e.value.message
    assert "storage = 'nfs'" in e.value.message
    assert e.value.hint is not None and "bind" in e.value.hint and "sshfs" in e.value.hint


def test_wrong_type_rejected() -> None:
    with pytest.raises(ConfigError, match=r"storage = 1 must be of type str"):
        ccfg.validate({"storage": 1})


def test_file_then_command_line_override(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('storage = "sshfs"\nnetwork = "eth10g"\n')
    assert ccfg.load(f, {}).storage == "sshfs"
    assert ccfg.load(f, {"storage": "bind"}).storage == "bind"
    assert ccfg.load(f, {"storage": None}).storage == "sshfs"  # CLI flag not given
    with pytest.raises(ConfigError, match="storage = 'lustre'"):
        ccfg.load(f, {"storage": "lustre"})


def test_cli_flag_is_validated_before_anything_runs(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.cli.cluster import cluster

    monkeypatch.setenv("SHOAL_STATE", str(tmp_path))
    res = CliRunner().invoke(cluster, ["up", "--name", "sfs", "--storage", "9p"])
    assert isinstance(res.exception, ConfigError)
    assert "storage = '9p'" in res.exception.message
    assert list(tmp_path.iterdir()) == []  # failed before creating anything


def _state(mode: str) -> ClusterState:
    return ClusterState(name="sfs", index=7, nodes=["node1", "node2"], network={}, config={},
                        storage=mode)


def test_storage_host_has_a_netns_only_with_sshfs() -> None:
    assert _state("bind").netns_hosts() == ["ctl", "node1", "node2"]
    s = _state("sshfs")
    assert s.netns_hosts() == ["ctl", "node1", "node2", "storage"]
    assert s.all_hosts() == ["ctl", "node1", "node2"]  # Slurm hosts: the storage host is not one
    assert s.netns("storage") == "shoal-sfs-storage"
    assert s.host_veth("storage") == "sv7s"


def test_state_written_before_storage_existed_loads_as_bind(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_STATE", str(tmp_path))
    cd = ClusterDir("old")
    cd.root.mkdir(parents=True)
    data = dataclasses.asdict(_state("bind"))
    del data["storage"], data["storage_pid"]
    cd.state_file.write_text(json.dumps(data))
    st = cd.load()
    assert st.storage == "bind" and st.netns_hosts() == ["ctl", "node1", "node2"]


def _files(tmp_path: Path) -> storage.StorageFiles:
    return storage.StorageFiles(tmp_path / "storage", tmp_path / "secrets")


def test_sshd_config_is_sftp_only_key_only_chrooted(tmp_path: Path) -> None:
    files = _files(tmp_path)
    text = storage.render_sshd_config("10.250.7.3", files)
    lines = {ln.split(None, 1)[0]: ln.split(None, 1)[1] for ln in text.splitlines()
             if ln and not ln.startswith("#")}
    assert lines["ListenAddress"] == "10.250.7.3:22"
    assert lines["PasswordAuthentication"] == "no"
    assert lines["ForceCommand"].startswith("internal-sftp")
    assert lines["Subsystem"].startswith("sftp internal-sftp")
    assert lines["ChrootDirectory"] == str(files.export)
    # one key file per user, in the storage host's own /run (sshd reads it with the user's uid)
    assert lines["AuthorizedKeysFile"] == f"{storage.KEYS_DIR}/%u"
    assert lines["AllowUsers"].split() == ["root", "shoal"]
    assert lines["HostKey"] == str(files.host_key)


def test_authorized_key_restricted_to_the_cluster_subnet() -> None:
    line = storage.render_authorized_keys("ssh-ed25519 AAAAC3 shoal-sfs\n", Addressing(7).subnet)
    assert line == 'restrict,from="10.7.0.0/16" ssh-ed25519 AAAAC3 shoal-sfs\n'


def test_sshfs_options(tmp_path: Path) -> None:
    files = _files(tmp_path)
    argv = storage.sshfs_argv("10.250.7.3", "/pfs", files)
    assert argv[:5] == ["sshfs", "-F", "none", "root@10.250.7.3:/pfs", "/pfs"]
    opts = argv[argv.index("-o") + 1].split(",")
    assert "allow_other" in opts
    assert "default_permissions" in opts and "reconnect" not in opts
    assert "kernel_cache" not in opts and "auto_cache" not in opts
    assert "Ciphers=aes128-gcm@openssh.com" in opts and "Compression=no" in opts
    assert f"IdentityFile={files.client_key}" in opts
    assert f"UserKnownHostsFile={files.known_hosts}" in opts


def test_mount_script_is_valid_sh_and_takes_the_mountpoint(tmp_path: Path) -> None:
    text = storage.render_mount_script("10.250.7.3", _files(tmp_path), attempts=3)
    script = tmp_path / "m.sh"
    script.write_text(text)
    subprocess.run(["sh", "-n", str(script)], check=True)
    assert '"$1" -o allow_other' in text
    assert "-ge 3" in text
    # /pfs as root, then the user's own directory through the user's own SFTP session
    assert "root@10.250.7.3:/pfs \"$1\" -o" in text
    assert "shoal@10.250.7.3:/pfs/users/shoal \"$1\"/users/shoal -o" in text
    assert text.index("root@10.250.7.3") < text.index("shoal@10.250.7.3")


def test_user_dirs_are_the_users_and_pfs_is_roots(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    pfs = tmp_path / "pfs"
    pfs.mkdir(mode=0o1777)
    storage.make_user_dirs(pfs)
    storage.make_user_dirs(pfs)  # idempotent (a cluster booted again)
    assert stat.S_IMODE(pfs.stat().st_mode) == 0o755
    own = pfs / "users" / "shoal"
    st = own.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o700)


def test_storage_init_script_is_valid_sh(tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    text = scripts.text(scripts.STORAGE_INIT)
    script.write_text(text)
    subprocess.run(["sh", "-n", str(script)], check=True)
    assert 'exec /usr/bin/supervisord -n -c "$SHOAL_STORAGE_SUPERVISORD"' in text


def test_storage_supervisord_runs_sshd_and_registries(tmp_path: Path) -> None:
    from shoal.cluster.storage import StorageFiles, render_registry_config, render_supervisord_conf

    files = StorageFiles(tmp_path / "storage", tmp_path / "secrets")
    conf = render_supervisord_conf(files, tmp_path / "logs", sshd=True)
    assert "[program:sshd]" in conf and "sshd -D -e -f" in conf
    assert conf.count("docker-registry serve") == 2
    assert "_http_server" not in conf  # no control socket: nothing listens for supervisorctl
    ro = render_registry_config("10.0.0.3:5000", tmp_path / "r", readonly=True, secret="s")
    rw = render_registry_config("127.0.0.1:5001", tmp_path / "r", readonly=False, secret="s")
    assert "readonly:\n      enabled: true" in ro and "addr: 10.0.0.3:5000" in ro
    assert "readonly:\n      enabled: false" in rw and "addr: 127.0.0.1:5001" in rw


def test_listening_reads_the_netns_socket_table() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert not storage.listening(os.getpid(), port)
        s.listen(1)
        assert storage.listening(os.getpid(), port)
    assert not storage.listening(os.getpid(), port)
    assert not storage.listening(2**22 + 12345, port)  # no such process
