"""Finding a distribution method by name.

STANDARD LIBRARY ONLY and Python 3.6 compatible: part of the node agent bundle. The method modules
register themselves into shoal.staging.base.REGISTRY with ``@register``; importing the methods
package here loads them all, so the interface module (base) never imports its implementations.
"""


import shoal.staging.methods  # noqa: F401  (importing the package registers every method)
from shoal.errors import DistError
from shoal.staging.base import REGISTRY, Method


def method_names() -> "list[str]":
    return sorted(REGISTRY)


def get_method(name: "str") -> "Method":
    try:
        return REGISTRY[name]()
    except KeyError:
        raise DistError(
            f"unknown distribution method {name!r}",
            "known methods: {}".format(", ".join(sorted(REGISTRY))),
        ) from None
