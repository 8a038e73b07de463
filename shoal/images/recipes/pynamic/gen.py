#!/usr/bin/env python3
"""Pynamic-style generator (our own): many C-extension modules with cross-library calls.

STANDARD LIBRARY ONLY (runs inside the image build). Writes into OUT:

    pynutil.c / libpynutil.so      a utility shared library every module links against
    pyn_mod_NNNN.c / .so           M Python C-extension modules with F functions each; module i links
                                   against module i-1 (DT_NEEDED, rpath $ORIGIN) and its functions call
                                   C functions exported by module i-1 and by libpynutil
    pynamic.json                   parameters and the checksum a full visit must produce
    pynamic_driver.py              copied next to the modules (if found beside this script)

Loading module i therefore makes the dynamic linker load and relocate modules 0..i-1 too, as big
Python codes do at start-up. Function f_j of module i returns
    leaf(i, j, x) + leaf(i-1, j, x)  (mod 2**64),  leaf(i, j, x) = mix(x, K(i, j)) + bulk byte
so the driver can check that every call really ran.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import sysconfig

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix(x: int, k: int) -> int:
    x = (x ^ k) & MASK
    x = (x * GOLDEN) & MASK
    return x ^ (x >> 29)


def key(i: int, j: int) -> int:
    return i * 1000003 + j


def bulk_byte(i: int, j: int) -> int:
    return (i * 31 + j * 7) & 0xFF


def leaf(i: int, j: int, x: int) -> int:
    return (mix(x, key(i, j)) + bulk_byte(i, j)) & MASK


def expected_checksum(modules: int, functions: int, x: int = 1) -> int:
    total = 0
    for i in range(modules):
        for j in range(functions):
            v = leaf(i, j, x)
            if i > 0:
                v = (v + leaf(i - 1, j, x)) & MASK
            total = (total + v) & MASK
    return total


UTIL_C = """\
#include <stdint.h>
uint64_t pynutil_mix(uint64_t x, uint64_t k) {
    x ^= k;
    x *= 0x9E3779B97F4A7C15ULL;
    return x ^ (x >> 29);
}
"""


def module_c(i: int, functions: int, bulk_kib: int) -> str:
    name = f"pyn_mod_{i:04d}"
    out = [
        "#define PY_SSIZE_T_CLEAN",
        "#include <Python.h>",
        "#include <stdint.h>",
        "uint64_t pynutil_mix(uint64_t x, uint64_t k);",
    ]
    if i > 0:
        out += [f"uint64_t pyn_{i - 1:04d}_leaf{j}(uint64_t x);" for j in range(functions)]
    # bulk: read-only data that makes each library as big as real ones; one byte of each table is
    # read per call so the data is really mapped and touched
    size = max(1, bulk_kib * 1024 // max(1, functions))
    for j in range(functions):
        b = bulk_byte(i, j)
        out.append(
            f"static const unsigned char bulk{j}[{size}] __attribute__((used)) = {{{b}}};"
        )
        out.append(
            f"uint64_t pyn_{i:04d}_leaf{j}(uint64_t x) "
            f"{{ return pynutil_mix(x, {key(i, j)}ULL) + bulk{j}[0]; }}"
        )
        cross = f" + pyn_{i - 1:04d}_leaf{j}(x)" if i > 0 else ""
        out.append(
            f"static PyObject *f{j}(PyObject *self, PyObject *arg) {{\n"
            f"    uint64_t x = PyLong_AsUnsignedLongLong(arg);\n"
            f"    if (x == (uint64_t)-1 && PyErr_Occurred()) return NULL;\n"
            f"    return PyLong_FromUnsignedLongLong(pyn_{i:04d}_leaf{j}(x){cross});\n"
            f"}}"
        )
    out.append("static PyMethodDef methods[] = {")
    out += [f'    {{"f{j}", f{j}, METH_O, NULL}},' for j in range(functions)]
    out.append("    {NULL, NULL, 0, NULL}\n};")
    out.append(
        f'static struct PyModuleDef def = {{PyModuleDef_HEAD_INIT, "{name}", NULL, -1, methods}};\n'
        f"PyMODINIT_FUNC PyInit_{name}(void) {{ return PyModule_Create(&def); }}"
    )
    return "\n".join(out) + "\n"


def generate(out: str, modules: int, functions: int, bulk_kib: int) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "pynutil.c"), "w") as f:
        f.write(UTIL_C)
    for i in range(modules):
        with open(os.path.join(out, f"pyn_mod_{i:04d}.c"), "w") as f:
            f.write(module_c(i, functions, bulk_kib))
    meta = {
        "format": 1,
        "modules": modules,
        "functions": functions,
        "bulk_kib": bulk_kib,
        "module_names": [f"pyn_mod_{i:04d}" for i in range(modules)],
        "x": 1,
        "checksum": expected_checksum(modules, functions),
    }
    with open(os.path.join(out, "pynamic.json"), "w") as f:
        json.dump(meta, f, indent=1)
    driver = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pynamic_driver.py")
    if os.path.exists(driver) and os.path.abspath(os.path.dirname(driver)) != os.path.abspath(out):
        shutil.copy(driver, os.path.join(out, "pynamic_driver.py"))


def _cc(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(f"failed: {' '.join(argv)}\n{proc.stderr}")
        raise SystemExit(1)


def build(out: str, modules: int, cc: str, jobs: int) -> None:
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        sys.stderr.write(f"no Python.h in {include}: install python3-dev\n")
        raise SystemExit(1)
    cflags = ["-O1", "-fPIC", f"-I{include}"]
    _cc([cc, *cflags, "-shared", "-o", os.path.join(out, "libpynutil.so"),
         os.path.join(out, "pynutil.c")])
    # compiling is independent per module and parallel; linking is in order because module i
    # needs module i-1 to exist to record it as DT_NEEDED
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(_cc, [
            [cc, *cflags, "-c", "-o", os.path.join(out, f"pyn_mod_{i:04d}.o"),
             os.path.join(out, f"pyn_mod_{i:04d}.c")]
            for i in range(modules)
        ]))
    for i in range(modules):
        link = [cc, "-shared", "-o", os.path.join(out, f"pyn_mod_{i:04d}.so"),
                os.path.join(out, f"pyn_mod_{i:04d}.o"), f"-L{out}", "-l:libpynutil.so"]
        if i > 0:
            link.append(f"-l:pyn_mod_{i - 1:04d}.so")
        link.append("-Wl,-rpath,$ORIGIN")
        _cc(link)
        os.unlink(os.path.join(out, f"pyn_mod_{i:04d}.o"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="generate Pynamic-style C-extension modules")
    ap.add_argument("--modules", type=int, default=100)
    ap.add_argument("--functions", type=int, default=20)
    ap.add_argument("--bulk-kib", type=int, default=0, help="read-only data per module (KiB)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--build", action="store_true", help="also compile with CC (default gcc)")
    ap.add_argument("--keep-sources", action="store_true", help="keep the .c files after --build")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    if args.modules < 1 or args.functions < 1:
        ap.error("--modules and --functions must be at least 1")
    generate(args.out, args.modules, args.functions, args.bulk_kib)
    if args.build:
        build(args.out, args.modules, os.environ.get("CC", "gcc"), args.jobs)
        if not args.keep_sources:
            for name in os.listdir(args.out):
                if name.endswith(".c"):
                    os.unlink(os.path.join(args.out, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
