"""Every name that becomes part of a path or a kernel object name is checked here, and only here.

A name from the command line, a config file, a spec or a request file is joined to a directory
(``clusters_root()/NAME``, ``store_root()/NAME``, ``/tmp/shoal/JOB/IMAGE``) or put into an
interface name (``shb-NAME``). Each check is a *full* match of a small alphabet: ``re.fullmatch``,
never ``re.match(...$)``, whose ``$`` also matches before a trailing newline, so ``"x\\n"`` passed.
The alphabets hold no ``/`` and a name cannot start with ``.``, so no name can be ``..``, absolute,
or hidden (``.lock-*``, ``.tmp-*`` are the store's own).

Shipped in the node bundle (shoal/bundle.py): stdlib only, Python 3.6 syntax.
"""

import re

from shoal.errors import ConfigError

# The bridge is named shb-NAME and interface names hold at most 15 characters (IFNAMSIZ - 1).
CLUSTER_NAME_RE = re.compile(r"[a-z][a-z0-9]{0,9}")
CLUSTER_NAME_HINT = "use 1-10 lowercase letters/digits starting with a letter (it names bridges and netns)"

# Image names are store directory names and ch-image tags.
IMAGE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
IMAGE_NAME_HINT = "use lower-case letters, digits, '.', '_' and '-', starting with a letter or digit " \
                  "(at most 63 characters)"

# Study names become results/NAME and /pfs/shoal-study/NAME-TAG.
STUDY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
STUDY_NAME_HINT = "use letters, digits, '.', '_' and '-' only (at most 64 characters)"

NODE_NAME_RE = re.compile(r"node[1-9][0-9]{0,3}")


def _show(name: "object") -> "str":
    # repr shows a newline or other control character as an escape, so the message stays one line
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def _check(name: "object", pattern: "re.Pattern[str]", what: "str", hint: "str", where: "str") -> "str":
    if not isinstance(name, str) or pattern.fullmatch(name) is None:
        prefix = where + ": " if where else ""
        raise ConfigError(f"{prefix}{_show(name)} is not a valid {what}", hint)
    return name


def cluster_name(name: "object", where: "str" = "") -> "str":
    """NAME if it is a valid virtual cluster name, else ConfigError (bad input: exit 2)."""
    return _check(name, CLUSTER_NAME_RE, "cluster name", CLUSTER_NAME_HINT, where)


def image_name(name: "object", where: "str" = "") -> "str":
    """NAME if it is a valid image name (store entry, ch-image tag), else ConfigError."""
    return _check(name, IMAGE_NAME_RE, "image name", IMAGE_NAME_HINT, where)


def study_name(name: "object", where: "str" = "") -> "str":
    return _check(name, STUDY_NAME_RE, "study name", STUDY_NAME_HINT, where)


def node_name(name: "object", where: "str" = "") -> "str":
    return _check(name, NODE_NAME_RE, "node name", "nodes are named node1, node2, ...", where)


def is_cluster_name(name: "str") -> "bool":
    return CLUSTER_NAME_RE.fullmatch(name) is not None


def is_image_name(name: "str") -> "bool":
    return IMAGE_NAME_RE.fullmatch(name) is not None
