"""Package layout: map the repo's top-level frontends/ and backends/ into the amct namespace."""
from setuptools import find_packages, setup


def _mapped(folder: str, namespace: str) -> list[str]:
    return [namespace] + [f"{namespace}.{p}" for p in find_packages(folder)]


packages = find_packages(".", include=["amct", "amct.*"])
packages += _mapped("frontends", "amct.frontends") + _mapped("backends", "amct.backends")
package_dir = {"amct": "amct", "amct.frontends": "frontends", "amct.backends": "backends"}

setup(packages=packages, package_dir=package_dir, py_modules=["amct_caffe"])
