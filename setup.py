"""Only what pyproject.toml cannot say: the packages found in the tree, plus sql/ shipped as heartline.sql.

sql/ stays at the top of the repository (the schema is read and reviewed there); the wheel carries it as
the package `heartline.sql`, so an installed (not editable) Heartline finds its migrations.  Editable
installs map the same name onto the folder.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["heartline*", "edge*", "worker*", "admin*", "loadtests*"]), "heartline.sql"],
    package_dir={"heartline.sql": "sql"},
)
